"""``python -m lit_distill.consolidate DIR --out FILE``: one checkpoint file from a sharded run.

A run under ``ModelParallelStrategy`` (FSDP2, see :mod:`lit_distill.sharding`)
writes each checkpoint as a directory: one ``__<rank>_0.distcp`` shard per
process plus ``meta.pt`` (loops, callbacks, hyperparameters). This merges such a
directory into an ordinary checkpoint file that a single process uses like any
other: ``python -m lit_distill export --ckpt FILE``, ``validate``/``test``
``--ckpt_path FILE``, ``DistillationModule.load_from_checkpoint``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lit_distill.errors import ConfigError

METADATA_FILE = "meta.pt"  # what Lightning's ModelParallelStrategy writes beside the shards


def consolidate_checkpoint(checkpoint_dir: str | os.PathLike, out_file: str | os.PathLike,
                           keep_teacher: bool = False) -> Path:
    """Merge a sharded (distributed) checkpoint directory into one ordinary checkpoint file.

    The result holds full tensors in ``state_dict`` (keys as in a single-process
    run) and the run's metadata (hyperparameters, loops, callbacks), so a single
    process can resume from it (``--ckpt_path``), ``export`` it, or load it with
    ``DistillationModule.load_from_checkpoint``. Optimizer states are kept as
    ``optimizer_states``. Runs in one process, without a process group.

    Args:
        checkpoint_dir: a checkpoint directory written under ``ModelParallelStrategy``
            (e.g. ``.../checkpoints/last.ckpt/``).
        out_file: the file to write.
        keep_teacher: also keep the teacher's weights (sharded checkpoints hold
            them so that a sharded run can resume; a single process rebuilds the
            teacher from its config, as with any lit_distill checkpoint).

    Returns:
        ``out_file`` as a ``Path``.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    src = Path(checkpoint_dir)
    if not (src.is_dir() and (src / ".metadata").is_file()):
        raise ConfigError(f"consolidate: '{src}' is not a distributed checkpoint directory "
                          "(expected the folder a ModelParallelStrategy run writes, holding .metadata)")
    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "flat.pt"
        dcp_to_torch_save(src, flat)
        shards = torch.load(flat, map_location="cpu", weights_only=False)
    meta = src / METADATA_FILE
    checkpoint: dict[str, Any] = torch.load(meta, map_location="cpu", weights_only=False) if meta.is_file() else {}
    state = shards.pop("state_dict")
    if not keep_teacher:  # rebuilt from its config on load, like a single-process checkpoint
        state = {k: v for k, v in state.items() if not k.startswith("teacher.")}
    checkpoint["state_dict"] = state
    optimizers = sorted((k for k in shards if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
    if optimizers:
        checkpoint["optimizer_states"] = [shards.pop(k) for k in optimizers]
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(out)  # never leave a half-written checkpoint behind
    return out


def main(args: Sequence[str] | None = None) -> None:
    """``python -m lit_distill.consolidate DIR --out FILE``: consolidate a sharded checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m lit_distill.consolidate",
                                     description="Merge a sharded checkpoint directory into one file.")
    parser.add_argument("checkpoint_dir", help="directory written by a ModelParallelStrategy run")
    parser.add_argument("--out", required=True, help="checkpoint file to write (e.g. last-full.ckpt)")
    parser.add_argument("--keep-teacher", action="store_true", help="keep the teacher's weights too")
    ns = parser.parse_args(None if args is None else list(args))
    try:
        print(f"wrote {consolidate_checkpoint(ns.checkpoint_dir, ns.out, ns.keep_teacher)}")
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
