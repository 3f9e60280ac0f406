"""The base of image model adapters: expected input size and normalisation, checkpoint loading."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_distill.errors import ConfigError, MissingPathError
from lit_distill.models.base import ModelAdapter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _close_names(name: str, candidates: Sequence[str], n: int = 5) -> list[str]:
    """Up to ``n`` candidates closest to ``name`` (case-insensitive)."""
    lowered = {c.lower(): c for c in candidates}
    return [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.0)]


def _as_size(value: Any, field: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        size = (value, value)
    else:
        size = tuple(int(v) for v in value)
        size = size[-2:] if len(size) == 3 else size  # timm's (C, H, W)
    if len(size) != 2 or min(size) <= 0:
        raise ConfigError(f"{field}: {value!r} is not a positive image size (give an int, e.g. 224)")
    return size  # type: ignore[return-value]


def _as_stats(value: Any, field: str, positive: bool = False) -> tuple[float, float, float]:
    stats = tuple(float(v) for v in value)
    if len(stats) != 3 or (positive and min(stats) <= 0):
        raise ConfigError(f"{field}: {list(value)} is not three per-channel (RGB) "
                          f"{'positive ' if positive else ''}values, e.g. {list(IMAGENET_STD if positive else IMAGENET_MEAN)}")
    return stats  # type: ignore[return-value]


def read_state_dict(path: str, field: str) -> dict[str, Tensor]:
    """Load a state dict from a ``torch.save`` file (unwrapping ``state_dict``/``model`` entries).

    A leading ``module.`` (DataParallel/DDP) is stripped from the keys.
    """
    if not os.path.isfile(path):
        raise MissingPathError(f"{field}: no file '{path}' (give a state dict saved with torch.save)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise ConfigError(f"{field}: '{path}' is not a loadable state-dict file: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{field}: '{path}' does not hold a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_checked(module: nn.Module, state: dict[str, Tensor], field: str, path: str) -> None:
    """``load_state_dict`` strictly, with a ConfigError listing missing, unexpected and misshapen keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            problems.append(f"{label} {keys[:5]}{more}")
    if problems:
        raise ConfigError(f"{field}: '{path}' does not fit {type(module).__name__}: " + "; ".join(problems)
                          + " (was it saved from the same architecture and num_classes?)")
    module.load_state_dict(state)


class ImageModelAdapter(ModelAdapter):
    """Base of the image adapters: input resolution and normalisation, and :meth:`prepare`.

    Args:
        input_size: side of the square images the model expects (None: any size,
            batches are not resized).
        mean: per-channel mean the model's inputs are normalised with.
        std: per-channel standard deviation the model's inputs are normalised with.
        hooks: module paths whose outputs are recorded as features.
    """

    def __init__(self, input_size: Any = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, hooks: list[str] | None = None) -> None:
        super().__init__(hooks)
        name = type(self).__name__
        self.input_size: tuple[int, int] | None = _as_size(input_size, f"{name}.input_size")
        self.mean = _as_stats(IMAGENET_MEAN if mean is None else mean, f"{name}.mean")
        self.std = _as_stats(IMAGENET_STD if std is None else std, f"{name}.std", positive=True)

    def prepare(self, pixel_values: Tensor, source_mean: Sequence[float] | Tensor,
                source_std: Sequence[float] | Tensor) -> Tensor:
        """Convert images normalised with ``source_mean``/``source_std`` into this model's inputs.

        Un-normalises, resizes (bilinear, antialiased) to ``input_size`` when it
        differs from the batch's size, and normalises with this model's
        ``mean``/``std``. Returns ``pixel_values`` itself when nothing changes.

        Args:
            pixel_values: ``[B, 3, H, W]`` float images, normalised with the source statistics.
            source_mean: the per-channel mean the batch was normalised with.
            source_std: the per-channel standard deviation the batch was normalised with.
        """
        src_mean = torch.as_tensor(source_mean, dtype=torch.float32).flatten()
        src_std = torch.as_tensor(source_std, dtype=torch.float32).flatten()
        mean = torch.tensor(self.mean)
        std = torch.tensor(self.std)
        resize = self.input_size is not None and tuple(pixel_values.shape[-2:]) != self.input_size
        same_stats = torch.equal(src_mean, mean) and torch.equal(src_std, std)
        if same_stats and not resize:
            return pixel_values
        shape = (1, -1, 1, 1)
        x = pixel_values.float()
        if not same_stats:
            x = x * src_std.to(x.device).view(shape) + src_mean.to(x.device).view(shape)
        if resize:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        if not same_stats:
            x = (x - mean.to(x.device).view(shape)) / std.to(x.device).view(shape)
        return x.to(pixel_values.dtype)

    def _load_checkpoint(self, module: nn.Module, checkpoint: str) -> None:
        field = f"{type(self).__name__}.checkpoint"
        load_checked(module, read_state_dict(checkpoint, field), field, checkpoint)

    def _config(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size) if self.input_size else None,
                "mean": list(self.mean), "std": list(self.std)}
