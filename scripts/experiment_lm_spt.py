"""Experiment (issue 15): LM-SPT with its semantic distillation against the same codec without it.

Both arms are ``configs/speech/lm_spt/lm-spt-12.5hz_from_whisper-tiny_synth.yaml`` (the authors'
12.5 Hz frame rate, their loss weights: mel 15, commitment 0.25, codebook 1, semantic 500,
quantiser dropout 0.5, gradient-trained L2-normalised codebooks) trained from scratch by
``python -m lit_distill fit`` through :mod:`lit_distill.experiment`, with the same steps, data,
batch and seeds; the control sets the semantic distillation's weight to 0 (its ASR encoder still
runs, so both arms cost the same). The ASR encoder is the tiny Whisper-CTC teacher that
``scripts/experiment_speech.py`` trains on the corpus's training split (called, not copied); corpus,
probes and report helpers are those of ``scripts/experiment_dm_codec.py`` (same work directory by default).

- ``--stage diagnose``: why the semantic codebook (codebook 0) collapses. Short runs, one change each
  from the authors' quantiser setting (pinned, whatever the config says): quantiser dropout 0,
  semantic commitment 0, EMA codebooks (dead-code replacement), EMA + k-means init, zero-bias
  initialisation (DAC's). Trajectories: training-batch usage of codebook 0 every few steps,
  validation usage and perplexity, and ``GradientShare`` of the mel, semantic, semantic-commitment
  and semantic-codebook terms on the semantic quantiser's input projection. Also measured without
  training: the time-constant share of that projection's output and the codes it picks at step 0.
- ``--stage remedy``: the same short runs for what the diagnosis points to: zero-bias init at the
  authors' lr and at lr / 10 (the AdamW-drift control: the semantic biases' mean |b| against
  ``steps x lr``), codes looked up from ``u`` minus its time mean, and that plus ``semantic_encoder_center``
  (with and without zero-bias init: the test of the rank-one weight updates ``lm_spt_gradients`` measured).
- ``--stage compare`` (default): the two arms at the config's setting (``--student`` overrides both);
  codebook usage and validation metrics as trajectories (``CodecMetrics``), and at the end the
  held-out reconstruction, the probes on the FIRST codebook (LM-SPT's semantic one) and the
  semantic quantiser's input u. The probes' R² to the HuBERT teacher needs that teacher (1,300 s to
  train here): ``--r2`` trains and reads it, by default the column is left out.

Each writes its tables between its markers in ``docs/experiments/lm_spt.md`` and its numbers under its
key in ``lm_spt.json`` (everything else stays).

    python scripts/experiment_lm_spt.py --stage diagnose|remedy [--seeds 0] [--steps 100] [--workers 1]
    python scripts/experiment_lm_spt.py [--seeds 0 1 2] [--steps 300] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]
import experiment_dm_codec as dm  # noqa: E402
import experiment_speech as speech  # noqa: E402

from lit_distill.experiment import Run, launch, markdown_table, mean_std, read_metrics  # noqa: E402

LMSPT = "configs/speech/lm_spt/lm-spt-12.5hz_from_whisper-tiny_synth.yaml"
SEMANTIC = "--model.init_args.losses.semantic.init_args."
STUDENT = "--model.init_args.student.init_args."
COPIES = 4  # positions per code in the CTC probe (12.5 Hz -> 50 positions a second)
END_KEYS = (("log_mel_l1", 3), ("si_snr_db", 2), ("cb0_usage", 3), ("cb0_perplexity", 1), ("ctc_cer", 3),
            ("ctc_feasible", 2), (f"ctc_cer_x{COPIES}", 3), (f"ctc_nats_per_char_x{COPIES}", 3), ("sm_r2", 3), ("u_offset_share", 3), ("u_varying_rms", 4),
            ("u_varying_rank", 2))
TRAJECTORY_KEYS = ("train/codebook_usage_q0", "val/codebook_usage_q0", "val/codebook_perplexity_q0",
                   "val/mel_distance", "train/semantic")
SHARE_TERMS = ("mel", "semantic", "semantic_commit", "semantic_codebook")
DIAGNOSIS_KEYS = (*TRAJECTORY_KEYS, *(f"grad_share/{t}" for t in SHARE_TERMS[:3]))
# The authors' quantiser setting, pinned for the diagnosis whatever the config's choice is.
AUTHORS = (f"{STUDENT}codebook=learned", f"{STUDENT}cosine=true", f"{STUDENT}quantizer_dropout=0.5",
           f"{STUDENT}zero_bias_init=false")
EMA = (f"{STUDENT}codebook=ema", f"{STUDENT}cosine=false")
DIAGNOSIS = (("authors' setting (learned, cosine, dropout 0.5)", ()),
             ("zero-bias init (DAC's)", (f"{STUDENT}zero_bias_init=true",)),
             ("EMA codebooks (dead-code replacement)", EMA),
             ("EMA codebooks + k-means init", (*EMA, f"{STUDENT}kmeans_init=true")),
             ("quantiser dropout 0", (f"{STUDENT}quantizer_dropout=0.0",)),
             ("semantic commitment weight 0", ("--model.init_args.losses.semantic_commit.init_args.weight=0.0",)))
ZERO_BIAS = (f"{STUDENT}zero_bias_init=true",)
CENTER = (f"{STUDENT}semantic_center=true",)
LAYERS = (f"{STUDENT}semantic_encoder_center=true",)  # every semantic conv reads its input minus its time mean
REMEDY = (("zero-bias init, lr 2e-4 (the authors')", ZERO_BIAS),
          ("zero-bias init, lr 2e-5 (AdamW-drift control)", (*ZERO_BIAS, "--model.init_args.optimizer.init_args.lr=2e-5")),
          ("centred u (time mean removed)", CENTER), ("centred u + centred encoder layers", (*CENTER, *LAYERS)),
          ("zero-bias init + centred u + centred encoder layers", (*ZERO_BIAS, *CENTER, *LAYERS)))
# step-0 measurements (codec settings over the config's) each stage reports
STEP0 = {"diagnose": (("PyTorch default", {}), ("zero biases (DAC's)", {"zero_bias_init": True})),
         "remedy": (("PyTorch default", {}), ("PyTorch default, centred u", {"semantic_center": True}),
                    ("zero biases (DAC's)", {"zero_bias_init": True}),
                    ("PyTorch default, centred u and layers", {"semantic_center": True, "semantic_encoder_center": True}))}
TITLES = {"diagnose": "Why the semantic codebook collapses: diagnosis runs",
          "remedy": "Keeping the semantic codebook alive: remedy runs"}
MARKERS = {stage: (f"<!-- experiment_lm_spt {stage}: begin -->", f"<!-- experiment_lm_spt {stage}: end -->")
           for stage in ("diagnose", "remedy", "compare")}


def config_with_teacher(work: Path, whisper: Path) -> Path:
    """The LM-SPT config with its ASR encoder loaded from the trained Whisper-CTC teacher (``path``
    instead of the config's fresh ``config``), written once to the work directory."""
    import yaml

    cfg = yaml.safe_load((REPO / LMSPT).read_text())
    encoder = cfg["model"]["init_args"]["losses"]["semantic"]["init_args"]["encoder"]["init_args"]
    encoder.pop("config", None)
    encoder["path"] = str(whisper)
    out = work / "lm_spt.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def callbacks(size: dict) -> str:
    """``--trainer.callbacks``: codec metrics (+ training-batch usage) and the gradient shares of the
    terms on the semantic quantiser's input projection (its codebook gets no gradient from them)."""
    calls = [{"class_path": "lit_distill.callbacks.CodecMetrics",
              "init_args": {"sample_rate": 16000, "train_every_n_steps": size["usage_every"], "spectrogram": False}},
             {"class_path": "lit_distill.callbacks.GradientShare",
              "init_args": {"parameters": ["student.semantic_quantizer.project_in.*"],
                            "every_n_steps": size["share_every"], "terms": list(SHARE_TERMS)}}]
    return "--trainer.callbacks=" + json.dumps(calls)


def arms(work: Path, size: dict, config: Path, student: tuple[str, ...] = ()) -> list[Run]:
    """LM-SPT and its control: the same config, budget and data; only the semantic weight differs.

    ``student``: ``name=value`` settings of the codec for both arms (e.g. ``codebook=ema``)."""
    base = [*dm.common(work, size, size["steps"], size["val_every"]), callbacks(size),
            *(f"{STUDENT}{setting}" for setting in student)]
    return [Run("LM-SPT (semantic distillation, weight 500)", [str(config)], base, group="lm_spt"),
            Run("same codec, semantic weight 0", [str(config)], [*base, f"{SEMANTIC}weight=0.0"], group="lm_spt")]


def diagnosis_arms(work: Path, size: dict, config: Path, table=DIAGNOSIS, group: str = "diagnose") -> list[Run]:
    """One change each (``table``: name, overrides) from the authors' quantiser setting; same budget, data and seed."""
    base = [*dm.common(work, size, size["steps"], size["val_every"]), callbacks(size), *AUTHORS]
    return [Run(name, [str(config)], [*base, *extra], group=group) for name, extra in table]


def semantic_input(codec, waves: list) -> dict:
    """The semantic quantiser's input ``u [F, d]`` on each waveform ``[T]``: its time-constant share
    ``|mean_t u|^2 / mean_t |u_t|^2`` (1 = the same vector in every frame; mean over utterances), its
    RMS and the RMS of its frame-to-frame part (pooled), codebook 0's usage and perplexity (pooled), and
    ``silence_to_mean``: ``|u(silence)| / |mean u|`` with their cosine (the offset the biases alone make),
    ``semantic_bias_abs``: the mean |b| over the semantic encoder's convolutions and ``W_in``, and
    ``u_varying_rank``: the participation ratio ``(Σλ)² / Σλ²`` of the frame-varying part's covariance
    (1: it varies along one direction, ``d``: along all alike)."""
    from speech_probes import participation_rank

    from lit_distill.callbacks.codec_metrics import code_counts, codebook_stats

    codec, shares, us, varying = codec.eval(), [], [], []
    counts = torch.zeros(1, codec.semantic_quantizer.codebook_size, dtype=torch.long)
    with torch.no_grad():
        for wave in waves:
            x = wave[None, None]
            u = codec.semantic_quantizer.project_in(codec.semantic_encoder(codec._pad(x)).transpose(1, 2))[0]
            shares.append(float(u.mean(0).pow(2).sum() / u.pow(2).sum(-1).mean()))
            us.append(u)
            varying.append(u - u.mean(0))
            counts += code_counts(codec.encode(x)[:, :1], counts.shape[1])
        silence = codec.semantic_quantizer.project_in(
            codec.semantic_encoder(torch.zeros(1, 1, codec.hop_length * 25)).transpose(1, 2))[0].mean(0)
    usage, perplexity = codebook_stats(counts)
    mean, centred = torch.cat(us).mean(0), torch.cat(varying)
    biases = [m.bias for m in [*codec.semantic_encoder.modules(), codec.semantic_quantizer.project_in]
              if isinstance(m, torch.nn.Conv1d | torch.nn.Linear) and m.bias is not None]
    return {"semantic_bias_abs": float(torch.cat([b.detach().flatten() for b in biases]).abs().mean()),
            "silence_to_mean": float(silence.norm() / mean.norm()),
            "silence_mean_cosine": float(torch.nn.functional.cosine_similarity(silence, mean, 0)),
            "u_offset_share": statistics.fmean(shares), "u_rms": float(torch.cat(us).pow(2).mean().sqrt()),
            "u_varying_rms": float(centred.pow(2).mean().sqrt()), "u_varying_rank": participation_rank(centred),
            "cb0_usage": float(usage[0]), "cb0_perplexity": float(perplexity[0])}


def step0_state(work: Path, config: Path, size: dict, settings: dict, seeds: list[int]) -> dict:
    """:func:`semantic_input` on the held-out utterances without training (codec ``settings`` over the
    config's), mean over ``seeds``."""
    import yaml

    from lit_distill.models import LMSPTCodec

    args = yaml.safe_load(config.read_text())["model"]["init_args"]["student"]["init_args"]
    args = {**args, "channels": size["channels"], **settings}
    waves = speech.load_waveforms(speech.load_split(work)["heldout"])
    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        rows.append(semantic_input(LMSPTCodec(**args), waves))
    return {key: statistics.fmean(r[key] for r in rows) for key in rows[0]} | {"seeds": seeds}


def end_state(directory: Path, work: Path) -> dict:
    """:func:`semantic_input` of a finished run's last checkpoint on the held-out utterances."""
    from lit_distill.experiment import last_checkpoint
    from lit_distill.export import build_student, load_checkpoint_file

    codec = build_student(load_checkpoint_file(str(last_checkpoint(directory)), "checkpoint"))
    return semantic_input(codec, speech.load_waveforms(speech.load_split(work)["heldout"]))


def ctc_probe(tokens: dict, targets: dict, vocab: int, work: Path, smoke: bool, copies: int = 1) -> dict:
    """``experiment_speech``'s linear CTC probe of per-utterance codes ``{"train", "heldout"}: [F]``.

    At 12.5 Hz an utterance has fewer frames than characters (1.2 a frame in this corpus), so CTC cannot
    align most of them (``zero_infinity`` then drops them from the fit and from the nats). With
    ``copies`` > 1 every code becomes ``copies`` positions ``code * copies + j``: still a table lookup of
    the code (one logit row per code and position in it), but a code can now emit up to ``copies``
    characters. ``feasible``: share of held-out utterances CTC can align at all.
    """
    from speech_eval import fit_ctc_probe
    from speech_probes import eval_ctc_probe

    spread = {part: [(t[:, None] * copies + torch.arange(copies)).flatten() for t in ts] for part, ts in tokens.items()}
    table = fit_ctc_probe(spread["train"], targets["train"], spread["heldout"], targets["heldout"], vocab * copies, work,
                          steps=speech.sizes(smoke)["probe_steps"])
    feasible = statistics.fmean(len(t) + sum(a == b for a, b in zip(t, t[1:], strict=False)) <= len(c)
                                for t, c in zip(targets["heldout"], spread["heldout"], strict=True))
    return {**eval_ctc_probe(table, spread["heldout"], targets["heldout"]), "feasible": feasible}


def evaluate_job(job: tuple[dict, str, bool]) -> dict:
    """One finished run on the held-out utterances (cached in its directory): log-mel L1 and SI-SNR of
    the reconstruction, the CTC probe and statistics of codebook 0 (``experiment_speech``'s, without
    the R² probe and so without the HuBERT teacher), and :func:`semantic_input`."""
    run, work_s, smoke = job
    path = Path(run["run_dir"]) / "eval_lm_spt.json"
    if path.is_file():
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    from speech_probes import codebook_stats, text_to_ids

    from lit_distill.export import build_student, load_checkpoint_file
    from lit_distill.losses.audio import MultiResolutionMelLoss, si_snr

    start, work = time.time(), Path(work_s)
    codec = build_student(load_checkpoint_file(run["checkpoint"], "checkpoint")).eval()
    split, vocab = speech.load_split(work), codec.semantic_quantizer.codebook_size
    mel = MultiResolutionMelLoss(16000, fft_sizes=[1024], n_mels=80)
    waves = {part: speech.load_waveforms(split[part]) for part in ("train", "heldout")}
    with torch.no_grad():
        tokens = {part: [codec.encode(w[None, None])[0, 0] for w in ws] for part, ws in waves.items()}
        recs = [(codec(waveform=w[None, None]).features["reconstruction"], w[None, None]) for w in waves["heldout"]]
    targets = {part: [text_to_ids(it["text"]) for it in split[part]] for part in waves}
    raw, spread = ctc_probe(tokens, targets, vocab, work, smoke), ctc_probe(tokens, targets, vocab, work, smoke, COPIES)
    stats, inside = codebook_stats(tokens["heldout"], vocab), semantic_input(codec, waves["heldout"])
    result = {"arm": run["arm"], "seed": run["seed"], "log_mel_l1": statistics.fmean(float(mel(r, w)) for r, w in recs),
              "si_snr_db": statistics.fmean(float(si_snr(r, w)[0]) for r, w in recs),
              "ctc_cer": raw["ctc_cer"], "ctc_feasible": raw["feasible"],
              **{f"{k}_x{COPIES}": v for k, v in spread.items() if k != "feasible"},
              "cb0_usage": stats["usage"], "cb0_perplexity": stats["perplexity"],
              **{k: v for k, v in inside.items() if not k.startswith("cb0_")},
              "eval_seconds": round(time.time() - start, 1), "fit_seconds": run["fit_seconds"]}
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def collapsed_reference(work: Path, smoke: bool, hop: int = 1280) -> dict:
    """Both CTC probes on one code for every frame (``hop`` samples): what a collapsed codebook 0 scores."""
    from speech_probes import text_to_ids

    split = speech.load_split(work)
    tokens = {part: [torch.zeros(-(-len(w) // hop), dtype=torch.long) for w in speech.load_waveforms(split[part])]
              for part in ("train", "heldout")}
    targets = {part: [text_to_ids(it["text"]) for it in split[part]] for part in tokens}
    raw, spread = ctc_probe(tokens, targets, 1, work, smoke), ctc_probe(tokens, targets, 1, work, smoke, COPIES)
    return {"ctc_cer": raw["ctc_cer"], "ctc_feasible": raw["feasible"], f"ctc_cer_x{COPIES}": spread["ctc_cer"],
            f"ctc_nats_per_char_x{COPIES}": spread["ctc_nats_per_char"]}


def evaluate(results, work: Path, smoke: bool, workers: int, r2: bool) -> list[dict]:
    """:func:`evaluate_job` for every run (``r2``: ``experiment_dm_codec``'s evaluation instead, with the
    R² probe to the HuBERT teacher), the last validation's codebook-0 usage and mel distance added."""
    if r2:
        speech.stage_teachers(work, smoke, 1, names=["hubert_ctc"])
        return dm.evaluate(results, work, smoke, workers)
    from lit_distill.experiment import last_checkpoint

    jobs = [({"arm": r.run.name, "seed": r.run.seed, "checkpoint": str(last_checkpoint(r.directory)),
              "run_dir": str(r.directory), "fit_seconds": r.seconds}, str(work), smoke) for r in results]
    if workers <= 1:
        rows = [evaluate_job(j) for j in jobs]
    else:
        with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
            rows = pool.map(evaluate_job, jobs, chunksize=1)
    return [{**row, **dm.final_validation(r.directory)} for r, row in zip(results, rows, strict=True)]


def trajectories(results, size: dict, keys) -> list[str]:
    parts = []
    for key in keys:
        rows = dm.trajectory_rows(results, key, size)
        if rows:
            parts += [f"Trajectory `{key}`:", "", markdown_table(rows[0], rows[1:]), ""]
    return parts


def compare_report(results, evals: list[dict], size: dict, command: str, reference: dict) -> tuple[str, dict]:
    """The end-point table and trajectories as markdown, and the raw numbers."""
    by_arm: dict[str, list[dict]] = {}
    for row in evals:
        by_arm.setdefault(row["arm"], []).append(row)
    keys = [(k, d) for k, d in END_KEYS if all(k in r for r in evals)]
    table = markdown_table(["arm", "n", *(k for k, _ in keys)], [
        [arm, len(rows), *(mean_std(r[k] for r in rows).cell(d) for k, d in keys)] for arm, rows in by_arm.items()])
    parts = ["## LM-SPT with and without its semantic distillation (issue 15)", "",
             f"Reproduce: `{command}`. Same config, {size['steps']} steps from scratch, seeds "
             f"{sorted({r['seed'] for r in evals})}; only the semantic term's weight differs.", "", table, "",
             "The CTC probes on ONE code for every frame (a collapsed codebook 0): " + ", ".join(
                 f"{k} {v:.3f}" for k, v in reference.items()) + ".", "", *trajectories(results, size, TRAJECTORY_KEYS)]
    return "\n".join(parts), {"runs": evals, "steps": size["steps"], "collapsed_reference": reference}


def diagnose_report(results, step0: dict, size: dict, command: str, work: Path,
                    title: str = TITLES["diagnose"]) -> tuple[str, dict]:
    """The diagnosis's step-0 measurement, end table and trajectories as markdown, and the raw numbers."""
    ends = []
    for r in results:
        final = read_metrics(r.directory).final
        ends.append({"arm": r.run.name, "seed": r.run.seed, "fit_seconds": r.seconds,
                     **{k: final.get(k, float("nan")) for k in ("val/codebook_usage_q0", "val/codebook_perplexity_q0",
                                                                 "val/mel_distance", "val/si_snr")},
                     **{f"end_{k}": v for k, v in end_state(r.directory, work).items()}})
    keys = ("val/codebook_usage_q0", "val/codebook_perplexity_q0", "val/mel_distance", "val/si_snr",
            "end_u_offset_share", "end_u_rms", "end_u_varying_rms", "end_silence_to_mean", "end_silence_mean_cosine",
            "end_u_varying_rank", "end_semantic_bias_abs")
    table = markdown_table(["arm", "seed", *keys], [[e["arm"], e["seed"], *(f"{e[k]:.4g}" for k in keys)] for e in ends])
    start = markdown_table(["initialisation", "u time-constant share", "u RMS", "u frame-varying RMS",
                            "its rank (of 8)", "codebook-0 usage", "perplexity"], [
        [name, f"{v['u_offset_share']:.3f}", f"{v['u_rms']:.4f}", f"{v['u_varying_rms']:.4f}",
         f"{v['u_varying_rank']:.2f}", f"{v['cb0_usage']:.3f}", f"{v['cb0_perplexity']:.1f}"] for name, v in step0.items()])
    parts = [f"## {title}", "",
             f"Reproduce: `{command}`. {size['steps']} steps from scratch, batch {size['batch']}, "
             f"{size['channels']} channels; one change per arm from the authors' quantiser setting.", "",
             "At step 0, without training (held-out utterances; mean over seeds "
             f"{step0[next(iter(step0))]['seeds']}):", "", start, "", "At the last validation (usage, perplexity, mel distance, SI-SNR) and, on the held-out utterances "
             "from the last checkpoint, the semantic quantiser's input u:", "", table, "",
             *trajectories(results, size, DIAGNOSIS_KEYS)]
    return "\n".join(parts), {"step0": step0, "runs": ends, "steps": size["steps"]}


def write_docs(out: Path, stage: str, text: str, numbers: dict) -> None:
    """Replace the stage's block between its markers in ``lm_spt.md`` (append it if absent) and its key in
    ``lm_spt.json``; everything else in both files stays."""
    begin, end = MARKERS[stage]
    md, block = out / "lm_spt.md", f"{begin}\n{text}\n{end}"
    old = md.read_text() if md.is_file() else "# LM-SPT\n"
    new = old[:old.index(begin)] + block + old[old.index(end) + len(end):] if begin in old \
        else old.rstrip("\n") + "\n\n" + block + "\n"
    md.write_text(new)
    path = out / "lm_spt.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data = data if stage in data or "runs" not in data else {}  # the old flat layout is replaced
    data[stage] = numbers
    path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("diagnose", "remedy", "compare"), default="compare")
    parser.add_argument("--work-dir", default=None, help="default artifacts/speech/dm_codec (its corpus is reused)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 (diagnose), 0 1 2 (compare)")
    parser.add_argument("--steps", type=int, default=None, help="default: 100 (diagnose), 300 (compare)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--student", nargs="*", default=[], metavar="NAME=VALUE",
                        help="compare: codec settings for both arms, e.g. codebook=ema cosine=false")
    parser.add_argument("--r2", action="store_true", help="compare: train the HuBERT teacher for the R² probe")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    diagnose = args.stage in ("diagnose", "remedy")
    seeds = args.seeds or ([0] if diagnose else [0, 1, 2])
    steps = 4 if args.smoke else args.steps or (100 if diagnose else 300)
    every = {"val_every": 2, "usage_every": 1, "share_every": 2} if args.smoke else \
        {"val_every": 20, "usage_every": 5, "share_every": 10} if diagnose else \
        {"val_every": 50, "usage_every": 10, "share_every": 50}
    size = {**dm.sizes(args.smoke), "steps": steps, **every}
    work = Path(args.work_dir or REPO / "artifacts" / "speech" / ("dm_codec_smoke" if args.smoke else "dm_codec"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    speech.stage_corpus(work, args.smoke)
    speech.stage_teachers(work, args.smoke, 1, names=["whisper_ctc"])
    print(f"[lm_spt] corpus and Whisper-CTC teacher ready after {time.time() - start:.0f} s", flush=True)
    whisper = Path(json.loads((work / "teachers" / "whisper_ctc" / "result.json").read_text())["path"])
    config = config_with_teacher(work, whisper)
    chosen = diagnosis_arms(work, size, config, REMEDY if args.stage == "remedy" else DIAGNOSIS, args.stage) \
        if diagnose else arms(work, size, config, tuple(args.student))
    runs = [Run(r.name, r.configs, r.overrides, seed, r.group) for seed in seeds for r in chosen]
    results = launch(runs, work / "runs", args.workers, cwd=REPO)
    out = work if args.smoke else REPO / "docs" / "experiments"
    command = "python scripts/experiment_lm_spt.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if diagnose:
        step0 = {name: step0_state(work, config, size, settings, [0, 1, 2]) for name, settings in STEP0[args.stage]}
        text, numbers = diagnose_report(results, step0, size, command.strip(), work, TITLES[args.stage])
    else:
        evals = evaluate(results, work, args.smoke, args.workers, args.r2)
        text, numbers = compare_report(results, evals, size, command.strip(), collapsed_reference(work, args.smoke))
    write_docs(out, args.stage, text, numbers)
    print(text)


if __name__ == "__main__":
    main()
