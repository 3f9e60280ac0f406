"""Experiment (issue 15): DM-Codec's semantic distillation as a fair fine-tuning, on the toolkit.

Every codec here is trained by ``python -m lit_distill fit`` through :mod:`lit_distill.experiment`:

1. Corpus and SM teacher from ``scripts/experiment_speech.py`` (called, not copied): the espeak-ng
   corpus (512 sentences, 448 training / 64 held-out) and the tiny HuBERT trained with CTC on
   characters on the training split, by ``fit`` too (``configs/speech/ctc/hubert-ctc-tiny_synth.yaml``
   through ``speech_teachers``). Both are skipped when the work directory already holds them.
2. ``pretrain``: one codec WITHOUT distillation (``configs/speech/codec/codec_synth.yaml``),
   seed 0, exported once and shared by every arm and seed (the issue's "cached codec").
3. Teacher check: the teacher's held-out CER and a CTC probe on k-means units of its distilled
   layer must beat the probe on the cached codec's first-codebook tokens; else the script stops.
4. Gradient balance: a short run at ``lr = 0`` from the cached codec at weight 120 (one per seed,
   ``GradientShare`` on the encoder every step) measures ``|grad mel|`` and ``|grad distill|`` on
   the encoder; the balanced weight is ``120 * mean(|grad mel| / |grad distill|)``.
5. Arms, each fine-tuned from the cached codec with the same steps, LR, batch, data and
   reconstruction/commitment terms (``configs/speech/dm_codec/codec_from_hubert-ctc-mid_finetune_synth.yaml``):
   no-KD, d-axis at 120, d-axis at the balanced weight with a linear warm-up, centred d-axis at
   120, t-axis at 120 and (the issue's probe) d-axis at 12; the teacher feature is a MIDDLE layer (``hidden_states.<ceil(L/2)>``).
   Trajectories: train-batch codebook usage (``CodecMetrics.train_every_n_steps``), validation
   metrics and gradient shares, all read with ``read_metrics``.
6. End point: ``experiment_speech.evaluate_run`` (log-mel L1, SI-SNR, codebook-0 usage, CTC probe
   CER and nats/char, ridge R² to the teacher's LAST layer, all on held-out utterances) for every
   run and for the cached codec (step 0), plus the time-constant share of the encoder latent.
   A probe per checkpoint would cost ~75 s each, so probes are read at the start and the end only.

Usage::

    python scripts/experiment_dm_codec.py [--seeds 0 1 2] [--probe-seeds 0 1] [--steps 150] [--workers 2]
    python scripts/experiment_dm_codec.py --smoke        # tiny everything, a few minutes

Writes ``docs/experiments/dm_codec.json`` and the generated part of the first section of
``docs/experiments/speech_codecs.md`` (``--smoke``: into the work directory).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]
import experiment_speech as speech  # noqa: E402

from lit_distill.experiment import (  # noqa: E402
    Run,
    last_checkpoint,
    launch,
    markdown_table,
    mean_std,
    read_metrics,
)

CODEC = "configs/speech/codec/codec_synth.yaml"
FINETUNE = "configs/speech/dm_codec/codec_from_hubert-ctc-mid_finetune_synth.yaml"
DOCS = REPO / "docs" / "experiments"
BEGIN, END = "<!-- experiment_dm_codec: begin -->", "<!-- experiment_dm_codec: end -->"
PAPER_WEIGHT = 120.0
DISTILL = "--model.init_args.losses.distill.init_args."
TRAJECTORY_KEYS = ("train/codebook_usage_q0", "val/codebook_usage_q0", "val/mel_distance", "val/si_snr",
                   "grad_share/distill", "val/teacher_cosine_distill")
END_KEYS = (("val_cb0_usage", 3), ("val_mel_distance", 3), ("log_mel_l1", 3), ("si_snr_db", 2), ("cb0_usage", 3),
            ("cb0_perplexity", 1), ("ctc_cer", 3), ("ctc_nats_per_char", 3), ("sm_r2", 3), ("latent_offset_share", 3),
            ("rvq0_offset_share", 3))



def sizes(smoke: bool) -> dict:
    """Steps and logging intervals; ``smoke`` shrinks everything."""
    if smoke:
        return {"pretrain": 4, "steps": 4, "warmup": 2, "val_every": 2, "usage_every": 1, "share_every": 2,
                "probe": 2, "batch": 2, "channels": 8}
    # channels 8 (the configs: 16) and batch 4: a step of the configs' codec cost ~5 CPU-seconds on the
    # shared 2-core machine, too much for 400 + 15 x 150 steps in the time there was
    return {"pretrain": 400, "steps": 150, "warmup": 40, "val_every": 25, "usage_every": 5, "share_every": 25,
            "probe": 8, "batch": 4, "channels": 8}


def middle_layer(layers: int) -> int:
    """Index into ``hidden_states`` (0 = front end, ``layers`` = last) of the middle transformer layer."""
    return max(1, math.ceil(layers / 2))


def balanced_weight(norms_mel: list[float], norms_distill: list[float], weight: float = PAPER_WEIGHT) -> float:
    """The distillation weight whose encoder gradient equals the mel term's on average.

    Args:
        norms_mel: ``|grad mel|`` on the encoder, one per measured step (and seed).
        norms_distill: ``|grad distill|`` at ``weight`` on the same steps.
    """
    if len(norms_mel) != len(norms_distill) or not norms_mel:
        raise ValueError("balanced_weight: need as many (>= 1) mel as distill gradient norms")
    return weight * statistics.fmean(m / d for m, d in zip(norms_mel, norms_distill, strict=True))


def callbacks(size: dict, teacher: bool, share: int = 0, warmup_to: float | None = None) -> str:
    """``--trainer.callbacks`` of a run: codec metrics (train usage), optional gradient shares and warm-up."""
    calls = [{"class_path": "lit_distill.callbacks.CodecMetrics",
              "init_args": {"sample_rate": 16000, "teacher_terms": ["distill"] if teacher else [],
                            "train_every_n_steps": size["usage_every"], "spectrogram": False}}]
    if share:
        calls.append({"class_path": "lit_distill.callbacks.GradientShare",
                      "init_args": {"parameters": ["student.encoder.*"], "every_n_steps": share,
                                    "terms": ["mel", "distill"]}})
    if warmup_to is not None:
        calls.append({"class_path": "lit_distill.callbacks.ParameterSchedule",
                      "init_args": {"term": "distill", "attribute": "weight", "start": 0.0, "end": warmup_to,
                                    "shape": "linear", "steps": size["warmup"]}})
    return "--trainer.callbacks=" + json.dumps(calls)


def common(work: Path, size: dict, steps: int, val_every: int) -> list[str]:
    """Budget, data and quiet trainer flags every run shares (data order seeded by the run's seed)."""
    return [f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1", "--trainer.check_val_every_n_epoch=null",
            f"--trainer.val_check_interval={val_every}", "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.num_sanity_val_steps=0", f"--data.init_args.manifest={work / 'corpus' / 'manifest.jsonl'}",
            "--data.init_args.synthesize=false", f"--data.init_args.batch_size={size['batch']}",
            "--data.init_args.seed={seed}", f"--model.init_args.student.init_args.channels={size['channels']}"]


def teacher_args(work: Path, export: Path) -> list[str]:
    """The trained teacher (path, width, middle layer) and the cached codec as the student's start."""
    teacher = json.loads((work / "teachers" / "hubert_ctc" / "result.json").read_text())
    sources = {"student_features": "student.features.layer_outputs.0",
               "teacher_features": f"teacher.hidden_states.{middle_layer(teacher['layers'])}"}
    return [f"--model.init_args.teacher.init_args.model.init_args.path={teacher['path']}",
            f"{DISTILL}teacher_dim={teacher['hidden_size']}", f"{DISTILL}sources={json.dumps(sources)}",
            f"--model.init_args.student.init_args.init_from={export}"]


def arms(work: Path, size: dict, export: Path, weight: float) -> list[Run]:
    """The fine-tuning arms: the same budget and data, only the distillation term differs."""
    base = common(work, size, size["steps"], size["val_every"])
    dm = [*base, *teacher_args(work, export)]
    share = size["share_every"]
    return [
        Run("no-KD", [CODEC], [*base, f"--model.init_args.student.init_args.init_from={export}",
                               callbacks(size, teacher=False)], group="arms"),
        Run("d-axis w120", [FINETUNE], [*dm, callbacks(size, True, share)], group="arms"),
        Run(f"d-axis balanced w{weight:.1f} + warm-up", [FINETUNE],
            [*dm, f"{DISTILL}weight={weight:.3f}", callbacks(size, True, share, warmup_to=weight)], group="arms"),
        Run("centred d-axis w120", [FINETUNE], [*dm, f"{DISTILL}centered=true", callbacks(size, True, share)],
            group="arms"),
        Run("t-axis w120", [FINETUNE], [*dm, f"{DISTILL}mode=t_axis", callbacks(size, True, share)], group="arms"),
        # the probe: weight 12 kept codebook-0 usage at the baseline's level
        Run("d-axis w12", [FINETUNE], [*dm, f"{DISTILL}weight=12.0", callbacks(size, True, share)], group="arms"),
    ]


def measure_weight(work: Path, size: dict, export: Path, seeds: list[int], workers: int) -> dict:
    """Gradient norms of mel and distill (weight 120) on the encoder at the start, at lr 0; the balanced weight."""
    probe = Run("weight 120, lr 0", [FINETUNE],
                [*common(work, size, size["probe"], size["probe"]), *teacher_args(work, export),
                 "--model.init_args.optimizer.init_args.lr=0.0", callbacks(size, True, share=1)], group="balance")
    results = launch([Run(probe.name, probe.configs, probe.overrides, s, probe.group) for s in seeds],
                     work / "runs", workers, cwd=REPO)
    mel, distill = [], []
    for result in results:
        curves = result.metrics().trajectories
        mel += [v for _, v in curves["grad_norm/mel"]]
        distill += [v for _, v in curves["grad_norm/distill"]]
    return {"grad_norm_mel": mean_std(mel).__dict__, "grad_norm_distill_w120": mean_std(distill).__dict__,
            "distill_to_mel_at_w120": statistics.fmean(d / m for m, d in zip(mel, distill, strict=True)),
            "balanced_weight": balanced_weight(mel, distill), "measured_steps": len(mel)}


def offset_shares(checkpoint: str, work: Path) -> dict:
    """Share of a time-constant offset in the encoder latent and RVQ layer 0 on held-out utterances.

    For ``z [D, F]`` of an utterance: ``|mean_t z|^2 / mean_t |z_t|^2`` (1 = constant over time), averaged.
    """
    from lit_distill.export import build_student, load_checkpoint_file

    student = build_student(load_checkpoint_file(checkpoint, "checkpoint")).eval()
    shares: dict[str, list[float]] = {"latent_offset_share": [], "rvq0_offset_share": []}
    with torch.no_grad():
        for wave in speech.load_waveforms(speech.load_split(work)["heldout"]):
            features = student(waveform=wave[None, None]).features
            for key, z in (("latent_offset_share", features["latent"][0]), ("rvq0_offset_share",
                                                                           features["layer_outputs.0"][0])):
                shares[key].append(float(z.mean(1).pow(2).sum() / z.pow(2).sum(0).mean()))
    return {key: statistics.fmean(values) for key, values in shares.items()}


def evaluate_job(job: tuple[dict, str, bool, bool]) -> dict:
    """Offset shares of one run, with ``probe`` also ``experiment_speech.evaluate_run``; cached in its directory."""
    run, work, smoke, probe = job
    path = Path(run["run_dir"]) / ("eval.json" if probe else "offsets.json")
    if path.is_file():
        result = json.loads(path.read_text())
    else:
        result = speech.evaluate_run((run, work, smoke)) if probe else {"arm": run["arm"], "seed": run["seed"]}
    if "latent_offset_share" not in result:
        result.update(offset_shares(run["checkpoint"], Path(work)))
        path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def final_validation(directory: Path) -> dict:
    """The last validation's codebook-0 usage and mel distance of a run (its logged metrics)."""
    final = read_metrics(directory).final
    return {"val_cb0_usage": final["val/codebook_usage_q0"], "val_mel_distance": final["val/mel_distance"]}


def evaluate(results, work: Path, smoke: bool, workers: int, probe_seeds: list[int] | None = None) -> list[dict]:
    """End point of finished runs: the last validation for all; for the seeds in ``probe_seeds`` (None: all)
    also the probes and offset shares (~100 CPU-seconds a run; ``workers`` spawned processes, one thread each)."""
    speech.teacher_features(work)  # cache once before the workers read it
    chosen = [r for r in results if probe_seeds is None or r.run.seed in probe_seeds]
    jobs = [({"arm": r.run.name, "seed": r.run.seed, "checkpoint": str(last_checkpoint(r.directory)),
              "run_dir": str(r.directory), "fit_seconds": r.seconds}, str(work), smoke, True) for r in chosen]
    if workers <= 1:
        rows = [evaluate_job(j) for j in jobs]
    else:
        with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
            rows = pool.map(evaluate_job, jobs, chunksize=1)
    probed = {id(r): row for r, row in zip(chosen, rows, strict=True)}
    return [{**probed.get(id(r), {"arm": r.run.name, "seed": r.run.seed}), **final_validation(r.directory)}
            for r in results]


def teacher_units_probe(work: Path, layer: int, smoke: bool) -> dict:
    """The probes on k-means units (256, as a codebook) of the teacher's distilled layer (cached)."""
    path = work / "eval" / f"teacher_units_layer{layer}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from lit_distill.models import HFSpeechEncoder

    encoder = HFSpeechEncoder(path=str(work / "teachers" / "hubert_ctc"), normalize=True).eval()
    split = speech.load_split(work)
    with torch.no_grad():
        feats = {part: [encoder(waveform=w[None, None]).hidden_states[layer][0].double()
                        for w in speech.load_waveforms(split[part])] for part in ("train", "heldout")}
    centre = torch.cat(feats["train"]).mean(0)
    feats = {part: [f - centre for f in fs] for part, fs in feats.items()}
    vocab = 256
    centroids = speech.kmeans(torch.cat(feats["train"]), vocab, speech.sizes(smoke)["kmeans_iters"])
    units = {part: [speech.stretch_tokens(torch.cdist(f, centroids).argmin(1), len(f) + 1) for f in fs]
             for part, fs in feats.items()}
    result = speech.probe_tokens(units["train"], units["heldout"], vocab, work, smoke)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def teacher_check(teacher_cer: float, units_cer: float, codec_cer: float, layer: int) -> dict:
    """Does the teacher beat the student baseline? Its CTC head must transcribe (CER < 0.9) and a CTC
    probe on k-means units of its distilled layer must read more characters than one on the codec's tokens."""
    return {"teacher_heldout_cer": teacher_cer, "teacher_units_probe_cer": units_cer, "codec_probe_cer": codec_cer,
            "layer": layer, "passed": teacher_cer < 0.9 and units_cer < codec_cer,
            "line": f"SM teacher held-out CER {teacher_cer:.3f} (CTC head); CTC probe on k-means(256) units of its "
                    f"hidden_states.{layer}: CER {units_cer:.3f}, on the cached codec's codebook 0: {codec_cer:.3f}."}


def measured(points: list[tuple[int, float]], key: str, size: dict) -> list[tuple[int, float]]:
    """The points of ``key`` at the steps where they were measured.

    Values a callback logs outside ``training_step`` (``GradientShare``, ``CodecMetrics``' training
    usage) are written again at every logger step until the next measurement: stale copies, left out.
    """
    if key.startswith(("grad_share/", "grad_norm/")):  # measured before the backward of global_step s
        return [(s, v) for s, v in points if s % size["share_every"] == 0]
    if key.startswith("train/codebook_"):  # measured after optimizer step s + 1
        return [(s, v) for s, v in points if (s + 1) % size["usage_every"] == 0]
    return points


def trajectory_rows(results, key: str, size: dict, columns: int = 7) -> list[list[str]]:
    """Per arm, ``mean ± std`` over seeds of ``key`` at up to ``columns`` logger steps (evenly picked).

    Returns ``[header, *rows]`` (header: ``arm`` and the steps; ``–`` where an arm's seeds did not all
    log that step), or ``[]`` when no arm logged ``key``.
    """
    curves: dict[str, list[dict[int, float]]] = {}
    for r in results:
        points = measured(read_metrics(r.directory).trajectories.get(key, []), key, size)
        curves.setdefault(r.run.name, []).append(dict(points))
    common = {arm: set.intersection(*(set(c) for c in cs)) for arm, cs in curves.items()}
    steps = sorted(set().union(*common.values()))
    if not steps:
        return []
    if len(steps) > columns:
        steps = sorted({steps[round(i * (len(steps) - 1) / (columns - 1))] for i in range(columns)})
    rows = [[arm, *(mean_std(c[s] for c in cs).cell(3) if s in common[arm] else "–" for s in steps)]
            for arm, cs in curves.items() if common[arm]]
    return [["arm", *map(str, steps)], *rows]


def report(meta: dict, start: list[dict], balance: dict, check: dict, results, evals: list[dict],
           size: dict, out_dir: Path) -> None:
    """Raw numbers to ``dm_codec.json``; tables between the markers at the top of ``speech_codecs.md``."""
    by_arm: dict[str, list[dict]] = {"cached codec (step 0)": start}
    for row in evals:
        by_arm.setdefault(row["arm"], []).append(row)
    stats = {arm: {key: mean_std(r[key] for r in rows if key in r) for key, _ in END_KEYS
                   if any(key in r for r in rows)} for arm, rows in by_arm.items()}
    summary = {arm: {key: stat.__dict__ for key, stat in arm_stats.items()} for arm, arm_stats in stats.items()}
    trajectories = {key: {r.run.label: measured(read_metrics(r.directory).trajectories.get(key, []), key, size)
                          for r in results} for key in TRAJECTORY_KEYS}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dm_codec.json").write_text(json.dumps(
        {"meta": meta, "teacher_check": check, "balance": balance, "summary": summary, "start": start,
         "runs": evals, "trajectories": trajectories}, indent=1) + "\n")
    table = markdown_table(["arm", *(k for k, _ in END_KEYS)], [
        [arm, *(f"{stats[arm][k].cell(d)} (n={stats[arm][k].n})" if k in stats[arm] else "–" for k, d in END_KEYS)]
        for arm in by_arm])
    parts = [BEGIN, "## Fair DM-Codec experiment (issue 15)", "",
             f"Reproduce: `{meta['command']}` (written by `scripts/experiment_dm_codec.py`; method in its "
             f"docstring). Every arm starts from ONE cached no-KD codec (seed 0, {meta['pretrain_steps']} steps) and "
             f"is fine-tuned {meta['steps']} steps (batch {size['batch']} x 1 s crops, AdamW 3e-4), seeds "
             f"{meta['seeds']} (fine-tuning data order and projector init), mean ± std over seeds.", "",
             f"Teacher check: {check['line']}", "",
             f"Gradient balance at the start (lr 0, {balance['measured_steps']} steps over the seeds, encoder "
             f"parameters): mean per-batch |grad distill| / |grad mel| at weight 120 = "
             f"{balance['distill_to_mel_at_w120']:.1f} (|grad mel| {balance['grad_norm_mel']['mean']:.2f} ± "
             f"{balance['grad_norm_mel']['std']:.2f}, |grad distill| {balance['grad_norm_distill_w120']['mean']:.1f} ± "
             f"{balance['grad_norm_distill_w120']['std']:.1f}); balanced weight 120 x mean(|grad mel| / |grad distill|) "
             f"= {balance['balanced_weight']:.2f}, warmed up linearly over {size['warmup']} steps.", "",
             "End point on the held-out utterances (probes read codebook 0; `sm_r2`: ridge to the teacher's "
             "last layer; `*_offset_share`: |time-mean|² / mean |frame|² of the latent / RVQ layer 0):", "", table, ""]
    for key in TRAJECTORY_KEYS:
        rows = trajectory_rows(results, key, size)
        if rows:
            parts += [f"Trajectory `{key}` (columns: logger step; validation at step k ran after k + 1 optimizer "
                      "steps):", "", markdown_table(rows[0], rows[1:]), ""]
    generated = "\n".join([*parts, END])
    doc = out_dir / "speech_codecs.md"
    old = doc.read_text() if doc.is_file() else ""
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + generated + old[old.index(END) + len(END):]
    else:
        new = generated + "\n\n" + old
    doc.write_text(new)
    print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default=None, help="results (default artifacts/speech/dm_codec)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps of every arm")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="steps of the cached no-KD codec")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs, one thread each")
    parser.add_argument("--probe-seeds", type=int, nargs="+", default=None,
                        help="seeds whose end points get the probes (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny everything, to test the pipeline")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    size = sizes(args.smoke)
    size["steps"] = args.steps or size["steps"]
    size["pretrain"] = args.pretrain_steps or size["pretrain"]
    work = Path(args.work_dir or REPO / "artifacts" / "speech" / ("dm_codec_smoke" if args.smoke else "dm_codec"))
    work.mkdir(parents=True, exist_ok=True)
    speech.stage_corpus(work, args.smoke)
    speech.stage_teachers(work, args.smoke, 1, names=["hubert_ctc"])
    teacher = json.loads((work / "teachers" / "hubert_ctc" / "result.json").read_text())
    pre = launch([Run("codec_no_kd", [CODEC], [*common(work, size, size["pretrain"], size["pretrain"] // 4 or 1),
                                               callbacks(size, teacher=False)], 0, "pretrain", export=True)],
                 work / "runs", 1, cwd=REPO)[0]
    export = pre.export_dir
    start = evaluate([pre], work, args.smoke, 1)
    units = teacher_units_probe(work, middle_layer(teacher["layers"]), args.smoke)
    check = teacher_check(teacher["heldout_cer"], units["ctc_cer"], start[0]["ctc_cer"],
                          middle_layer(teacher["layers"]))
    print(check["line"], flush=True)
    if not check["passed"] and not args.smoke:
        sys.exit("stop: the SM teacher's features are not more phonetic than the no-KD codec's tokens; "
                 "distilling them cannot be judged")
    balance = measure_weight(work, size, export, args.seeds, args.workers)
    print(f"balanced weight {balance['balanced_weight']:.2f}", flush=True)
    runs = [Run(a.name, a.configs, a.overrides, s, a.group) for s in args.seeds  # seeds outer: whole seeds first
            for a in arms(work, size, export, balance["balanced_weight"])]
    results = launch(runs, work / "runs", args.workers, cwd=REPO)
    evals = evaluate(results, work, args.smoke, args.workers, args.probe_seeds)
    meta = {"seeds": args.seeds, "steps": size["steps"], "pretrain_steps": size["pretrain"], "sizes": size,
            "teacher": teacher, "command": " ".join(["python scripts/experiment_dm_codec.py", *(argv or sys.argv[1:])])}
    report(meta, start, balance, check, results, evals, size, work if args.smoke else DOCS)


if __name__ == "__main__":
    main()
