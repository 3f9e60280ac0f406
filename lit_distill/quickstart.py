"""``python -m lit_distill quickstart``: the whole story on one CPU in a few minutes.

1. Writes an English corpus from documentation installed with Python
   (``datamodules.local_corpus``) and trains a 1,024-token BPE tokenizer on it.
2. Trains the teacher with ``configs/text/kd/quickstart-teacher.yaml`` (once;
   exported to ``artifacts/quickstart/teacher`` and reused afterwards).
3. Distils it into a smaller student with ``configs/text/kd/quickstart-student_from_quickstart-teacher.yaml``.
4. Trains the same student without the teacher (same data, steps and seed).
5. Prints validation cross-entropy and perplexity of all three.

Run it from the repository root (the configs use paths relative to it).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from lit_distill.build import fit
from lit_distill.callbacks.metrics_table import metrics_table
from lit_distill.errors import ConfigError
from lit_distill.export import export_checkpoint

WORKDIR = Path("artifacts/quickstart")
TEACHER_CONFIG = "configs/text/kd/quickstart-teacher.yaml"
STUDENT_CONFIG = "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"
BASELINE_OVERRIDES = [
    "--model.init_args.teacher=null",
    '--model.init_args.losses={"ce": {"class_path": "lit_distill.losses.CrossEntropy"}}',
    "--trainer.default_root_dir=artifacts/quickstart/runs/baseline",
]


def prepare_data(workdir: Path) -> None:
    """Write the corpus and train the tokenizer unless they already exist."""
    from datamodules.local_corpus import write_local_corpus
    from datamodules.tokenizer_training import train_tokenizer

    paths = write_local_corpus(workdir / "data")
    if not (workdir / "tokenizer" / "tokenizer.json").exists():
        train_tokenizer([paths["train"]], workdir / "tokenizer", vocab_size=1024, algorithm="bpe")


def train_teacher(workdir: Path, retrain: bool) -> None:
    """Train and export the teacher unless an exported one exists (or ``retrain``)."""
    target = workdir / "teacher"
    if (target / "config.json").exists() and not retrain:
        return
    shutil.rmtree(target, ignore_errors=True)
    run = fit(TEACHER_CONFIG)
    export_checkpoint(run.trainer.checkpoint_callback.last_model_path, str(target))


def main(args: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_distill quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrain-teacher", action="store_true", help="train the teacher again")
    ns = parser.parse_args(list(args))
    if not Path(STUDENT_CONFIG).exists():
        raise ConfigError(f"quickstart: run it from the repository root (no {STUDENT_CONFIG} here)")
    start = time.perf_counter()
    prepare_data(WORKDIR)
    train_teacher(WORKDIR, ns.retrain_teacher)
    distilled = fit(STUDENT_CONFIG).metrics()
    baseline = fit(STUDENT_CONFIG, BASELINE_OVERRIDES).metrics()
    rows = {
        "teacher (4 layers, 128 wide)": {"val CE": distilled["val/teacher_ce"]},
        "student without distillation": {"val CE": baseline["val/student_ce"]},
        "student distilled (CE + KL)": {"val CE": distilled["val/student_ce"]},
    }
    for row in rows.values():
        row["perplexity"] = math.exp(row["val CE"])
    Console().print(metrics_table(rows, "quickstart: validation on held-out text (nats/token)"))
    summary = {"seconds": round(time.perf_counter() - start, 1), **{k: v["val CE"] for k, v in rows.items()}}
    (WORKDIR / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done in {summary['seconds']} s; summary in {WORKDIR / 'summary.json'}")
