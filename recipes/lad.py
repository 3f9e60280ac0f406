"""LAD — label-assisted distillation for semantic segmentation, as a two-stage recipe.

Stage 1 trains the label-assisted teacher: a segmentation network whose stem is widened to
read RGB ⊕ a label channel (``extra_input_channels: 1``). Each image goes through the model
twice, with two independent ``random`` label encodings (the datamodule's ``label_views: 2``,
``label_input: student``), and the loss is

    CE(o₁) + CE(o₂) + 5 · [CWD(o₁, sg o₂) + CWD(o₂, sg o₁)]   (CWD at temperature 4).

The only thing that changes the step is the double pass, so this file holds
:class:`DualPathModel` (plus :func:`run_pipeline`, which chains the two stages), a model wrapper that runs both paths and returns
``logits = o₁`` and ``features["path2_logits"] = o₂``; the loss is plain
``DistillationModule`` terms (``PixelCrossEntropy`` ×2, ``ChannelWiseDistillation`` ×2
with ``sources`` pointing at the two paths). Stage 2 is YAML only: the student (RGB) learns
with CE + 3·CWD(T=4) from the frozen teacher, which reads the ``fixed`` label encoding.

Commands (configs under ``configs/segmentation/lad/``)::

    python -m recipes.lad --teacher-config configs/segmentation/lad/test-resnet-lad_teacher_digit-scenes.yaml \\
        --student-config configs/segmentation/lad/test-resnet_from_test-resnet-lad_digit-scenes.yaml \\
        --workdir artifacts/lad

or the same as four commands (see the README): ``fit`` the teacher config, ``export`` its
``last.ckpt``, ``fit`` the student config, ``export`` the student.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter
from lit_distill.models.torch_module import as_adapter
from lit_distill.pipeline import teacher_then_student

PATH2 = "path2_logits"


class DualPathModel(ModelAdapter):
    """Runs a model on two inputs at once (LAD's dual path) and returns both outputs.

    Called with ``pixel_values`` ``[B, K, H, W]`` and ``pixel_values_2`` ``[B, K, H, W]``, it
    runs the wrapped model once on their concatenation ``[2B, K, H, W]`` (so batch-norm
    statistics are computed over both noisings) and returns ``logits`` = the first path's
    logits and ``features["path2_logits"]`` = the second's. Without ``pixel_values_2`` it is
    the wrapped model. :meth:`export` writes the wrapped model, which is what stage 2 loads.

    Args:
        model: the network being trained (e.g. a ``TimmSegmentation`` with a widened stem).
        num_classes: the datamodule's class count (linked by the CLI); checked against the
            wrapped model's when both are known.
    """

    def __init__(self, model: nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        self.inner = as_adapter(model)
        own = self.inner.output_size
        if num_classes is not None and own is not None and own != num_classes:
            raise ConfigError(f"DualPathModel.model: predicts {own} classes but the data has "
                              f"{num_classes}; set the wrapped model's num_classes to {num_classes}")

    @property
    def model(self) -> nn.Module:
        return self.inner.model

    @property
    def output_size(self) -> int | None:
        return self.inner.output_size

    def run(self, pixel_values: Tensor, pixel_values_2: Tensor | None = None) -> ModelOutput:
        if pixel_values_2 is None:
            return self.inner(pixel_values=pixel_values)
        out = self.inner(pixel_values=torch.cat([pixel_values, pixel_values_2]))
        first, second = out.logits.chunk(2)
        features = {name: value.chunk(2)[0] for name, value in out.features.items()}
        return ModelOutput(logits=first, features={**features, PATH2: second})

    def export(self, out_dir: str) -> None:
        """Export the wrapped model (its own format)."""
        self.inner.export(out_dir)


def run_pipeline(teacher_config: str, student_config: str, workdir: str,
                 extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Both stages: fit and export the LAD teacher, then fit and export the student.

    Args:
        teacher_config: stage-1 config (``DualPathModel`` student, ``teacher: null``).
        student_config: stage-2 config; its teacher's ``checkpoint`` is replaced by the
            exported stage-1 weights.
        workdir: runs go to ``workdir/teacher_run`` and ``workdir/student_run``, exports to
            ``workdir/teacher`` and ``workdir/student``.
        extra_args: further CLI arguments given to both ``fit`` runs (e.g. ``--trainer.max_epochs=1``).

    Returns:
        ``{"teacher": dir, "student": dir, "teacher_metrics": {...}, "student_metrics": {...}}``
        (metrics as floats from the last validation).
    """
    return teacher_then_student(teacher_config, student_config, workdir, extra_args)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m recipes.lad``."""
    parser = argparse.ArgumentParser(
        prog="python -m recipes.lad", description="LAD: train the label-assisted teacher, then distil the student.",
        epilog="Any other --x.y=z flag is passed to both `python -m lit_distill fit` runs after their configs\n"
               "(so it wins), e.g. --trainer.max_epochs=1; `python -m lit_distill fit --help` lists them all.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-config", required=True, help="stage-1 config (trains the LAD teacher)")
    parser.add_argument("--student-config", required=True, help="stage-2 config (distils the student)")
    parser.add_argument("--workdir", default="artifacts/lad", help="runs and exports go here")
    ns, extra = parser.parse_known_args(argv)
    result = run_pipeline(ns.teacher_config, ns.student_config, ns.workdir, extra)
    print(f"teacher exported to {result['teacher']}; student exported to {result['student']}")
    for key in ("val/miou",):
        if key in result["student_metrics"]:
            print(f"teacher {key} {result['teacher_metrics'].get(key, float('nan')):.4f}, "
                  f"student {key} {result['student_metrics'][key]:.4f}")


if __name__ == "__main__":
    main()
