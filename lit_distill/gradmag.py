"""A training step that weights the loss terms by their gradient magnitudes (ALM's recipe).

ALM's authors (tokenkit's ``multitask_aggregation_fn: approx_gradmag_preserve_mag``) do not tune
the weights of SFT and ALM: every step they take each term's gradient on the last layer's
parameters and weight the term by the inverse of its norm, so that every term moves the model
equally; ``preserve_magnitude`` rescales those weights by the mean norm, so the combined
gradient keeps the size it would have with unit weights. ALM's own gradient is ~100× smaller
than CE's at weight 1 (issue 16), which a fixed weight cannot follow as training moves.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lit_distill.errors import ConfigError
from lit_distill.steps import TrainingStep


class GradMagStep(TrainingStep):
    """Weights each loss term by the inverse of its gradient norm on a few parameters, every step.

    For terms ``L_i`` with gradients ``g_i = ∇_θ L_i`` on the selected parameters ``θ`` (the
    student's last layer, by default) the step minimises ``Σ_i w_i · L_i`` with
    ``w_i = sg(1 / ‖g_i‖)`` (times ``mean_j ‖g_j‖`` with ``preserve_magnitude``). The terms'
    configured ``weight`` is ignored for the terms balanced here (as in the reference); terms
    not named in ``terms`` keep their configured weight. One extra backward through the selected
    parameters per balanced term, every step. The weights are logged as ``gradmag/<term>``
    (``train/loss`` still reports the sum with the configured weights).

    Args:
        parameters: glob patterns over ``module.named_parameters()`` names; None takes the
            parameters of the student's last module that holds any (for a causal LM: its head
            or final norm; name them, e.g. ``["student.module.model.layers.11.*"]``).
        terms: names of the terms to balance (None: every term).
        preserve_magnitude: rescale the weights by the mean gradient norm (the reference's
            ``approx_gradmag_preserve_mag``); False gives unit-norm gradients per term.
    """

    def __init__(self, parameters: list[str] | None = None, terms: list[str] | None = None,
                 preserve_magnitude: bool = True) -> None:
        super().__init__()
        self.patterns = list(parameters) if parameters else None
        self.term_names = list(terms) if terms else None
        self.preserve_magnitude = preserve_magnitude
        self._params: list[nn.Parameter] | None = None

    def attach(self, module: L.LightningModule) -> None:
        names = self.term_names or list(module.losses)
        unknown = sorted(set(names) - set(module.losses))
        if unknown:
            raise ConfigError(f"GradMagStep.terms: {unknown} are not in model.init_args.losses "
                              f"(terms: {sorted(module.losses)})")
        if len(names) < 2:
            raise ConfigError("GradMagStep.terms: balancing needs at least two terms")
        self.term_names = names

    def _select(self, module: L.LightningModule) -> list[nn.Parameter]:
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad and n.startswith("student.")]
        if self.patterns is not None:
            chosen = [p for n, p in named if any(fnmatch.fnmatchcase(n, pat) for pat in self.patterns)]
            if not chosen:
                raise ConfigError(f"GradMagStep.parameters: {self.patterns} match no trainable student "
                                  f"parameter (names look like {[n for n, _ in named[-3:]]})")
            return chosen
        prefix = named[-1][0].rsplit(".", 1)[0] + "."  # the module that holds the last parameter
        return [p for n, p in named if n.startswith(prefix)]

    def weights(self, values: dict[str, Tensor], params: list[nn.Parameter]) -> dict[str, Tensor]:
        """``sg(1/‖∇ L_i‖)`` per term (times the mean norm with ``preserve_magnitude``), 0-dim each."""
        norms = {}
        for name, value in values.items():
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            squares = [g.float().pow(2).sum() for g in grads if g is not None]
            norms[name] = torch.stack(squares).sum().sqrt() if squares else torch.zeros((), device=value.device)
        stacked = torch.stack(list(norms.values())).clamp_min(1e-12)
        scale = stacked.mean() if self.preserve_magnitude else torch.ones_like(stacked[0])
        return {name: (scale / norm.clamp_min(1e-12)).detach() for name, norm in norms.items()}

    def training_step(self, module: L.LightningModule, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self._params is None:
            self._params = self._select(module)
        result = module.distillation_loss(batch)
        balanced = {name: result.values[name] for name in self.term_names}
        weights = self.weights(balanced, self._params)
        total = sum(weights[name] * value for name, value in balanced.items())
        for name, value in result.values.items():
            if name not in weights:
                total = total + module.losses[name].weight * value
        if result.logging:
            for name, weight in weights.items():
                module.log(f"gradmag/{name}", weight, batch_size=1)
        return total * result.count
