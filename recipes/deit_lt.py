"""DeiT-LT in one command: train the SAM CNN teacher, then the DeiT student from it.

The method itself needs no Python: the student config
(``configs/vision/deit_lt/deit-tiny_from_resnet18_digits-lt100.yaml``) composes a distilled
DeiT (CLS and DIST heads; inference averages them), ``CrossEntropy`` on the mixed labels,
``DeiTHardDistillation`` on the teacher's view of the same mixed, strongly augmented images
(OOD distillation), ``DeferredReweighting`` (effective-number class weights from epoch E) and
``ClassGroupAccuracy`` (head / medium / tail for CLS, DIST and their average). This file only
chains the two stages::

    python -m recipes.deit_lt                          # the digits-LT100 configs, artifacts/deit_lt
    python -m recipes.deit_lt --trainer.max_epochs=5   # any extra flag goes to both runs

which is the same as ``fit`` the teacher config, ``export`` its ``last.ckpt``, ``fit`` the
student config with the exported weights, ``export`` the student.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lit_distill.pipeline import teacher_then_student

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "vision" / "deit_lt"
TEACHER_CONFIG = CONFIGS / "resnet18-sam_teacher_digits-lt100.yaml"
STUDENT_CONFIG = CONFIGS / "deit-tiny_from_resnet18_digits-lt100.yaml"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m recipes.deit_lt``."""
    parser = argparse.ArgumentParser(
        prog="python -m recipes.deit_lt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other --x.y=z flag is passed to both `python -m lit_distill fit` runs after their configs\n"
               "(so it wins), e.g. --trainer.max_epochs=5; `python -m lit_distill fit --help` lists them all.")
    parser.add_argument("--teacher-config", default=str(TEACHER_CONFIG), help="the CNN teacher's config")
    parser.add_argument("--student-config", default=str(STUDENT_CONFIG), help="the DeiT student's config")
    parser.add_argument("--workdir", default="artifacts/deit_lt", help="runs and exports go here")
    ns, extra = parser.parse_known_args(argv)
    result = teacher_then_student(ns.teacher_config, ns.student_config, ns.workdir, extra)
    print(f"teacher exported to {result['teacher']}; student exported to {result['student']}")
    metrics = result["student_metrics"]
    for head in ("cls", "dist", "avg"):
        groups = " ".join(f"{g} {metrics[f'val/acc_{head}_{g}']:.3f}" for g in ("head", "medium", "tail")
                          if f"val/acc_{head}_{g}" in metrics)
        if f"val/acc_{head}" in metrics:
            print(f"student {head}: overall {metrics[f'val/acc_{head}']:.3f} {groups}")


if __name__ == "__main__":
    main()
