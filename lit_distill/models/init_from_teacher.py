"""Start a student from its teacher's weights: keep some layers (DistilBERT), optionally narrower.

``python -m lit_distill init-student --teacher DIR --layers every:2 --out DIR`` (or
:func:`student_from_teacher`) writes a ``save_pretrained`` directory that any ``HFModel`` /
``HFCausalLM`` config loads with ``path:``:

- depth: ``every:k`` keeps teacher layers 0, k, 2k, … (DistilBERT's "one layer out of two";
  its script kept 0, 2, 4, 7, 9, 11 for BERT-base — give that list explicitly to match it), or
  an explicit list of teacher layer indices, in order;
- width (optional ``hidden_size`` / ``intermediate_size``): truncation — every tensor keeps
  its leading block of the student's shape (the first features, the first feed-forward units).
  With the head width unchanged this keeps the first heads (``num_attention_heads`` scales with
  the width). Tensors whose shape does not change (vocabulary and positions of the embeddings'
  rows, classifier outputs) are copied as they are. ``--width-method projection`` instead
  projects the residual stream onto the principal directions of the teacher's embeddings, with
  the norms' gains folded in (exact at the teacher's width; RMSNorm decoders only, see
  :mod:`lit_distill.models.width_projection`); heads and feed-forward width stay the teacher's.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lit_distill.errors import ConfigError

_LAYER = re.compile(r"^(.*?\.(?:layer|layers|h|block|blocks)\.)(\d+)(\..*)$")


def choose_layers(spec: str | Sequence[int], teacher_layers: int) -> list[int]:
    """Teacher layer indices for ``every:k`` or an explicit list (each in ``[0, teacher_layers)``)."""
    if isinstance(spec, str):
        if spec.startswith("every:"):
            step = int(spec.split(":", 1)[1])
            if step < 1:
                raise ConfigError(f"init-student --layers: every:k needs k >= 1, got {step}")
            return list(range(0, teacher_layers, step))
        spec = [int(x) for x in spec.split(",") if x.strip()]
    layers = [int(x) for x in spec]
    bad = [x for x in layers if not 0 <= x < teacher_layers]
    if not layers or bad:
        raise ConfigError(f"init-student --layers: {list(spec)} must name teacher layers in [0, {teacher_layers}) "
                          "(or every:k)")
    return layers


def _truncate(value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The leading ``shape`` block of ``value`` (its first entries along every dimension)."""
    if value.dim() != len(shape) or any(n > m for n, m in zip(shape, value.shape, strict=True)):
        raise ConfigError(f"init-student: a teacher tensor of shape {tuple(value.shape)} cannot give the "
                          f"student's {tuple(shape)}")
    return value[tuple(slice(0, n) for n in shape)].contiguous()


def student_from_teacher(teacher: Any, layers: str | Sequence[int], hidden_size: int | None = None,
                         intermediate_size: int | None = None, width_method: str = "truncation") -> Any:
    """A ``transformers`` model of the teacher's class with the chosen layers (and width) of its weights.

    Args:
        teacher: a ``PreTrainedModel``.
        layers: ``every:k`` or teacher layer indices (see the module docstring).
        hidden_size: the student's width (None: the teacher's); truncation.
        intermediate_size: the student's feed-forward width (None: scaled like the hidden size).
        width_method: ``truncation`` (the leading block of every tensor) or ``projection``
            (:func:`~lit_distill.models.width_projection.project_width`, RMSNorm decoders).
    """
    if width_method not in ("truncation", "projection"):
        raise ConfigError(f"init-student --width-method: truncation or projection, got {width_method!r}")
    if width_method == "projection" and hidden_size is not None:
        if intermediate_size is not None:
            raise ConfigError("init-student --intermediate-size: a projection keeps the teacher's feed-forward "
                              "width; give it with --width-method truncation")
        from lit_distill.models.width_projection import project_width

        return project_width(student_from_teacher(teacher, layers), hidden_size)
    config = teacher.config.to_dict()
    kept = choose_layers(layers, int(config["num_hidden_layers"]))
    new = {"num_hidden_layers": len(kept)}
    if hidden_size is not None and hidden_size != config["hidden_size"]:
        ratio = hidden_size / config["hidden_size"]
        heads = config["num_attention_heads"] * ratio
        if heads != int(heads) or hidden_size > config["hidden_size"]:
            raise ConfigError(f"init-student --hidden-size: {hidden_size} must be smaller than the teacher's "
                              f"{config['hidden_size']} and keep the head width "
                              f"{config['hidden_size'] // config['num_attention_heads']}")
        inter = intermediate_size or int(config["intermediate_size"] * ratio)
        new.update(hidden_size=hidden_size, intermediate_size=inter, num_attention_heads=int(heads))
        if config.get("num_key_value_heads") not in (None, config["num_attention_heads"]):
            raise ConfigError("init-student --hidden-size: models with grouped key/value heads can only be "
                              "shortened (give --layers alone)")
        if "num_key_value_heads" in config:
            new["num_key_value_heads"] = int(heads)
    student_config = type(teacher.config).from_dict({**config, **new})
    student = type(teacher)(student_config).to(next(teacher.parameters()).dtype)
    position = {old: i for i, old in enumerate(kept)}
    shapes = {name: value.shape for name, value in student.state_dict().items()}
    state = {}
    for name, value in teacher.state_dict().items():
        match = _LAYER.match(name)
        if match:
            old = int(match.group(2))
            if old not in position:
                continue
            name = f"{match.group(1)}{position[old]}{match.group(3)}"
        if name in shapes:
            state[name] = _truncate(value, shapes[name])
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"init-student: the teacher's weights do not fit the student (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}); give explicit sizes or only --layers")
    return student


def main(args: Sequence[str] = ()) -> None:
    """``python -m lit_distill init-student``."""
    parser = argparse.ArgumentParser(prog="python -m lit_distill init-student", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the teacher's save_pretrained directory (or hub id)")
    parser.add_argument("--task", default="masked-lm", help="HFModel task that loads it (default masked-lm)")
    parser.add_argument("--layers", default="every:2", help="every:k or teacher layer indices, e.g. 0,2,4,7,9,11")
    parser.add_argument("--hidden-size", type=int, default=None, help="narrower student (truncation)")
    parser.add_argument("--intermediate-size", type=int, default=None, help="its feed-forward width")
    parser.add_argument("--width-method", choices=("truncation", "projection"), default="truncation",
                        help="how --hidden-size narrows: keep the leading features (truncation) or project the "
                             "residual stream onto the embeddings' principal directions (RMSNorm decoders)")
    parser.add_argument("--out", required=True, help="directory to write the student to")
    ns = parser.parse_args(list(args))
    from lit_distill.models.hf_model import HFModel

    teacher = HFModel(task=ns.task, path=ns.teacher)
    student = student_from_teacher(teacher.module, ns.layers, ns.hidden_size, ns.intermediate_size,
                                   ns.width_method)
    Path(ns.out).mkdir(parents=True, exist_ok=True)
    student.save_pretrained(ns.out)
    from lit_distill.models.hf_loading import copy_tokenizer

    copy_tokenizer(ns.teacher, ns.out)
    kept = choose_layers(ns.layers, teacher.module.config.num_hidden_layers)
    print(f"student with teacher layers {kept} ({sum(p.numel() for p in student.parameters()):,} parameters) "
          f"written to {ns.out}")
