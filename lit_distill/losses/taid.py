"""TAID: temporally adaptive interpolated distillation (Shing et al., ICLR 2025).

The student learns from an intermediate distribution that moves from itself
towards the teacher as training goes on:

    p_t = softmax((1 − t)·sg(z_s) + t·z_T)          (sg = stop-gradient)
    loss = token mean of −Σ_v p_t,v · log q_v        (q = softmax(z_s))

The loss is in the **cross-entropy form** (the entropy of p_t is not
subtracted), as in the authors' implementation: the adaptive schedule reads
this value, so the form changes how t moves. Its gradient equals that of
KL(p_t ‖ q).

Adaptive t, after each optimizer step with the step's loss J_n (detached):

    δ = (J_prev − J_n) / (J_prev + 1e−15);   m ← β·m + (1 − β)·δ
    t_lin = t_start + (t_end − t_start) · step / total_steps
    t ← min(t_end, max(t_lin, t + α·sigmoid(m)·(1 − t)))

The first update only stores J_prev. Unlike the reference implementation, t
moves once per optimizer step (not per micro-batch) and only in training (not
in validation); t, m and J_prev are buffers, so they are checkpointed and a
resumed run continues with exactly the same t. The update is driven by
:class:`lit_distill.callbacks.TAIDSchedule`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError
from lit_distill.losses.divergences import _LOGIT_FLOOR, _reduce
from lit_distill.losses.terms import check_vocab_sizes, shared_vocab_prefix


def _cross_entropy_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """−Σ_v p log q per row, ``[n, V]`` -> ``[n]`` (entries with p = 0 contribute 0)."""
    return -torch.einsum("nv,nv->n", log_p.exp(), log_q)


def _cross_entropy_value_grad(log_p: Tensor, log_q: Tensor, out: Tensor) -> Tensor:
    """−Σ_v p log q per row and its gradient with respect to the student's logits, q − p."""
    p = log_p.exp()
    per_row = -torch.einsum("nv,nv->n", p, log_q)
    torch.sub(log_q.exp_(), p, out=out)
    return per_row


def taid_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, t: float | Tensor,
                       mask: Tensor | None = None, chunk_size: int | None = None) -> Tensor:
    """TAID's loss: cross-entropy of the student against the interpolated target p_t.

    Args:
        student_logits: ``[..., V]`` (gradients flow here; the copy inside p_t is detached).
        teacher_logits: ``[..., V]``, same shape.
        t: interpolation weight in [0, 1] (0 = the student itself, 1 = the teacher);
            a float or a 0-dim tensor.
        mask: optional bool ``[...]``, True where a position counts.
        chunk_size: positions per chunk for the memory-lean path (None: one shot).

    Returns:
        0-dim float32 tensor: mean over valid positions of −Σ_v p_t log q (0 if none).
    """
    # Floor -inf before mixing: (1 − t)·(−inf) would be NaN at t = 1.
    student_floor = student_logits.detach().clamp_min(_LOGIT_FLOOR)
    target = (1.0 - t) * student_floor + t * teacher_logits.clamp_min(_LOGIT_FLOOR)
    return _reduce(_cross_entropy_rows, _cross_entropy_value_grad, student_logits, target, mask, 1.0, chunk_size)


class TAID(LossTerm):
    """TAID as a loss term with its adaptive interpolation state (see the module docstring).

    Add :class:`lit_distill.callbacks.TAIDSchedule` to the trainer's callbacks to
    move t; without it t stays at ``t_start``.

    Args:
        t_start: initial t (paper: 0.4 for a Phi-3 teacher, 0.2 for Llama-2/StableLM).
        t_end: final t.
        alpha: step size of the adaptive increase.
        beta: momentum of the relative loss change.
        adaptive: False follows the linear schedule t_lin only.
        padded_vocab: teacher and student share one tokenizer but pad their vocab
            differently: compare the shared prefix.
        chunk_size: positions per chunk for the memory-lean path (None: one shot).
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits and mask come from.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "student_logits": "student.logits", "teacher_logits": "teacher.logits", "mask": "batch.loss_mask"}

    def __init__(self, t_start: float = 0.4, t_end: float = 1.0, alpha: float = 5e-4, beta: float = 0.99,
                 adaptive: bool = True, padded_vocab: bool = False, chunk_size: int | None = None,
                 weight: float = 1.0,
                 sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        if not 0.0 <= t_start <= t_end <= 1.0:
            raise ConfigError(f"TAID: need 0 <= t_start <= t_end <= 1, got t_start={t_start}, t_end={t_end}")
        self.t_start, self.t_end, self.alpha, self.beta = t_start, t_end, alpha, beta
        self.adaptive = adaptive
        self.padded_vocab = padded_vocab
        self.chunk_size = chunk_size
        self.register_buffer("t", torch.tensor(float(t_start)))
        self.register_buffer("momentum", torch.zeros(()))
        self.register_buffer("prev_loss", torch.tensor(float("inf")))
        # Training-time loss values since the last update (not checkpointed: updates
        # happen at optimizer-step boundaries, where checkpoints are written).
        self._window_sum: Tensor | None = None
        self._window_count = 0

    def check_vocab(self, student_size: int | None, teacher_size: int | None, field: str) -> None:
        """Fail early (before training) when the two vocabularies cannot be compared."""
        check_vocab_sizes(student_size, teacher_size, self.padded_vocab, field)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.padded_vocab:
            student_logits, teacher_logits = shared_vocab_prefix(student_logits, teacher_logits)
        loss = taid_cross_entropy(student_logits, teacher_logits, self.t, mask, self.chunk_size)
        if self.training and torch.is_grad_enabled():
            value = loss.detach()
            self._window_sum = value if self._window_sum is None else self._window_sum + value
            self._window_count += 1
        return loss

    def pop_step_loss(self) -> Tensor | None:
        """Mean loss of the micro-batches since the last call (None if there were none)."""
        if self._window_sum is None:
            return None
        mean = self._window_sum / self._window_count
        self._window_sum, self._window_count = None, 0
        return mean

    @torch.no_grad()
    def update(self, loss: Tensor, step: int, total_steps: int) -> None:
        """One schedule update from the loss of optimizer step ``step`` of ``total_steps``."""
        loss = loss.to(self.t)
        progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
        t_linear = self.t_start + (self.t_end - self.t_start) * progress
        first = torch.isinf(self.prev_loss)
        change = (self.prev_loss - loss) / (self.prev_loss + 1e-15)
        momentum = self.beta * self.momentum + (1.0 - self.beta) * change
        if self.adaptive:
            proposal = self.t + self.alpha * torch.sigmoid(momentum) * (1.0 - self.t)
            t_new = torch.clamp(torch.clamp(proposal, min=t_linear), max=self.t_end)
        else:
            t_new = torch.full_like(self.t, t_linear)
        # The first update only records the loss (no host sync: torch.where, not `if`).
        self.momentum.copy_(torch.where(first, self.momentum, momentum))
        self.t.copy_(torch.where(first, self.t, t_new))
        self.prev_loss.copy_(loss)
