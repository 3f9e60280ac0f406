"""The adapter contract: any model in, :class:`~lit_distill.contracts.ModelOutput` out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.sources import OutputSpec


def parse_dtype(name: str | None, field: str = "dtype", also_valid: str = "") -> torch.dtype | None:
    """Turn ``"bfloat16"``/``"bf16"``/``"float32"``/... into a torch dtype (None stays None).

    ``also_valid`` names the field's own extra choices in the error (e.g. ``", auto"``).
    The strings ``"None"`` and ``"null"`` also mean None: jsonargparse passes ``dtype=null`` given on
    the command line for a class nested in another class's ``init_args`` (``--model.init_args.
    teacher.init_args.dtype=null``) as the string ``"None"``.
    """
    if name is None or name in ("None", "null"):
        return None
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
               "float": "float32", "fp64": "float64", "double": "float64"}
    dtype = getattr(torch, aliases.get(name, name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"{field}: '{name}' is not a floating dtype "
                          f"(valid: float32, bfloat16, float16, float64{also_valid})")
    return dtype


class _Recorder:
    """A forward hook storing a module's output in its adapter's captured features.

    An object rather than a closure, so that ``copy.deepcopy`` of the adapter gives hooks
    that write into the copy.
    """

    def __init__(self, adapter: ModelAdapter, path: str) -> None:
        self.adapter, self.path = adapter, path

    def __call__(self, _module: nn.Module, _args: Any, output: Any) -> None:
        self.adapter._captured[self.path] = output[0] if isinstance(output, tuple) else output


class ModelAdapter(nn.Module):
    """Base class: wraps a model so that it returns a :class:`ModelOutput`.

    Subclasses implement :meth:`run` (call the wrapped model on keyword inputs
    and convert its output). Outputs of the submodules named in ``hooks`` are
    captured by forward hooks into ``ModelOutput.features`` (the fallback for
    models that do not expose what a loss needs).

    Args:
        hooks: module paths inside the wrapped model (as in ``named_modules()``)
            whose outputs are recorded as features under the same name.
    """

    def __init__(self, hooks: list[str] | None = None) -> None:
        super().__init__()
        self.hook_paths = list(hooks or [])
        self._captured: dict[str, Tensor] = {}

    module: nn.Module  # the wrapped model; subclasses set it in __init__

    @property
    def model(self) -> nn.Module:
        """The wrapped model."""
        return self.module

    @property
    def output_size(self) -> int | None:
        """Size of the logits' last dimension when known without a forward (vocab or classes)."""
        return None

    def output_spec(self) -> OutputSpec:
        """What this adapter's ``ModelOutput`` can hold, known before any forward pass.

        ``DistillationModule`` checks every loss term's sources against it before training.
        The default knows only the hooked features and leaves everything else to the first
        step; adapters that know their outputs override :meth:`declared_outputs`.
        """
        declared = self.declared_outputs()
        if declared is None:
            return OutputSpec(features=frozenset(self.hook_paths))
        return replace(declared, features=declared.features | frozenset(self.hook_paths))

    def declared_outputs(self) -> OutputSpec | None:
        """The outputs :meth:`run` returns (without the hooked features), or None when unknown."""
        return None

    def run(self, **inputs: Any) -> ModelOutput:
        """Call the wrapped model on ``inputs`` and convert its output."""
        raise NotImplementedError

    def export(self, out_dir: str) -> None:
        """Write the wrapped model in its native format to ``out_dir``."""
        import os

        os.makedirs(out_dir, exist_ok=True)
        torch.save(self.model.state_dict(), os.path.join(out_dir, "model_state_dict.pt"))

    def _install_hooks(self) -> None:
        modules = dict(self.model.named_modules())
        for path in self.hook_paths:
            if path not in modules:
                close = [name for name in modules if name.endswith(path.split(".")[-1])][:5]
                raise ConfigError(f"hooks: no submodule '{path}' in {type(self.model).__name__}"
                                  f"{f' (similar: {close})' if close else ''}")
            modules[path].register_forward_hook(_Recorder(self, path))

    def forward(self, **inputs: Any) -> ModelOutput:
        self._captured = {}
        out = self.run(**inputs)
        if self._captured:
            out.features = {**out.features, **self._captured}
            self._captured = {}
        return out
