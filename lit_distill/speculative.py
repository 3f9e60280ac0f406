"""How well a draft model serves a target in speculative decoding: acceptance and accepted length.

In speculative sampling (Leviathan et al. 2023; Chen et al. 2023) the draft proposes a token
from q, the target accepts it with probability min(1, p/q), and on rejection resamples from the
normalised residual max(0, p − q). The probability that the draft's token is accepted at a
position is therefore

    α = Σ_v min(p_v, q_v) = 1 − TVD(p, q),

and with greedy decoding on both sides a token is accepted when the two argmaxes agree. With
γ draft tokens per target call and acceptance α_t at the t-th proposed position, the number of
tokens one target call produces (the accepted prefix plus the target's own token) has the
expectation

    E[tokens per call from position t] = Σ_{k=0..γ} Π_{j<k} α_{t+j},

which is (1 − α^{γ+1}) / (1 − α) when every α_t = α (:func:`expected_tokens_per_call`).

These functions score drafts teacher-forced along a reference text: positions are the text's
own, not the draft's samples, so the numbers estimate the acceptance on text like the
evaluation data (DistillSpec evaluates on the target's or the draft's own generations; give
``generate``'s output as that data for the on-policy estimate).
"""

from __future__ import annotations

import torch
from torch import Tensor


def acceptance_per_position(draft_logits: Tensor, target_logits: Tensor, temperature: float = 1.0,
                            greedy: bool = False) -> Tensor:
    """Probability that the target accepts the draft's token, per position, ``[B, L]`` float32.

    Args:
        draft_logits: ``[B, L, V]`` the draft's next-token logits.
        target_logits: ``[B, L, V']`` the target's; ``V' >= V`` (padded vocabularies: the
            extra target entries are taken as tokens the draft never proposes).
        temperature: sampling temperature of both models (ignored with ``greedy``).
        greedy: both decode greedily; acceptance is 1 where the argmaxes agree, else 0.
    """
    if draft_logits.shape[:2] != target_logits.shape[:2]:
        raise ValueError(f"draft logits {tuple(draft_logits.shape)} and target logits "
                         f"{tuple(target_logits.shape)} must share batch and length")
    vocab = draft_logits.shape[-1]
    if target_logits.shape[-1] < vocab:
        raise ValueError(f"the draft has {vocab} logits and the target {target_logits.shape[-1]}: "
                         "the draft must share the target's vocabulary")
    if greedy:
        return (draft_logits.argmax(-1) == target_logits.argmax(-1)).float()
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for greedy decoding), got {temperature}")
    q = torch.softmax(draft_logits.float() / temperature, dim=-1)
    p = torch.softmax(target_logits.float() / temperature, dim=-1)[..., :vocab]
    return torch.minimum(p, q).sum(-1)


def tokens_per_call(alpha: Tensor, mask: Tensor, gamma: int) -> Tensor:
    """Expected tokens one target call yields when drafting starts at each position, ``[B, L]``.

    ``Σ_{k=0..γ} Π_{j<k} α_{t+j}``; drafting stops at the end of the sequence's valid positions
    (a position outside ``mask`` counts as a rejection), so the value is exact for that text.

    Args:
        alpha: ``[B, L]`` per-position acceptance (:func:`acceptance_per_position`).
        mask: ``[B, L]`` bool, the valid positions (contiguous per row: padding at the end).
        gamma: draft tokens per target call, >= 1.
    """
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    alpha = alpha.float() * mask.float()
    total = torch.ones_like(alpha)
    run = torch.ones_like(alpha)
    for k in range(gamma):  # run_k(t) = Π_{j<k+1} α_{t+j}
        shifted = torch.nn.functional.pad(alpha[:, k:], (0, k))
        run = run * shifted
        total = total + run
    return total


def expected_tokens_per_call(alpha: float, gamma: int) -> float:
    """(1 − α^{γ+1}) / (1 − α): tokens per target call at a constant acceptance ``alpha``."""
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


class AcceptanceTally:
    """Running sums over batches: mean acceptance and mean tokens per target call.

    The sums stay on the logits' device (no host sync per batch); ``sums`` may be reduced over
    processes before :meth:`result`.

    Args:
        gamma: draft tokens per target call.
        temperature: sampling temperature for the sampled estimate.
    """

    KEYS = ("acceptance", "tokens_per_call", "acceptance_greedy", "tokens_per_call_greedy", "positions")

    def __init__(self, gamma: int = 4, temperature: float = 1.0) -> None:
        self.gamma, self.temperature = gamma, temperature
        self.sums: dict[str, Tensor] = {}

    def update(self, draft_logits: Tensor, target_logits: Tensor, mask: Tensor) -> None:
        """Add one batch: logits ``[B, L, V]``, ``mask`` ``[B, L]`` bool of scored positions."""
        mask = mask.bool()
        values = {"positions": mask.sum()}
        for suffix, greedy in (("", False), ("_greedy", True)):
            alpha = acceptance_per_position(draft_logits, target_logits, self.temperature, greedy)
            values[f"acceptance{suffix}"] = (alpha * mask).sum()
            values[f"tokens_per_call{suffix}"] = (tokens_per_call(alpha, mask, self.gamma) * mask).sum()
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0) + value.double()

    def means(self) -> dict[str, float]:
        """Each sum over the scored positions, e.g. ``{"acceptance": 0.71, ...}`` (positions excluded)."""
        positions = float(self.sums.get("positions", 0)) or 1.0
        return {key: float(self.sums.get(key, 0)) / positions for key in self.KEYS if key != "positions"}

    def result(self) -> dict:
        """``{sampled|greedy: {acceptance, tokens_per_call}, gamma, temperature, positions}``."""
        means = self.means()
        out = {mode: {"acceptance": means[f"acceptance{suffix}"], "tokens_per_call": means[f"tokens_per_call{suffix}"]}
               for mode, suffix in (("sampled", ""), ("greedy", "_greedy"))}
        positions = int(self.sums.get("positions", 0))
        return out | {"gamma": self.gamma, "temperature": self.temperature, "positions": positions}
