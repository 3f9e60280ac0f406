"""ALM: cross-tokenizer distillation by approximate likelihood matching (functional + term).

ALM is from "Cross-Tokenizer Distillation via Approximate Likelihood Matching"
(Minixhofer, Vulić and Ponti). A teacher and a student with different tokenizers
cannot be compared token by token, but both assign a likelihood to the same text.
The text is cut into *chunks*: spans whose bytes are covered by a whole number of
tokens on each side (a chunk is a run of teacher tokens and a run of student tokens
that encode the same bytes). The likelihood of a chunk is the product of the
next-token probabilities of its tokens, on each side, and ALM makes the student's
chunk likelihoods match the teacher's.

Definition. Labels are already shifted (``labels[b, t]`` is the token position ``t``
predicts, ``-100`` where nothing counts) and ``chunks[b, t, c]`` is True when that
target token belongs to chunk ``c``. Per side,

- ``log p[b, t] = log_softmax(logits[b, t])[labels[b, t]]`` (0 where the label is -100),
- ``log P[b, c] = min(0, Σ_t log p[b, t] · chunks[b, t, c])``. The clip to ≤ 0 guards
  against rounding (a bf16 log-softmax can exceed 0); here each ``log p`` is computed in
  float32 as ``logit − logsumexp`` with ``logsumexp ≥ max``, so it is ≤ 0 already and the
  clip is a safeguard.

With temperature ``τ`` and offset ``ε``, ``a = log P_T / τ − ε`` (teacher) and
``b = log P_S / τ − ε`` (student); the per-chunk loss is the binary cross-entropy of
the Bernoulli(``e^b``) student against the Bernoulli(``e^a``) teacher,

    ``ℓ_c = −[e^a · b + (1 − e^a) · log(1 − e^b)]``,

and ALM is the mean of ``ℓ_c`` over the counted chunks of the batch (one mean over
all of them, not a per-sample mean first). No counted chunk gives 0 with a zero
gradient. For fixed ``a``, ``ℓ_c`` is minimal at ``b = a``, where it equals the binary
entropy of ``e^a``: it is *not* non-negative-and-zero-at-the-optimum like a KL.

Why ``τ = 100`` matters: a chunk may span many tokens, so ``log P`` is often −50 or
−500. With ``τ = 1``, ``e^a`` and ``e^b`` underflow to 0 (float32 below ≈ −104), the
loss is 0 and its gradient exactly 0 whatever the student does; and even before
underflow, a probability of 1e-20 against 1e-22 gives a negligible binary CE. Dividing
the log-likelihoods by ``τ`` maps them into a range where ``e^a`` and ``e^b`` are
order-one numbers (the ``τ``-th root of the chunk probability), so the loss remains
informative and keeps its minimum at ``log P_S = log P_T``. ``ε`` keeps ``b`` strictly
negative, so ``log(1 − e^b)`` is finite even for a chunk of probability 1.

Scope: this module is the loss only. The alignment, i.e. which tokens form which
chunk (the ``unconstrained`` variant: the minimal chunks at which both cumulative
byte counts agree; ``space``: chunks closed only at whitespace-initial tokens), and
the chunk mask are computed by the datamodule and passed in as boolean matrices.

Numerics: float32 whatever the input dtype (float64 inputs are computed and returned
in float64). ``log(1 − e^b)`` is computed as ``log(−expm1(b))`` for ``b > −log 2``
and ``log1p(−exp(b))`` below (Mächler, "Accurately computing log(1 − exp(−|a|))"):
near 0, ``exp(b)`` rounds to ``1 − |b|`` with a relative error of ``1e-7/|b|`` on
``1 − e^b`` (6% at ``b = −1e-6`` in float32), while ``expm1`` is exact there; for very
negative ``b``, ``−expm1(b)`` rounds to 1 and ``log1p(−exp(b))`` keeps ``−e^b``. Both
branches and their gradients are finite for every ``b < 0``. ``1 − e^a`` is
``−expm1(a)``. Positions that take part in no counted chunk (label -100, or in no
counted chunk) have their logits replaced by zeros before the log-softmax: their
content (NaN, inf) reaches neither the value nor the gradient, which is exactly 0
there. A label whose logit is ``-inf`` gets a log-probability floored at ``-1e30``
(finite, probability 0, zero gradient); a counted row with all logits ``-inf`` gives NaN.

Gradient: the teacher side is computed under ``torch.no_grad()`` on detached logits,
so no gradient reaches the teacher even when its logits require grad, and no teacher
graph (nor its ``[B, Lt, Vt]`` saved tensors) is kept.

Memory and host syncs: per side, the log-probability of the label is the gathered
label logit minus ``logsumexp`` over the vocabulary; the full ``[B, L, V]`` log-softmax
is never built. One float32 ``[B, L, V]`` tensor exists per side (the masked,
upcast logits, which autograd keeps for the student's ``logsumexp`` backward;
``logsumexp`` itself only allocates a transient of that size). Chunk sums are a
batched matmul with the ``[B, L, C]`` membership. Nothing is copied to the host and
there is no Python loop over samples or chunks; in particular label values are not
range-checked (an out-of-range id fails in ``gather``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError
from lit_distill.sources import for_teacher

__all__ = ["alm", "ALM", "debiased_chunks"]

_IGNORE = -100
# A label logit of -inf gets this finite log-probability (exp is exactly 0; chunk sums of
# up to ~3e8 such tokens stay finite in float32).
_LOGP_FLOOR = -1.0e30
_LOG_HALF = -math.log(2.0)


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 − exp(x))`` for ``x < 0``, accurate near 0 and for very negative ``x``.

    Args:
        x: any shape, every entry < 0 (0 gives ``-inf``).

    Returns:
        Tensor of ``x``'s shape and dtype.
    """
    return torch.where(x > _LOG_HALF, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def binary_ce(log_p: Tensor, log_q: Tensor, tau: float = 100.0, eps: float = 1e-6) -> Tensor:
    """Elementwise ALM binary cross-entropy from chunk log-likelihoods.

    ``a = log_p / τ − ε``, ``b = log_q / τ − ε``, ``−[e^a · b + (1 − e^a) · log(1 − e^b)]``.

    Args:
        log_p: teacher chunk log-likelihoods, any shape, entries ≤ 0.
        log_q: student chunk log-likelihoods, ``log_p``'s shape, entries ≤ 0.
        tau: temperature dividing the log-likelihoods, > 0.
        eps: offset keeping ``a, b < 0``, > 0.

    Returns:
        Tensor of the inputs' shape.
    """
    a = log_p / tau - eps
    b = log_q / tau - eps
    return -(torch.exp(a) * b + (-torch.expm1(a)) * log1mexp(b))


def _check(student_logits: Tensor, teacher_logits: Tensor, student_labels: Tensor,
           teacher_labels: Tensor, student_chunks: Tensor, teacher_chunks: Tensor,
           chunk_mask: Tensor | None, tau: float, eps: float) -> None:
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point() or x.shape[-1] == 0:
            desc = f"dtype {x.dtype} and shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a floating point tensor [B, L, V] with V > 0, got {desc}")
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"batch sizes differ: student_logits {tuple(student_logits.shape)} vs "
                         f"teacher_logits {tuple(teacher_logits.shape)}; the i-th student sample "
                         "must be the i-th teacher sample (the same text in both tokenizations)")
    num_chunks = None
    for side, logits, labels, chunks in (("student", student_logits, student_labels, student_chunks),
                                         ("teacher", teacher_logits, teacher_labels, teacher_chunks)):
        lead = tuple(logits.shape[:2])
        if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32):
            dtype = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"{side}_labels must be an int64 (or int32) tensor of shifted target "
                             f"ids with -100 = ignored, got {dtype}")
        if tuple(labels.shape) != lead:
            raise ValueError(f"{side}_labels shape {tuple(labels.shape)} must equal the logits' "
                             f"[B, L] = {lead} (logits {tuple(logits.shape)}); labels are already "
                             "shifted, one per logit position")
        if not isinstance(chunks, Tensor) or chunks.dtype != torch.bool:
            dtype = chunks.dtype if isinstance(chunks, Tensor) else type(chunks).__name__
            raise ValueError(f"{side}_chunks must be a bool tensor [B, L, C] (True = the target of "
                             f"position t belongs to chunk c), got {dtype}")
        if chunks.dim() != 3 or tuple(chunks.shape[:2]) != lead:
            raise ValueError(f"{side}_chunks shape {tuple(chunks.shape)} must be [B, L, C] with "
                             f"[B, L] = {lead} (logits {tuple(logits.shape)})")
        if num_chunks is not None and chunks.shape[2] != num_chunks:
            raise ValueError(f"student_chunks and teacher_chunks must have the same number of "
                             f"chunks C, got {num_chunks} and {chunks.shape[2]} (shapes "
                             f"{tuple(student_chunks.shape)} and {tuple(teacher_chunks.shape)})")
        num_chunks = chunks.shape[2]
    if chunk_mask is not None:
        if not isinstance(chunk_mask, Tensor) or chunk_mask.dtype != torch.bool:
            dtype = chunk_mask.dtype if isinstance(chunk_mask, Tensor) else type(chunk_mask).__name__
            raise ValueError(f"chunk_mask must be a bool tensor [B, C] (True = chunk counts) or "
                             f"None, got {dtype}")
        expected = (student_logits.shape[0], num_chunks)
        if tuple(chunk_mask.shape) != expected:
            raise ValueError(f"chunk_mask shape {tuple(chunk_mask.shape)} must be [B, C] = "
                             f"{expected}")
    if not (isinstance(tau, (int, float)) and tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r} (the paper uses 100)")
    if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0 (it keeps log(1 − P_S^(1/tau)) "
                         f"finite when a chunk has probability 1), got {eps!r}")


def _token_logp(logits: Tensor, labels: Tensor, used: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, L, V]`` logits -> ``log_softmax(logits)[label]`` ``[B, L]`` in ``dtype``; 0 where
    ``used [B, L]`` is False (those rows are zeroed first: their content cannot leak)."""
    x = torch.where(used.unsqueeze(-1), logits, 0.0).to(dtype)  # the one [B, L, V] copy
    index = torch.where(used, labels, 0).to(torch.int64).unsqueeze(-1)  # [B, L, 1]
    picked = x.gather(-1, index).squeeze(-1)  # [B, L]
    logp = (picked - torch.logsumexp(x, dim=-1)).clamp_min(_LOGP_FLOOR)
    return torch.where(used, logp, 0.0)


def _chunk_logp(token_logp: Tensor, member: Tensor) -> Tensor:
    """``Σ_t token_logp[b, t] · member[b, t, c]``, clipped to ≤ 0: ``[B, L]``, ``[B, L, C]`` -> ``[B, C]``."""
    summed = torch.bmm(token_logp.unsqueeze(1), member.to(token_logp.dtype)).squeeze(1)
    return summed.clamp_max(0.0)


def _space_logp(logits: Tensor, space: Tensor, dtype: torch.dtype) -> Tensor:
    """``log Σ_{v: space[v]} softmax(logits)[v]``: the log-probability that the next token starts a
    word; ``[B, L, V]``, ``[V']`` (``V' ≤ V``; ids past ``V'`` never start one) -> ``[B, L]``."""
    x = logits.to(dtype)
    keep = torch.zeros(x.shape[-1], dtype=torch.bool, device=x.device)
    keep[: min(space.numel(), x.shape[-1])] = space[: x.shape[-1]].to(x.device)
    return (torch.logsumexp(x.masked_fill(~keep, float("-inf")), -1) - torch.logsumexp(x, -1)).clamp_max(0.0)


def _at_chunk_ends(values: Tensor, member: Tensor) -> Tensor:
    """``values [B, L]`` at the position after each chunk's last target ``[B, L, C]`` -> ``[B, C]``.

    With shifted membership, the last position ``t`` of chunk ``c`` predicts its last token;
    position ``t + 1`` reads that token and predicts what follows the chunk.
    """
    positions = torch.arange(member.shape[1], device=member.device).view(1, -1, 1)
    last = torch.where(member, positions, -1).amax(1)  # [B, C], -1 for empty chunks
    after = (last + 1).clamp(0, values.shape[1] - 1)
    return values.gather(1, after)


def debiased_chunks(t_logp: Tensor, s_logp: Tensor, t_space: Tensor, s_space: Tensor, counted: Tensor,
                    threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """tokenkit's ``merge_by_space_prob+append_space``: chunks merged until the teacher expects a
    new word, and each merged chunk's likelihood times the probability that a word starts after it.

    A counted chunk after which the teacher's probability of a word-initial token exceeds
    ``threshold`` closes a group; a group's log-likelihood is the sum of its chunks' and, on each
    side, that side's log-probability of a word start after the group's last chunk is added
    (``P(chunk, then a word boundary)``, the same event in both tokenizations).

    Args:
        t_logp, s_logp: ``[B, C]`` chunk log-likelihoods (teacher, student).
        t_space, s_space: ``[B, C]`` log-probability of a word start after each chunk.
        counted: ``[B, C]`` bool.
        threshold: the teacher's word-start probability that closes a group (tokenkit: 0.1).

    Returns:
        ``(t_logp, s_logp, counted)`` of the merged groups, ``[B, C]`` each (group ``g`` in
        column ``g``; columns past the last group are not counted).
    """
    closes = counted & (t_space.exp() > threshold)
    group = torch.cumsum(closes.long(), -1) - closes.long()  # closing chunks belonging to earlier groups
    merge = counted.unsqueeze(-1) & (group.unsqueeze(-1) == torch.arange(counted.shape[1], device=counted.device))
    merged = merge.any(1)  # [B, G]
    chunk_index = torch.arange(counted.shape[1], device=counted.device).view(1, -1, 1)
    last = torch.where(merge, chunk_index, 0).amax(1)  # [B, G] last chunk of each group
    weights = merge.to(t_logp.dtype)

    def combine(logp: Tensor, space: Tensor) -> Tensor:
        summed = torch.bmm(logp.unsqueeze(1), weights).squeeze(1)
        return torch.where(merged, (summed + space.gather(1, last)).clamp_max(0.0), 0.0)

    return combine(t_logp, t_space), combine(s_logp, s_space), merged


def alm(student_logits: Tensor, teacher_logits: Tensor, student_labels: Tensor,
        teacher_labels: Tensor, student_chunks: Tensor, teacher_chunks: Tensor,
        chunk_mask: Tensor | None = None, tau: float = 100.0, eps: float = 1e-6,
        student_space_mask: Tensor | None = None, teacher_space_mask: Tensor | None = None,
        debias: bool = False, space_threshold: float = 0.1) -> Tensor:
    """ALM loss: binary cross-entropy between teacher and student chunk likelihoods.

    See the module docstring for the definition and numerics.

    Args:
        student_logits: ``[B, Ls, Vs]``.
        teacher_logits: ``[B, Lt, Vt]`` (``Vt`` may differ from ``Vs``). Receives no
            gradient (computed under ``no_grad`` on detached logits).
        student_labels: ``[B, Ls]`` int64, already shifted, ``-100`` = ignored.
        teacher_labels: ``[B, Lt]`` int64, already shifted, ``-100`` = ignored.
        student_chunks: ``[B, Ls, C]`` bool, True when the target of position ``t`` belongs
            to chunk ``c``.
        teacher_chunks: ``[B, Lt, C]`` bool, same convention.
        chunk_mask: ``[B, C]`` bool, True where a chunk counts (e.g. False for padding
            chunks). A chunk counts where this is True (or everywhere when None) *and* it
            has at least one token with a label other than -100 on each side; a token
            whose label is -100 contributes nothing even if its chunk flag is set.
        tau: temperature dividing the chunk log-likelihoods (the paper's default 100).
        eps: subtracted after the division, > 0; keeps ``log(1 − e^b)`` finite.
        student_space_mask: ``[Vs']`` bool, True for the student's word-initial (and special)
            token ids (``batch.student_space_mask``); needed with ``debias``.
        teacher_space_mask: ``[Vt']`` bool, the same for the teacher.
        debias: tokenkit's ``merge_by_space_prob+append_space`` (:func:`debiased_chunks`):
            chunks merged until the teacher expects a new word, and each chunk's likelihood
            includes the probability that a word starts after it, so the two tokenizations'
            boundary biases cancel.
        space_threshold: the teacher's word-start probability that closes a merged chunk.

    Returns:
        0-dim tensor, float32 (float64 for float64 logits): the mean of the per-chunk
        binary CE over the counted chunks (with ``debias``, the merged chunks) of the batch;
        0 (zero gradient) when none counts.

    Raises:
        ValueError: logits not floating ``[B, L, V]``, batch sizes differ, labels not
            integer ``[B, L]``, chunks not bool ``[B, L, C]`` or with different ``C`` per
            side, chunk_mask not bool ``[B, C]``, ``tau`` or ``eps`` not finite and > 0.
    """
    _check(student_logits, teacher_logits, student_labels, teacher_labels, student_chunks,
           teacher_chunks, chunk_mask, tau, eps)
    tau, eps = float(tau), float(eps)
    wide = torch.float64 in (student_logits.dtype, teacher_logits.dtype)
    dtype = torch.float64 if wide else torch.float32

    # Membership restricted to tokens that count: [B, L, C] each.
    s_member = student_chunks & (student_labels != _IGNORE).unsqueeze(-1)
    t_member = teacher_chunks & (teacher_labels != _IGNORE).unsqueeze(-1)
    counted = s_member.any(1) & t_member.any(1)  # [B, C]
    if chunk_mask is not None:
        counted = counted & chunk_mask
    s_member = s_member & counted.unsqueeze(1)
    t_member = t_member & counted.unsqueeze(1)

    with torch.no_grad():
        t_logp = _chunk_logp(_token_logp(teacher_logits.detach(), teacher_labels,
                                         t_member.any(-1), dtype), t_member)
    s_logp = _chunk_logp(_token_logp(student_logits, student_labels, s_member.any(-1), dtype),
                         s_member)
    if debias:
        if student_space_mask is None or teacher_space_mask is None:
            raise ValueError("debias needs student_space_mask and teacher_space_mask (bool [V], True for "
                             "word-initial and special token ids; datamodules.CrossTokenizerDataModule puts "
                             "them in every batch)")
        with torch.no_grad():
            t_space = _at_chunk_ends(_space_logp(teacher_logits.detach(), teacher_space_mask, dtype), t_member)
        s_space = _at_chunk_ends(_space_logp(student_logits, student_space_mask, dtype), s_member)
        t_logp, s_logp, counted = debiased_chunks(t_logp, s_logp, t_space, s_space, counted, space_threshold)

    per_chunk = binary_ce(t_logp, s_logp, tau, eps)  # [B, C]
    total = torch.where(counted, per_chunk, 0.0).sum()
    return total / counted.sum().clamp_min(1).to(dtype)


class ALM(LossTerm):
    """ALM cross-tokenizer distillation (approximate likelihood matching, Minixhofer et al.).

    Binary cross-entropy between the teacher's and the student's likelihoods of aligned
    text chunks (their log-likelihoods divided by ``tau``), mean over counted chunks.
    The chunk alignment (e.g. the "unconstrained" or "space" variants) comes from the
    datamodule as ``batch.alm_student_chunks`` / ``batch.alm_teacher_chunks`` (bool
    ``[B, L, C]``) and the optional ``batch.alm_chunk_mask`` (bool ``[B, C]``); the
    teacher's labels come from ``batch.teacher_labels``. See :func:`alm`.

    Args:
        tau: temperature dividing the chunk log-likelihoods; keep the paper's 100: with
            small values the probabilities of long chunks underflow and the loss has no
            gradient.
        eps: small positive offset subtracted after the division (keeps the log of one
            minus the student's scaled chunk probability finite).
        weight: multiplier of this term in the total loss.
        debias: tokenkit's recommended ``merge_by_space_prob+append_space`` mode (see
            :func:`debiased_chunks`); reads ``batch.student_space_mask`` /
            ``batch.teacher_space_mask``. Off: the paper's unconstrained chunks.
        space_threshold: with ``debias``, the teacher's word-start probability that closes a
            merged chunk (tokenkit's ``tokenizer_pair_bias_threshold``, 0.1).
        teacher: with several teachers of their own tokenizers (a ``MultiModel`` teacher and
            ``CrossTokenizerDataModule(teacher_tokenizer={name: ...})``), the one this term reads:
            its logits, labels and chunks in ``batch.teachers.<name>``
            (:func:`lit_distill.sources.for_teacher`). One ALM term per teacher distils from all.
        sources: overrides of where the logits, labels, chunks and chunk mask come from.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "student_logits": "student.logits",
        "teacher_logits": "teacher.logits",
        "student_labels": "batch.labels",
        "teacher_labels": "batch.teacher_labels",
        "student_chunks": "batch.alm_student_chunks",
        "teacher_chunks": "batch.alm_teacher_chunks",
        "chunk_mask": "batch.alm_chunk_mask",
        "student_space_mask": "batch.student_space_mask",
        "teacher_space_mask": "batch.teacher_space_mask",
    }

    def __init__(self, tau: float = 100.0, eps: float = 1e-6, weight: float = 1.0, debias: bool = False,
                 space_threshold: float = 0.1, teacher: str | None = None, sources: dict[str, str] | None = None) -> None:
        if teacher is not None:
            sources = {**for_teacher(dict(self.default_sources), teacher), **(sources or {})}
        super().__init__(weight, sources)
        self.teacher = teacher
        if not (tau > 0 and math.isfinite(tau)):
            raise ConfigError(f"ALM.tau must be a finite number > 0, got {tau!r}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ConfigError(f"ALM.eps must be a finite number > 0, got {eps!r}")
        if not 0 < space_threshold < 1:
            raise ConfigError(f"ALM.space_threshold must be in (0, 1), got {space_threshold!r}")
        self.tau = float(tau)
        self.eps = float(eps)
        self.debias, self.space_threshold = bool(debias), float(space_threshold)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, student_labels: Tensor,
                teacher_labels: Tensor, student_chunks: Tensor, teacher_chunks: Tensor,
                chunk_mask: Tensor | None = None, student_space_mask: Tensor | None = None,
                teacher_space_mask: Tensor | None = None) -> Tensor:
        """Shapes as :func:`alm`. Returns a 0-dim float32 tensor."""
        return alm(student_logits, teacher_logits, student_labels, teacher_labels, student_chunks,
                   teacher_chunks, chunk_mask, tau=self.tau, eps=self.eps, student_space_mask=student_space_mask,
                   teacher_space_mask=teacher_space_mask, debias=self.debias, space_threshold=self.space_threshold)
