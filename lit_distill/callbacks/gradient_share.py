"""Measure how much of the gradient each loss term contributes, to set loss weights from data."""

from __future__ import annotations

import fnmatch
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lit_distill.errors import ConfigError


class GradientShare(L.Callback):
    """Logs each loss term's gradient norm on chosen parameters and its share of their sum.

    On every ``every_n_steps``-th optimizer step (and the first), for each term ``i`` with
    weight ``w_i`` and value ``L_i`` it computes ``g_i = ∇_θ (w_i · L_i)`` over the selected
    parameters ``θ`` (one extra backward per term on those steps only) and logs

    - ``grad_norm/<term>`` = ``‖g_i‖₂``,
    - ``grad_share/<term>`` = ``‖g_i‖₂ / Σ_j ‖g_j‖₂``.

    A term whose gradient share is tiny does nothing whatever its weight looks like; to give
    two terms equal say, scale one weight by the ratio of their norms. The values are the
    per-element means the terms return (before the module's valid-count normalisation, which
    scales every term alike), so shares are exact.

    Terms are observed through forward hooks on the ``LossTerm`` modules, so this works with
    any training step that calls them (the default step, a recipe's custom one).

    Args:
        parameters: glob patterns over ``pl_module.named_parameters()`` names (e.g.
            ``["student.module.model.layers.0.*"]``); None takes every trainable parameter of
            the student and the loss terms.
        every_n_steps: measure on optimizer steps that are multiples of this.
        terms: names of the terms to measure (None: every term).
    """

    def __init__(self, parameters: list[str] | None = None, every_n_steps: int = 50,
                 terms: list[str] | None = None) -> None:
        if every_n_steps < 1:
            raise ConfigError(f"GradientShare.every_n_steps: must be >= 1, got {every_n_steps}")
        self.patterns = list(parameters) if parameters else None
        self.every_n_steps = int(every_n_steps)
        self.term_names = list(terms) if terms else None
        self._values: dict[str, Tensor] = {}
        self._handles: list[Any] = []
        self._params: list[nn.Parameter] = []
        self.last: dict[str, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        losses = getattr(pl_module, "losses", None)
        if not isinstance(losses, nn.ModuleDict):
            raise ConfigError("GradientShare: the model has no loss terms (model.init_args.losses)")
        names = self.term_names or list(losses)
        unknown = sorted(set(names) - set(losses))
        if unknown:
            raise ConfigError(f"GradientShare.terms: {unknown} are not in model.init_args.losses "
                              f"(terms: {sorted(losses)})")
        self._params = self._select(pl_module)
        for name in names:
            self._handles.append(losses[name].register_forward_hook(self._recorder(name)))

    def _select(self, pl_module: L.LightningModule) -> list[nn.Parameter]:
        named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        if self.patterns is None:
            chosen = [p for n, p in named if n.startswith(("student.", "losses."))]
        else:
            chosen = [p for n, p in named if any(fnmatch.fnmatchcase(n, pat) for pat in self.patterns)]
        if not chosen:
            raise ConfigError(f"GradientShare.parameters: {self.patterns} match no trainable parameter "
                              f"(names look like {[n for n, _ in named[:3]]})")
        return chosen

    def _recorder(self, name: str):
        def record(module: nn.Module, _args: Any, output: Any) -> None:
            if module.training and torch.is_tensor(output) and output.requires_grad:
                self._values[name] = output
        return record

    def _measuring(self, trainer: L.Trainer) -> bool:
        return trainer.global_step % self.every_n_steps == 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._values = {}

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        if not self._values or not self._measuring(trainer):
            self._values = {}
            return
        norms = {}
        for name, value in self._values.items():
            weighted = pl_module.losses[name].weight * value
            grads = torch.autograd.grad(weighted, self._params, retain_graph=True, allow_unused=True)
            squares = [g.float().pow(2).sum() for g in grads if g is not None]
            norms[name] = torch.stack(squares).sum().sqrt() if squares else torch.zeros(())
        self._values = {}
        total = torch.stack(list(norms.values())).sum().clamp_min(1e-30)
        self.last = {}
        for name, norm in norms.items():
            share = norm / total
            pl_module.log(f"grad_norm/{name}", norm, batch_size=1)
            pl_module.log(f"grad_share/{name}", share, batch_size=1)
            self.last[name] = float(share)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._values = {}
