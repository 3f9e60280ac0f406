"""Experiment: speech codecs with and without semantic distillation, on locally synthesised speech.

The issue's comparison: on the ``espeak-ng`` corpus (:func:`datamodules.speech.synthesize_speech_corpus`),
a codec trained alone vs DM-Codec (speech-model, language-model and combined teachers) vs LM-SPT,
with the same budget, judged by reconstruction metrics and by semantic probes on the FIRST
codebook's tokens.

There is no model hub here, so the teachers are trained first, on the corpus's TRAINING split
only (the held-out utterances are never seen by any teacher, student or probe fit), each by
``python -m lit_distill fit`` through :mod:`lit_distill.experiment` (:mod:`speech_teachers`):

- ``hubert_ctc``: a tiny HuBERT (conv strides 5, 8, 8 = 320 samples = 50 frames/s) trained with
  CTC on characters (``configs/speech/ctc/hubert-ctc-tiny_synth.yaml``: ``HFModel`` task
  ``speech-ctc``, ``losses.CTC``, ``ASRDataModule``); exported so ``HFSpeechEncoder(path=DIR,
  normalize=True)`` loads its encoder (checked: the loaded hidden states equal the trained model's);
- ``whisper_ctc``: a tiny Whisper encoder + linear CTC head on characters
  (``configs/speech/ctc/whisper-ctc-tiny_synth.yaml``: ``CTCHead`` on ``HFWhisperEncoder``);
  exported as the encoder (+ ``ctc_head.pt``) for LM-SPT's ASR encoder (``HFWhisperEncoder(path=DIR)``);
- ``lm``: a WordPiece tokenizer and a tiny Llama trained on the training transcripts plus more
  local English prose (held-out sentences excluded), ``configs/speech/lm/tiny-llama_transcripts.yaml``
  with early stopping on a dev slice of that text; model + tokenizer in one directory for
  ``HFCausalLM(path=DIR)`` and ``SpeechDataModule(teacher_tokenizer=DIR)``.

Arms (the same student codec, strides [2, 4, 5, 8] = 50 Hz, crop, batch size, steps, optimiser,
data, reconstruction and commitment terms; only the distillation terms / teacher differ):
``codec`` (no teacher), ``dm_sm``, ``dm_sm_t`` (the same with DM-Codec's per-frame ``t_axis``
loss), ``dm_lm``, ``dm_combined`` (DM-Codec) and ``lm_spt``. Each run's
YAML is the arm's config with the codec arm's student sizes, ``mel``/``wave``/``commit`` terms and
optimiser copied in (LM-SPT: 1 semantic + 3 acoustic codebooks = the codec's 4 x 256, quantiser
dropout 0 like the codec; its semantic terms stay), written to ``runs/<arm>_s<seed>/config.yaml``.

Evaluation on the HELD-OUT utterances (whole; :mod:`speech_eval`, report in :mod:`speech_report`):
log-mel L1 and SI-SNR of the reconstruction, first-codebook usage and perplexity, and two probes on
the first codebook's tokens: (i) a linear CTC probe (an embedding table token -> character logits +
blank, trained by ``fit`` with CTC on the training utterances' tokens,
``configs/speech/ctc/ctc-probe_tokens.yaml``; greedy CER and CTC nats per character on held-out), (ii) ridge
regression from one-hot tokens to the SM teacher's last hidden states (interpolated to codec
frames; R^2 on held-out). Reference rows: the teachers' own CTC heads, the probes on k-means
(same codebook size) units of the SM teacher's features, and uniformly random tokens (chance).

Budget (measured on the 2-core machine): trained by ``fit`` on one thread (``--threads 1``) while the
machine ran at load ~6, the Whisper teacher took 750 s (the hand-written loop it replaces: 397 s on a
quiet machine, 844 s at load 4-6) and the HuBERT one 703 s (loop: 313 s quiet); the LM 76 s (loop: 104 s);
each CTC probe is a fit of ~10 s. A codec step (batch 4 whole utterances) ~0.8 s (LM-SPT ~1.5 s) with two runs in
parallel, ~8 s start-up per run; evaluation ~2 min once (teacher features, references) + ~85 s per
run. Defaults: 400 steps per run, so ``all`` with ``--jobs 2`` (6 arms x 3 seeds) takes ~85 min
(measured for 5 arms: 61 min of fits, 8 min of evaluation; the sixth adds ~15 min). Every arm trains
on WHOLE utterances (crop null): the LM teacher reads the whole transcript, and the budget must be the
same for every arm. On a machine other work shares, give fits one thread each: two threads that wait
for a core they do not get made a Whisper-CTC step 5x slower (6.8 s against 1.3 s at load 8).

Usage::

    python scripts/experiment_speech.py all --jobs 2            # everything (~85 min on 2 cores)
    python scripts/experiment_speech.py corpus|teachers|arms|evaluate|report [--arms ...] [--seeds ...]
    python scripts/experiment_speech.py all --smoke             # tiny everything, < 2 min

Every stage skips finished work (results live under ``--work-dir``); ``report`` writes
``docs/experiments/speech_codecs.{md,json}`` (``--smoke``: into the work dir instead).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

# this checkout's packages and the sibling modules (also in spawned workers)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
# the names other experiments (experiment_dm_codec, experiment_lm_spt) read from this module
from speech_eval import evaluate_run, probe_tokens, stage_evaluate, teacher_features  # noqa: E402, F401
from speech_probes import kmeans, stretch_tokens  # noqa: E402, F401
from speech_report import stage_report  # noqa: E402
from speech_setup import (  # noqa: E402, F401
    ARMS,
    LABELS,
    REPO,
    SPLIT_SEED,
    STUDENT,
    VAL_FRACTION,
    load_split,
    load_waveforms,
    sizes,
    stage_corpus,
)
from speech_teachers import TEACHERS, stage_teachers  # noqa: E402, F401

DEFAULT_WORK = REPO / "artifacts" / "speech" / "experiment"
DOC = REPO / "docs" / "experiments" / "speech_codecs"
SHARED_TERMS = ("mel", "wave", "commit")  # reconstruction + commitment, copied from the codec arm


# ----------------------------------------------------------------------------- arms
def derive_config(arm: str, seed: int, work: Path, teachers: dict[str, dict], max_steps: int, batch_size: int) -> dict:
    """The arm's YAML as a dict with the shared budget, data and the trained teachers filled in."""
    import yaml

    base = yaml.safe_load(ARMS["codec"].read_text())
    cfg = yaml.safe_load(ARMS[arm].read_text())
    model = cfg["model"]["init_args"]
    student = model["student"]["init_args"]
    for key, value in STUDENT.items():
        if key == "strides" or key in student:
            student[key] = value
    if "semantic_codebook_size" in student:  # LM-SPT: 1 semantic + Q - 1 acoustic codebooks = the same bitrate
        student["semantic_codebook_size"] = STUDENT["codebook_size"]
        student["num_quantizers"] = STUDENT["num_quantizers"] - 1
    if "quantizer_dropout" in student:  # the codec arm trains every quantiser on every batch
        student["quantizer_dropout"] = 0.0
    losses = model["losses"]
    for name in SHARED_TERMS:
        losses[name] = base["model"]["init_args"]["losses"][name]
    model["optimizer"] = base["model"]["init_args"]["optimizer"]
    model.pop("scheduler", None)
    hubert = {"path": teachers["hubert_ctc"]["path"], "normalize": True}
    lm = {"path": teachers["lm"]["path"], "output_hidden_states": True}
    data = cfg["data"]["init_args"]
    teacher = model.get("teacher")
    if arm in ("dm_sm", "dm_sm_t"):
        teacher["init_args"]["model"]["init_args"] = hubert
        if arm == "dm_sm_t":
            losses["distill"]["init_args"]["mode"] = "t_axis"
    elif arm == "dm_lm":
        teacher["init_args"]["model"]["init_args"] = lm
        data["teacher_tokenizer"] = lm["path"]
    elif arm == "dm_combined":
        members = teacher["init_args"]["model"]["init_args"]["members"]
        members["speech"]["init_args"], members["text"]["init_args"] = hubert, lm
        data.update(teacher_tokenizer=lm["path"], teacher_waveform=True)
    for term in losses.values():
        args = term.get("init_args", {})
        if "teacher_dim" in args:
            source = str(args.get("sources", {}).get("teacher_features", ""))
            text = arm == "dm_lm" or ".text." in source
            args["teacher_dim"] = teachers["lm" if text else "hubert_ctc"]["hidden_size"]
        if isinstance(args.get("encoder"), dict):  # LM-SPT's ASR encoder
            enc_args = {k: v for k, v in args["encoder"].get("init_args", {}).items() if k not in ("config", "path")}
            args["encoder"]["init_args"] = {**enc_args, "path": teachers["whisper_ctc"]["path"]}
    cfg["seed_everything"] = seed
    trainer = cfg["trainer"]
    trainer.update(max_steps=max_steps, max_epochs=-1, default_root_dir=str(work / "runs" / f"{arm}_s{seed}"),
                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                   num_sanity_val_steps=0, log_every_n_steps=25)
    data.update(manifest=load_split(work)["manifest"], synthesize=False, val_fraction=VAL_FRACTION,
                split_seed=SPLIT_SEED, seed=seed, crop_seconds=None, val_crop="full", batch_size=batch_size)
    return cfg


def last_checkpoint(run_dir: Path, max_steps: int) -> Path | None:
    """The run's ``last.ckpt`` if it reached ``max_steps``."""
    for path in sorted(run_dir.rglob("last.ckpt")):
        if torch.load(path, map_location="cpu", weights_only=True).get("global_step") == max_steps:
            return path
    return None


def _fit(job: dict) -> dict:
    run_dir = Path(job["run_dir"])
    done = run_dir / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    ckpt = last_checkpoint(run_dir, job["max_steps"])
    seconds = None
    if ckpt is None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        start = time.time()
        with open(run_dir / "fit.log", "w") as log:
            rc = subprocess.run([sys.executable, "-m", "lit_distill", "fit", "--config", job["config"]], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        seconds = round(time.time() - start, 1)
        ckpt = last_checkpoint(run_dir, job["max_steps"])
        if rc != 0 or ckpt is None:
            tail = (run_dir / "fit.log").read_text().splitlines()[-15:]
            print(f"[arms] {run_dir.name} FAILED (exit {rc}); log tail:\n  " + "\n  ".join(tail), flush=True)
            return {**job, "failed": True}
    result = {**job, "checkpoint": str(ckpt), "fit_seconds": seconds}
    done.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[arms] {run_dir.name}: {job['max_steps']} steps in {seconds}s", flush=True)
    return result


def available_arms(arms: Sequence[str]) -> list[str]:
    """The requested arms whose config exists (a note for each that does not)."""
    kept = []
    for arm in arms:
        if ARMS[arm].is_file():
            kept.append(arm)
        else:
            print(f"[arms] skipping {arm}: {ARMS[arm].relative_to(REPO)} does not exist yet")
    return kept


def stage_arms(work: Path, arms: Sequence[str], seeds: Sequence[int], max_steps: int, batch_size: int,
               jobs: int) -> list[dict]:
    """Write each arm x seed's derived YAML and fit it in a subprocess (``jobs`` at a time)."""
    import yaml

    teachers = {name: json.loads((work / "teachers" / name / "result.json").read_text()) for name in TEACHERS}
    todo = []
    for seed in seeds:
        for arm in available_arms(arms):
            run_dir = work / "runs" / f"{arm}_s{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            config = run_dir / "config.yaml"
            cfg = derive_config(arm, seed, work, teachers, max_steps, batch_size)
            config.write_text(yaml.safe_dump(cfg, sort_keys=False))
            todo.append({"arm": arm, "seed": seed, "max_steps": max_steps, "batch_size": batch_size,
                         "run_dir": str(run_dir), "config": str(config)})
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(_fit, todo))


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["corpus", "teachers", "arms", "evaluate", "report", "all"])
    parser.add_argument("--work-dir", default=None, help=f"results (default {DEFAULT_WORK.relative_to(REPO)}; "
                                                         "--smoke: its sibling experiment_smoke)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS),
                        help="the teachers the teachers stage trains (the arms need all three)")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps of every codec run")
    parser.add_argument("--batch-size", type=int, default=None, help="utterances per batch of every codec run")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per teacher fit (default cores // jobs; 1 on a shared machine)")
    parser.add_argument("--smoke", action="store_true", help="tiny everything (< 2 min) to test the pipeline")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    size = sizes(args.smoke)
    work = Path(args.work_dir) if args.work_dir else (
        DEFAULT_WORK.with_name("experiment_smoke") if args.smoke else DEFAULT_WORK)
    work.mkdir(parents=True, exist_ok=True)
    seeds = [0] if args.smoke and args.seeds == [0, 1, 2] else args.seeds
    max_steps = args.max_steps or size["max_steps"]
    batch_size = args.batch_size or size["batch_size"]
    meta = {"max_steps": max_steps, "batch_size": batch_size, "student": STUDENT, "seeds": seeds,
            "smoke": args.smoke, "command": " ".join(["scripts/experiment_speech.py", *(argv or sys.argv[1:])])}
    stages = ["corpus", "teachers", "arms", "evaluate", "report"] if args.stage == "all" else [args.stage]
    start = time.time()
    for stage in stages:
        t0 = time.time()
        if stage == "corpus":
            stage_corpus(work, args.smoke)
        elif stage == "teachers":
            stage_teachers(work, args.smoke, args.jobs, args.teachers, args.threads)
        elif stage == "arms":
            stage_arms(work, args.arms, seeds, max_steps, batch_size, args.jobs)
        elif stage == "evaluate":
            stage_evaluate(work, available_arms(args.arms), seeds, args.jobs, args.smoke)
        else:
            stage_report(work, args.arms, seeds, meta, work / "speech_codecs" if args.smoke else DOC)
        print(f"== {stage} finished in {time.time() - t0:.0f}s (total {time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
