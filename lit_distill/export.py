"""``python -m lit_distill export``: write a trained student in its native format.

For a Hugging Face student this is a directory that
``AutoModelForCausalLM.from_pretrained(DIR)`` loads, with the tokenizer of the
training data (or of the student's source checkpoint) saved beside it. A LoRA student is
written merged there and its adapter under ``DIR/adapter``, with the tokenizer in both.
"""

from __future__ import annotations

import argparse
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import torch
from jsonargparse import ArgumentParser
from torch import nn

from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter
from lit_distill.models.hf_loading import copy_tokenizer
from lit_distill.models.lora import export_dirs, restore_frozen_base
from lit_distill.models.torch_module import as_adapter


def build_student(checkpoint: dict[str, Any]) -> ModelAdapter:
    """Rebuild the student from a CLI checkpoint's config and load its trained weights."""
    student_config = checkpoint.get("hyper_parameters", {}).get("student")
    if not isinstance(student_config, dict) or "class_path" not in student_config:
        raise ConfigError("export: this checkpoint holds no student config (it was not written by "
                          "`python -m lit_distill fit`); rebuild the student yourself and load "
                          "the 'student.*' weights from its state_dict")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--student", type=nn.Module)
    config = parser.parse_object({"student": student_config})
    student = as_adapter(parser.instantiate_classes(config).student)
    prefix = "student."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    restore_frozen_base(state, student)  # a LoRA student's base is not in the checkpoint
    student.load_state_dict(state)
    return student


def load_checkpoint_file(path: str, field: str) -> dict[str, Any]:
    """Load a ``fit`` checkpoint with ``weights_only=True`` (no code runs while unpickling).

    Raises:
        ConfigError: naming ``field`` when the file is missing, truncated, not a checkpoint,
            or needs arbitrary unpickling (a checkpoint that was not written by lit_distill).
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{field}: no file '{path}'")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{field}: '{path}' is not a readable checkpoint (truncated or not written by "
                          "torch.save); use another one, e.g. an earlier last.ckpt or best-*.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt archives and refused globals come in many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{field}: '{path}' cannot be loaded safely (weights_only=True): {first}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{field}: '{path}' holds no 'state_dict'; it is not a Lightning checkpoint")
    return checkpoint


def export_checkpoint(ckpt_path: str, out_dir: str, tokenizer: str | None = None) -> str:
    """Export the student of ``ckpt_path`` to ``out_dir``; returns ``out_dir``.

    Args:
        ckpt_path: a checkpoint written by ``python -m lit_distill fit``.
        out_dir: directory to write (created if missing).
        tokenizer: tokenizer to save beside the model; default: the training
            datamodule's ``tokenizer`` recorded in the checkpoint, if any.
    """
    checkpoint = load_checkpoint_file(ckpt_path, "export --ckpt")
    student = build_student(checkpoint)
    student.export(out_dir)
    tokenizer = tokenizer or _data_tokenizer(checkpoint)
    for target in export_dirs(out_dir) if tokenizer is not None else ():
        if not copy_tokenizer(tokenizer, target):
            raise ConfigError(f"export --tokenizer: could not load a tokenizer from '{tokenizer}'")
    return out_dir


def _data_tokenizer(checkpoint: dict[str, Any]) -> str | None:
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    data = data.get("init_args", data)
    tokenizer = data.get("tokenizer") if isinstance(data, dict) else None
    return tokenizer if isinstance(tokenizer, str) and os.path.exists(tokenizer) else None


def main(args: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_distill export",
                                     description="Write the student of a checkpoint in its native format.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `fit` (e.g. .../last.ckpt)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer to save beside the model (default: the training data's)")
    ns = parser.parse_args(list(args))
    out = export_checkpoint(ns.ckpt, ns.out, ns.tokenizer)
    print(f"exported student to {out}")
