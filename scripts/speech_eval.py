"""Evaluation of the speech experiment's codecs on the held-out utterances (part of ``scripts/experiment_speech.py``).

Reconstruction (log-mel L1, SI-SNR), first-codebook usage and perplexity, and two probes on the FIRST
codebook's tokens (:mod:`speech_probes`): a linear CTC probe (trained by ``fit``; greedy CER, CTC nats
per character) and a ridge probe (closed form) to the SM teacher's last hidden states (R²); reference rows: k-means units of the SM
teacher, uniformly random tokens, and the teachers' own CTC heads.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, also in spawned workers
from speech_probes import (  # noqa: E402
    CHARS,
    codebook_stats,
    eval_ctc_probe,
    fit_ridge_probe,
    interpolate_frames,
    kmeans,
    ridge_r2,
    stretch_tokens,
    text_to_ids,
)
from speech_setup import REPO, SAMPLE_RATE, STUDENT, load_split, load_waveforms, sizes  # noqa: E402
from speech_teachers import TEACHERS  # noqa: E402

from lit_distill.experiment import Run, last_checkpoint, launch  # noqa: E402

PROBE_CONFIG = REPO / "configs" / "speech" / "ctc" / "ctc-probe_tokens.yaml"


def _pool(fn, jobs: list, workers: int) -> list:
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    with mp.get_context("spawn").Pool(min(workers, len(jobs)), maxtasksperchild=1) as pool:
        return pool.map(fn, jobs, chunksize=1)



def _tokens_and_targets(split: dict) -> tuple[list[list[int]], list[list[int]]]:
    return [text_to_ids(it["text"]) for it in split["train"]], [text_to_ids(it["text"]) for it in split["heldout"]]


def teacher_features(work: Path) -> dict[str, list[Tensor]]:
    """The SM teacher's last hidden states ``[F', D]`` per utterance (batch 1, no padding), cached."""
    cache = work / "eval" / "hubert_features.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    from lit_distill.models import HFSpeechEncoder

    split = load_split(work)
    encoder = HFSpeechEncoder(path=str(work / "teachers" / "hubert_ctc"), normalize=True).eval()
    feats = {}
    with torch.no_grad():
        for part in ("train", "heldout"):
            feats[part] = [encoder(waveform=w[None, None]).hidden_states[-1][0]
                           for w in load_waveforms(split[part])]
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, cache)
    return feats


def fit_ctc_probe(train_tok: Sequence[Tensor], train_t: Sequence[Sequence[int]], held_tok: Sequence[Tensor],
                  held_t: Sequence[Sequence[int]], vocab: int, work: Path, steps: int) -> Tensor:
    """The linear CTC probe, ``[vocab, 1 + len(CHARS)]`` logits, trained by ``fit``
    (``configs/speech/ctc/ctc-probe_tokens.yaml``: full batch, Adam 0.2, CTC per character) on the
    training utterances' tokens; the held-out ones are its validation data (logged once, at the end).

    Runs live in ``<work>/eval/probes/ctc_probe/<key>``, ``key`` a hash of the tokens, targets and
    steps: the same tokens are fitted once.
    """
    data = {"vocab_size": int(vocab), "num_classes": len(CHARS) + 1,
            "train": {"tokens": [t.long() for t in train_tok], "targets": [list(t) for t in train_t]},
            "val": {"tokens": [t.long() for t in held_tok], "targets": [list(t) for t in held_t]}}
    digest = hashlib.sha1(json.dumps([vocab, steps, data["train"]["targets"], data["val"]["targets"]]).encode())
    for t in (*data["train"]["tokens"], *data["val"]["tokens"]):
        digest.update(t.numpy().tobytes() + b"|")
    key, root = digest.hexdigest()[:16], work / "eval" / "probes"
    path = root / "data" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    run = Run(key, [PROBE_CONFIG], [f"--data.init_args.path={path}", f"--trainer.max_steps={steps}",
                                    f"--trainer.val_check_interval={steps}"], group="ctc_probe")
    result = launch([run], root, workers=1, cwd=REPO, threads=1)[0]  # a tiny model: one thread
    state = torch.load(last_checkpoint(result.directory), map_location="cpu", weights_only=True)
    return state["state_dict"]["student.module.weight"]


def probe_tokens(train_tok: list[Tensor], held_tok: list[Tensor], vocab: int, work: Path, smoke: bool) -> dict:
    """Both probes and codebook statistics for per-utterance token sequences of the two splits."""
    split = load_split(work)
    train_t, held_t = _tokens_and_targets(split)
    feats = teacher_features(work)
    table = fit_ctc_probe(train_tok, train_t, held_tok, held_t, vocab, work, steps=sizes(smoke)["probe_steps"])
    stretch = lambda fs, toks: [interpolate_frames(f, len(t)) for f, t in zip(fs, toks, strict=True)]  # noqa: E731
    weights, mean = fit_ridge_probe(train_tok, stretch(feats["train"], train_tok), vocab)
    stats = codebook_stats(held_tok, vocab)
    return {**eval_ctc_probe(table, held_tok, held_t),
            "sm_r2": ridge_r2(weights, mean, held_tok, stretch(feats["heldout"], held_tok)),
            "cb0_usage": stats["usage"], "cb0_perplexity": stats["perplexity"]}


def evaluate_run(job: tuple[dict, str, bool]) -> dict:
    """Reconstruction metrics and probes of one finished run on the held-out utterances."""
    run, work_s, smoke = job
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lit_distill.export import build_student, load_checkpoint_file
    from lit_distill.losses.audio import MultiResolutionMelLoss, si_snr

    work = Path(work_s)
    out = Path(run["run_dir"]) / "eval.json"
    if out.is_file():
        return json.loads(out.read_text())
    start = time.time()
    student = build_student(load_checkpoint_file(run["checkpoint"], "checkpoint")).eval()
    # the first codebook: LM-SPT's semantic VQ, else RVQ layer 0 (the same size in this experiment)
    first = getattr(student, "semantic_quantizer", None)
    vocab = int(first.codebook_size if first is not None else student.codebook_size)
    split = load_split(work)
    mel = MultiResolutionMelLoss(SAMPLE_RATE, fft_sizes=[1024], n_mels=80)
    tokens: dict[str, list[Tensor]] = {}
    mel_l1, snr = [], []
    with torch.no_grad():
        for part in ("train", "heldout"):
            tokens[part] = []
            for w in load_waveforms(split[part]):
                if part == "train":  # tokens only: the encoder and quantisers, no decoder
                    tokens[part].append(student.encode(w[None, None])[0, 0].clone())
                else:
                    features = student(waveform=w[None, None]).features
                    tokens[part].append(features["codes"][0, 0].clone())
                    rec = features["reconstruction"]
                    mel_l1.append(float(mel(rec, w[None, None])))
                    snr.append(float(si_snr(rec, w[None, None])[0]))
    result = {"arm": run["arm"], "seed": run["seed"], "log_mel_l1": statistics.fmean(mel_l1),
              "si_snr_db": statistics.fmean(snr),
              **probe_tokens(tokens["train"], tokens["heldout"], vocab, work, smoke),
              "eval_seconds": round(time.time() - start, 1), "fit_seconds": run.get("fit_seconds")}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[evaluate] {run['arm']} seed {run['seed']}: " + ", ".join(
        f"{k} {v:.3g}" for k, v in result.items() if isinstance(v, float)), flush=True)
    return result


def reference_rows(work: Path, smoke: bool) -> list[dict]:
    """Probes on k-means units of the SM teacher and on random tokens, plus the teachers' own CER."""
    path = work / "eval" / "references.json"
    if path.is_file():
        return json.loads(path.read_text())
    vocab = STUDENT["codebook_size"]
    feats = teacher_features(work)
    # centred float64: the teacher's frames share a large common component, and float32 distances lose
    # the small differences between them
    centre = torch.cat(feats["train"]).double().mean(0)
    feats = {part: [f.double() - centre for f in fs] for part, fs in feats.items()}
    centroids = kmeans(torch.cat(feats["train"]), vocab, sizes(smoke)["kmeans_iters"])
    codec_frames = lambda f: len(f) + 1  # noqa: E731 - ceil(T / 320) codec frames vs ~T / 320 - 1 teacher frames
    units = {part: [stretch_tokens(torch.cdist(f, centroids).argmin(1), codec_frames(f)) for f in feats[part]]
             for part in feats}
    g = torch.Generator().manual_seed(0)
    rand = {part: [torch.randint(vocab, (codec_frames(f),), generator=g) for f in feats[part]] for part in feats}
    teachers = {name: json.loads((work / "teachers" / name / "result.json").read_text()) for name in TEACHERS}
    rows = [{"arm": "ref_hubert_units", "label": f"reference: k-means({vocab}) units of the SM teacher",
             **probe_tokens(units["train"], units["heldout"], vocab, work, smoke)},
            {"arm": "ref_random", "label": "reference: uniformly random tokens (chance)",
             **probe_tokens(rand["train"], rand["heldout"], vocab, work, smoke)},
            {"arm": "ref_hubert_ctc", "label": "reference: SM teacher's own CTC head",
             "ctc_cer": teachers["hubert_ctc"]["heldout_cer"]},
            {"arm": "ref_whisper_ctc", "label": "reference: Whisper-CTC teacher's own CTC head",
             "ctc_cer": teachers["whisper_ctc"]["heldout_cer"]}]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def stage_evaluate(work: Path, arms: Sequence[str], seeds: Sequence[int], jobs: int, smoke: bool) -> list[dict]:
    """Evaluate every finished run of the requested arms and seeds, and the reference rows."""
    teacher_features(work)  # cache once, before the parallel workers read it
    reference_rows(work, smoke)
    runs = []
    for arm in arms:
        for seed in seeds:
            done = work / "runs" / f"{arm}_s{seed}" / "done.json"
            if done.is_file():
                runs.append(json.loads(done.read_text()))
    return _pool(evaluate_run, [(r, str(work), smoke) for r in runs], jobs)
