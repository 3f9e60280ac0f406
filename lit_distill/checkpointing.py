"""Checkpoints that survive a kill and resume a run exactly.

- :class:`AtomicCheckpointIO` writes each checkpoint file to a temporary file in the same
  directory, flushes it to disk and renames it over the target: a process killed during a
  save leaves the previous complete file (and at worst a stray ``*.tmp``), never a truncated
  ``last.ckpt``.
- :class:`DistillationCheckpoint` is the CLI's checkpoint callback (``--checkpoint.*``): a
  ``ModelCheckpoint`` that installs :class:`AtomicCheckpointIO` on the strategy and stores
  the random-number generators' states, so that a run resumed from ``last.ckpt`` draws the
  same random numbers (dropout, augmentation) as an uninterrupted one.
- :class:`ResumableDataLoader` / :class:`ResumableSampler`: a ``DataLoader`` whose position
  inside the epoch is saved in the checkpoint and skipped on resume (without loading the
  skipped samples), so a run killed mid-epoch sees exactly the remaining batches.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, DistributedSampler


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same directory and a rename.

    The rename is atomic on POSIX filesystems, so ``path`` always holds either its previous
    content or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO for local paths, written with :func:`atomic_torch_save`.

    Remote URLs (``s3://``...) keep Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))


def rng_states() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) generators.

    Only tensors, numbers, strings and tuples, so checkpoints still load with
    ``torch.load(..., weights_only=True)``.
    """
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    import numpy as np

    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class DistillationCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with atomic writes and the generators' states (see the module docstring).

    It takes every argument of Lightning's ``ModelCheckpoint``; the CLI's defaults keep
    ``last.ckpt`` plus the best checkpoint by ``val/loss``. The generators' states are those of
    global rank 0 at save time and are restored on every rank; per-rank streams that must differ
    should be seeded from the rank, as Lightning's worker seeding does.

    With ``save_last``, ``last.ckpt`` is the latest state after every validation and at the end of
    training. Lightning's own callback rewrites it only at steps where it also saved a monitored
    checkpoint, so with a ``monitor`` it held the last *improvement*: an export of ``last.ckpt``
    was then silently the checkpoint chosen on the validation data, not the final step.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        strategy = trainer.strategy
        # Only the default single-file writer is replaced; sharded strategies write directories.
        if type(getattr(strategy, "_checkpoint_io", None)) in (TorchCheckpointIO, type(None)) \
                and hasattr(strategy, "checkpoint_io"):
            strategy.checkpoint_io = AtomicCheckpointIO()

    _rng_to_restore: dict[str, Any] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking:
            self._save_last_if_behind(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` unless this step was already saved (every rank calls it: saving is
        collective). ``save_last="link"`` keeps Lightning's meaning (a link to the latest saved file)."""
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng_states": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self._rng_to_restore = state_dict.pop("rng_states", None)
        super().load_state_dict(state_dict)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # Restored here, not at load time: building the resumed epoch's DataLoader iterator
        # draws from the global generator, which the interrupted run did before its checkpoint.
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` that can start its next epoch after ``skip`` of its indices.

    Same order as ``DistributedSampler`` (a pure function of seed, epoch, world size and rank);
    :meth:`skip_next` makes the next iteration drop its first indices once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip: tuple[int, int] | None = None  # (epoch, count)

    def skip_next(self, count: int, epoch: int) -> None:
        """Drop the first ``count`` indices of the next iteration, if it is of ``epoch``."""
        self._skip = (int(epoch), int(count))

    def pending_skip(self) -> int:
        """How many indices the next iteration will drop (0 unless it is the saved epoch)."""
        return self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self.pending_skip(), None
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is part of Lightning's checkpoints.

    Lightning saves ``state_dict()`` of every training loader that has one and calls
    ``load_state_dict`` before resuming; the batches already trained on in the interrupted
    epoch are then skipped by the sampler (a :class:`ResumableSampler`), so no sample is
    loaded twice or missed. Loaders are built with ``batch_size`` and a ``ResumableSampler``;
    when Lightning rebuilds one around its own batch sampler (e.g. for ``predict``), it is a
    plain loader again and its state is empty.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._epoch_of_iter = 0

    @property
    def resumable(self) -> bool:
        """Whether this loader can skip into an epoch (it samples with a ResumableSampler)."""
        return isinstance(self.sampler, ResumableSampler) and self.batch_size is not None

    def __iter__(self) -> Iterator[Any]:
        if not self.resumable:
            yield from super().__iter__()
            return
        self._epoch_of_iter = self.sampler.epoch
        self._yielded = self.sampler.pending_skip() // self.batch_size
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the epoch being iterated and the batches handed out in it."""
        return {"epoch": self._epoch_of_iter, "batches": self._yielded} if self.resumable else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches already trained on when the saved epoch is iterated again.

        A state saved after the epoch's last batch skips nothing: the next epoch starts afresh.
        """
        if self.resumable and state and 0 < state["batches"] < len(self):
            self.sampler.skip_next(state["batches"] * self.batch_size, state["epoch"])
