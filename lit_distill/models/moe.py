"""Sparse upcycling: turn the FFNs of a dense decoder into mixture-of-experts layers.

:func:`upcycle` replaces ``layer.mlp`` of every ``every``-th decoder layer of a
Hugging Face Llama/Qwen2-style model with a :class:`MoEFeedForward` whose ``E``
experts are deep copies of that dense FFN (LLaVA-MoD, after sparse upcycling).

Routing (per token ``x``): router probabilities ``p = softmax(W_r x)`` over the
``E`` experts; the ``k`` largest are kept and renormalised to sum to one
(``g_i = p_i / Σ_top-k p``); the output is ``Σ_i g_i · expert_i(x)``.

Capacity: each expert takes at most ``C = max(ceil(capacity_factor · T · k / E),
min_capacity)`` token slots per forward, ``T`` = number of tokens in the call
(padding included). Slots are served first-choice-first (all tokens' first
choices in token order, then all second choices, ... as in GShard); a slot past
an expert's capacity is *dropped*: that expert's term is left out of the
token's output. By default the kept gates are then renormalised to sum to one
(DeepSpeed's top-2 gate); ``renormalize_after_drop: false`` keeps them as they
were. A token whose every choice was dropped gets a zero FFN output (the
decoder's residual connection carries it through unchanged).
``capacity_factor: null`` means no limit.

Router noise (training only, DeepSpeed's "Jitter" policy): ``router_jitter: ε``
multiplies the router's input by noise drawn uniformly from ``[1 − ε, 1 + ε]``.
``router_rsample: true`` (DeepSpeed's "RSample" policy) picks every choice after
the first by the router logits plus Gumbel noise ``−log(−log U)``, ``U ~ U(0, 1)``
(with ``k = 1`` the single choice is noisy); the gates stay the clean probabilities
of the chosen experts.

Equivalence at initialisation: the experts are identical and the kept gates sum
to one, so whenever no slot is dropped the layer computes exactly the dense FFN
(up to floating-point summation order).

Load-balancing auxiliary loss (Switch / GShard): ``aux = E · Σ_e f_e · P_e``
with ``P_e`` the mean router probability of ``e`` over the tokens and ``f_e``
the fraction of tokens whose *first* choice is ``e`` (``aux_loss: top1``,
DeepSpeed's top-2 gate, the default) or the fraction of all ``T·k`` routing
slots assigned to ``e`` (``aux_loss: all_slots``), both before capacity. It is 1
for perfectly uniform routing. Each layer keeps the value of
its last forward in ``aux_loss``; :func:`moe_aux_loss` averages them over the
model's MoE layers.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_distill.errors import ConfigError

AUX_LOSSES = ("top1", "all_slots")


class MoEFeedForward(nn.Module):
    """Top-k routed mixture of experts with capacity and a load-balancing loss.

    Args:
        experts: the expert FFNs, each mapping ``[n, D]`` to ``[n, D]``.
        hidden_size: ``D``, the model width (input of the router).
        top_k: experts per token.
        capacity_factor: slots per expert = ``ceil(capacity_factor · T · k / E)``; None: unlimited.
        router_std: standard deviation of the router's normal initialisation (small, so
            routing starts near uniform yet ties have probability zero).
        aux_loss: ``top1`` (first choices only, DeepSpeed; default) or ``all_slots``.
        renormalize_after_drop: renormalise the kept gates after capacity drops (DeepSpeed).
        router_jitter: ``ε`` of the multiplicative input noise in training (0: off, DeepSpeed's
            default; its "Jitter" policy uses 0.01).
        min_capacity: lower bound of the slots per expert (DeepSpeed: 4).
        router_rsample: in training, choose the non-first experts by Gumbel-noised logits
            (DeepSpeed's "RSample" policy; off by default as in DeepSpeed).
    """

    def __init__(self, experts: list[nn.Module], hidden_size: int, top_k: int = 2,
                 capacity_factor: float | None = 1.5, router_std: float = 0.02, aux_loss: str = "top1",
                 renormalize_after_drop: bool = True, router_jitter: float = 0.0, min_capacity: int = 4,
                 router_rsample: bool = False) -> None:
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ConfigError(f"moe.top_k: must be in [1, num_experts={len(experts)}], got {top_k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ConfigError(f"moe.capacity_factor: must be > 0 or null, got {capacity_factor}")
        if aux_loss not in AUX_LOSSES:
            raise ConfigError(f"moe.aux_loss: '{aux_loss}' is not valid (valid: {', '.join(AUX_LOSSES)})")
        if not 0.0 <= router_jitter < 1.0:
            raise ConfigError(f"moe.router_jitter: must be in [0, 1), got {router_jitter}")
        if min_capacity < 0:
            raise ConfigError(f"moe.min_capacity: must be >= 0, got {min_capacity}")
        self.aux_loss_kind, self.renormalize_after_drop = aux_loss, renormalize_after_drop
        self.router_jitter, self.min_capacity = router_jitter, min_capacity
        self.router_rsample = router_rsample
        self.experts = nn.ModuleList(experts)
        self.router = nn.Linear(hidden_size, len(experts), bias=False)
        nn.init.normal_(self.router.weight, std=router_std)
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.aux_loss: Tensor | None = None
        self.dropped_fraction: Tensor | None = None

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def capacity(self, num_tokens: int) -> int:
        """Slots per expert for a call with ``num_tokens`` tokens."""
        if self.capacity_factor is None:
            return num_tokens
        return max(math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts), self.min_capacity)

    def route(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Routing decisions for ``tokens`` ``[T, D]``.

        Returns:
            probs ``[T, E]`` (router softmax, float32 or float64), experts ``[T, k]`` (chosen ids,
            best first), gates ``[T, k]`` (top-k probabilities renormalised to sum to one over
            the kept slots, or over all k without ``renormalize_after_drop``) and kept
            ``[T, k]`` bool (False where the slot overflowed its expert's capacity).
        """
        num_tokens, num_experts, k = tokens.shape[0], self.num_experts, self.top_k
        if self.training and self.router_jitter > 0:
            noise = torch.empty_like(tokens).uniform_(1.0 - self.router_jitter, 1.0 + self.router_jitter)
            tokens = tokens * noise
        # float32 at least (float64 stays float64, so float64 models match their dense FFN exactly)
        logits = self.router(tokens).to(torch.promote_types(tokens.dtype, torch.float32))
        probs = logits.softmax(dim=-1)
        if self.training and self.router_rsample:
            experts = self._rsample_choices(logits)
            top_p = probs.gather(1, experts)
        else:
            top_p, experts = probs.topk(k, dim=-1)
        # Slot-major order: every token's first choice before any second choice.
        onehot = F.one_hot(experts.t().reshape(-1), num_experts)  # [k*T, E]
        position = (onehot.cumsum(dim=0) - 1) * onehot  # position of each slot in its expert's queue
        kept = ((position < self.capacity(num_tokens)) & onehot.bool()).any(dim=-1).reshape(k, num_tokens).t()
        if self.renormalize_after_drop:
            kept_p = top_p * kept
            gates = kept_p / kept_p.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(top_p.dtype).tiny)
        else:
            gates = top_p / top_p.sum(dim=-1, keepdim=True)
        return probs, experts, gates, kept

    def _rsample_choices(self, logits: Tensor) -> Tensor:
        """Expert ids ``[T, k]``: the clean argmax first (k ≥ 2), the rest by Gumbel-noised logits ``[T, E]``."""
        uniform = torch.rand_like(logits).clamp(torch.finfo(logits.dtype).tiny, 1.0 - torch.finfo(logits.dtype).eps)
        noisy = logits - torch.log(-torch.log(uniform))
        if self.top_k == 1:
            return noisy.argmax(dim=-1, keepdim=True)
        first = logits.argmax(dim=-1, keepdim=True)
        rest = noisy.scatter(1, first, float("-inf")).topk(self.top_k - 1, dim=-1).indices
        return torch.cat([first, rest], dim=-1)

    def forward(self, hidden: Tensor) -> Tensor:
        """Args: hidden ``[..., D]``. Returns ``[..., D]``; sets ``aux_loss`` (0-dim, float32 or float64)."""
        shape = hidden.shape
        tokens = hidden.reshape(-1, shape[-1])
        probs, experts, gates, kept = self.route(tokens)
        weights = (gates * kept).to(tokens.dtype)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows, slots = torch.nonzero((experts == e) & kept, as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, expert(tokens[rows]) * weights[rows, slots, None])
        counted = experts[:, :1] if self.aux_loss_kind == "top1" else experts  # [T, 1] or [T, k]
        fraction = F.one_hot(counted, self.num_experts).to(probs.dtype).sum(dim=(0, 1)) / counted.numel()  # [E]
        self.aux_loss = self.num_experts * (fraction * probs.mean(dim=0)).sum()
        self.dropped_fraction = 1.0 - kept.float().mean()
        return out.reshape(shape)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of an HF causal LM (``model.model.layers`` or ``model.layers``).

    Falls back to the first ``nn.ModuleList`` whose every element has an ``mlp``.
    """
    for owner in (getattr(model, "model", None), model):
        layers = getattr(owner, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and all(hasattr(m, "mlp") for m in layers):
            return layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(hasattr(m, "mlp") for m in module):
            return module
    raise ConfigError(f"moe: found no decoder layers with an 'mlp' in {type(model).__name__} "
                      "(expected HF Llama/Qwen2-style model.layers[i].mlp)")


def upcycle(model: nn.Module, every: int = 2, offset: int = 0, num_experts: int = 4, top_k: int = 2,
            capacity_factor: float | None = 1.5, router_std: float = 0.02, aux_loss: str = "top1",
            renormalize_after_drop: bool = True, router_jitter: float = 0.0, min_capacity: int = 4,
            router_rsample: bool = False) -> nn.Module:
    """Replace the FFN of decoder layers ``offset, offset + every, ...`` with MoE layers, in place.

    Args:
        model: an HF Llama/Qwen2-style causal LM (or its decoder).
        every: a MoE layer every ``every`` layers (1: all layers; LLaVA-MoD: 2).
        offset: index of the first MoE layer.
        num_experts: ``E``, copies of the dense FFN per MoE layer.
        top_k: experts per token.
        capacity_factor: see :class:`MoEFeedForward` (None: no dropping).
        router_std: router initialisation scale.
        aux_loss: ``top1`` or ``all_slots`` (see :class:`MoEFeedForward`).
        renormalize_after_drop: renormalise the kept gates after capacity drops.
        router_jitter: multiplicative router-input noise in training (0: off).
        min_capacity: lower bound of the slots per expert.
        router_rsample: Gumbel-noised choice of the non-first experts in training.

    Returns:
        ``model`` (modified in place).
    """
    if every < 1 or offset < 0:
        raise ConfigError(f"moe.every: must be >= 1 and moe.offset >= 0, got every={every}, offset={offset}")
    if num_experts < 1:
        raise ConfigError(f"moe.num_experts: must be >= 1, got {num_experts}")
    layers = decoder_layers(model)
    hidden = _hidden_size(model, layers)
    chosen = range(offset, len(layers), every)
    if not chosen:
        raise ConfigError(f"moe.offset: {offset} is past the last of {len(layers)} layers")
    for i in chosen:
        dense = layers[i].mlp
        if isinstance(dense, MoEFeedForward):
            raise ConfigError(f"moe: layer {i} is already a MoE layer (upcycled twice?)")
        experts = [copy.deepcopy(dense) for _ in range(num_experts)]
        moe = MoEFeedForward(experts, hidden, top_k, capacity_factor, router_std, aux_loss,
                             renormalize_after_drop, router_jitter, min_capacity, router_rsample)
        param = next(dense.parameters())
        layers[i].mlp = moe.to(device=param.device, dtype=param.dtype)
    return model


def _hidden_size(model: nn.Module, layers: nn.ModuleList) -> int:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    if config is not None and isinstance(getattr(config, "hidden_size", None), int):
        return config.hidden_size
    first = next(m for m in layers[0].mlp.modules() if isinstance(m, nn.Linear))
    return first.in_features


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    """Every :class:`MoEFeedForward` inside ``model``."""
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


def moe_aux_loss(model: nn.Module) -> Tensor | None:
    """Mean of the MoE layers' last auxiliary losses (0-dim), or None without MoE layers."""
    values = [m.aux_loss for m in moe_layers(model) if m.aux_loss is not None]
    if not values:
        return None
    return torch.stack(values).mean()
