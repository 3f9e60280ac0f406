"""Experiment (issue 15): LM-SPT with its semantic distillation against the same codec without it.

Both arms are ``configs/speech/lm_spt/lm-spt-12.5hz_from_whisper-tiny_synth.yaml`` (the authors'
12.5 Hz frame rate, their loss weights: mel 15, commitment 0.25, codebook 1, semantic 500,
quantiser dropout 0.5, gradient-trained L2-normalised codebooks) trained from scratch by
``python -m lit_distill fit`` through :mod:`lit_distill.experiment`, with the same steps, data,
batch and seeds; the control sets the semantic distillation's weight to 0 (its ASR encoder still
runs, so both arms cost the same). The ASR encoder is the tiny Whisper-CTC teacher that
``scripts/experiment_speech.py`` trains on the corpus's training split (its hand-written CTC loop,
called, not copied). Corpus, probes and report helpers are those of ``scripts/experiment_dm_codec.py``
(same work directory by default, so its corpus is reused).

Measured: codebook usage and validation metrics as trajectories (``CodecMetrics``), and at the end
the held-out reconstruction and the probes on the FIRST codebook (LM-SPT's semantic one).

    python scripts/experiment_lm_spt.py [--seeds 0 1] [--steps 300] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]
import experiment_dm_codec as dm  # noqa: E402
import experiment_speech as speech  # noqa: E402

from lit_distill.experiment import Run, launch, markdown_table, mean_std  # noqa: E402

LMSPT = "configs/speech/lm_spt/lm-spt-12.5hz_from_whisper-tiny_synth.yaml"
SEMANTIC = "--model.init_args.losses.semantic.init_args."
END_KEYS = (("log_mel_l1", 3), ("si_snr_db", 2), ("cb0_usage", 3), ("cb0_perplexity", 1), ("ctc_cer", 3),
            ("ctc_nats_per_char", 3), ("sm_r2", 3))
TRAJECTORY_KEYS = ("val/codebook_usage_q0", "val/mel_distance", "train/semantic")


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


def arms(work: Path, size: dict, config: Path) -> list[Run]:
    """LM-SPT and its control: the same config, budget and data; only the semantic weight differs."""
    base = [*dm.common(work, size, size["steps"], size["val_every"]), dm.callbacks(size, teacher=False)]
    return [Run("LM-SPT (semantic distillation, weight 500)", [str(config)], base, group="lm_spt"),
            Run("same codec, semantic weight 0", [str(config)], [*base, f"{SEMANTIC}weight=0.0"], group="lm_spt")]


def report(results, evals: list[dict], size: dict, out: Path, command: str) -> str:
    """The end-point table and trajectories as markdown (also written to ``lm_spt.json``)."""
    by_arm: dict[str, list[dict]] = {}
    for row in evals:
        by_arm.setdefault(row["arm"], []).append(row)
    table = markdown_table(["arm", "n", *(k for k, _ in END_KEYS)], [
        [arm, len(rows), *(mean_std(r[k] for r in rows).cell(d) for k, d in END_KEYS)] for arm, rows in by_arm.items()])
    parts = ["## LM-SPT with and without its semantic distillation (issue 15)", "",
             f"Reproduce: `{command}`. Same config, {size['steps']} steps from scratch, seeds "
             f"{sorted({r['seed'] for r in evals})}; only the semantic term's weight differs.", "", table, ""]
    for key in TRAJECTORY_KEYS:
        rows = dm.trajectory_rows(results, key, size)
        if rows:
            parts += [f"Trajectory `{key}`:", "", markdown_table(rows[0], rows[1:]), ""]
    (out / "lm_spt.json").write_text(json.dumps({"runs": evals, "steps": size["steps"]}, indent=1) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default=None, help="default artifacts/speech/dm_codec (its corpus is reused)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    size = {**dm.sizes(args.smoke), "steps": 4 if args.smoke else args.steps, "val_every": 2 if args.smoke else 50}
    work = Path(args.work_dir or REPO / "artifacts" / "speech" / ("dm_codec_smoke" if args.smoke else "dm_codec"))
    work.mkdir(parents=True, exist_ok=True)
    speech.stage_corpus(work, args.smoke)
    speech.stage_teachers(work, args.smoke, 1, names=["hubert_ctc", "whisper_ctc"])  # hubert: the probes' R²
    whisper = Path(json.loads((work / "teachers" / "whisper_ctc" / "result.json").read_text())["path"])
    config = config_with_teacher(work, whisper)
    runs = [Run(r.name, r.configs, r.overrides, seed, r.group) for seed in args.seeds for r in arms(work, size, config)]
    results = launch(runs, work / "runs", args.workers, cwd=REPO)
    evals = dm.evaluate(results, work, args.smoke, args.workers)
    out = work if args.smoke else REPO / "docs" / "experiments"
    command = "python scripts/experiment_lm_spt.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, evals, size, out, command.strip())
    (out / "lm_spt.md").write_text("# LM-SPT\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
