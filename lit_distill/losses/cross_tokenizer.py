"""Cross-tokenizer distillation losses (functional API): Universal Logit Distillation.

ULD is from "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation
Loss for LLMs" (Boizard et al., TMLR 2025). A student and a teacher with different
tokenizers have different vocabularies, so their next-token distributions cannot be
compared entry by entry. ULD compares them as *sorted* probability vectors instead,
which needs no mapping between the two vocabularies.

Definition. For sample ``b``, let ``s_1 < s_2 < …`` be the student positions where
``student_mask[b]`` is True and ``t_1 < t_2 < …`` the teacher's. The i-th student
position is paired with the i-th teacher position for ``i < n_b = min(#s, #t)``
(index alignment). For a pair, with temperature ``T``,

- ``q = softmax(student_logits[b, s_i] / T)`` over the student vocabulary (``Vs``),
- ``p = softmax(teacher_logits[b, t_i] / T)`` over the teacher vocabulary (``Vt``),
- ``q↓``, ``p↓``: each sorted in descending order, the shorter zero-padded to
  ``max(Vs, Vt)`` entries,
- ``D = Σ_k |q↓_k − p↓_k|`` (the Wasserstein-1 distance with uniform cost between the
  sorted distributions; it lies in [0, 2]).

``d_b`` is the mean of ``D`` over the ``n_b`` pairs of sample ``b`` and ULD is the mean
of ``d_b`` over the samples with ``n_b > 0`` (a per-sample mean, then a batch mean, as
in the paper: not a mean over all pairs of the batch). No pair in the batch gives 0
with a zero gradient.

Temperature: both logits are divided by ``T``; the result is **not** multiplied by
``T**2``. The ``T²`` of the KL losses compensates the ``1/T²`` scaling of their
gradients at large ``T``; ULD is an L1 distance between probability vectors, not a KL,
stays within [0, 2] at every ``T``, and the paper (and its reference code) uses
``T = 1`` with no rescaling. Multiply by ``T**2`` yourself if you want that convention.

Scope: this module is the functional loss only. Which positions are True in the masks
(e.g. the logit positions that predict answer tokens, with or without the student's
trailing EOS) is the data alignment, and is the datamodule's job.

Numerics: float32 whatever the input dtype (float64 inputs are computed and returned
in float64, e.g. for gradcheck). Logits at positions that take part in no pair (masked
out, or True but unpaired) are replaced by zeros before the softmax: their content
(NaN, inf) reaches neither the value nor the gradient, which is exactly 0 there.
``-inf`` logits (masked vocabulary entries) get probability 0 and no NaN; a paired row
whose logits are all ``-inf`` gives NaN. The inputs are never written to.

Cost and host syncs: the pairing is computed on device from the masks (a stable
argsort of each mask puts the True positions first, in order), so nothing is copied
to the host; the price of that static-shape formulation is that ``B · min(Ls, Lt)``
rows per side are softmaxed and sorted (unpaired slots are computed and then zeroed),
whatever the number of pairs. Crop the logits to the answer window first when the
prompts are much longer than the answers. The exact path sorts whole vocabularies
(``O(V log V)`` per row, plus the sort's int64 indices kept for backward; on the CPU with
numpy's vectorised sort over row blocks in ``torch.get_num_threads()`` threads); the
``top_k`` path only needs a top-k and a logsumexp per row (see :func:`uld`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError
from lit_distill.sources import for_teacher

__all__ = ["ULD", "uld"]


def _check(student_logits: Tensor, teacher_logits: Tensor, student_mask: Tensor,
           teacher_mask: Tensor, temperature: float, top_k: int | None) -> None:
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if x.dim() != 3 or not x.is_floating_point() or x.shape[-1] == 0:
            raise ValueError(f"{name} must be a floating point tensor [B, L, V] with V > 0, got "
                             f"dtype {x.dtype} and shape {tuple(x.shape)}")
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"batch sizes differ: student_logits {tuple(student_logits.shape)} vs "
                         f"teacher_logits {tuple(teacher_logits.shape)}; the i-th student sample "
                         "must be the i-th teacher sample (the same example in both tokenizations)")
    for name, mask, logits in (("student_mask", student_mask, student_logits),
                               ("teacher_mask", teacher_mask, teacher_logits)):
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            dtype = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"{name} must be a bool tensor (True = logit position to compare), "
                             f"got {dtype}; e.g. pass labels != -100")
        if tuple(mask.shape) != tuple(logits.shape[:2]):
            raise ValueError(f"{name} shape {tuple(mask.shape)} must equal the logits' [B, L] = "
                             f"{tuple(logits.shape[:2])} (logits {tuple(logits.shape)})")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None (exact), got {top_k!r}")


def _pairing(student_mask: Tensor, teacher_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Index alignment of the True positions, on device.

    Args:
        student_mask: bool ``[B, Ls]``.
        teacher_mask: bool ``[B, Lt]``.

    Returns:
        ``(pos_s, pos_t, valid, n)``: ``pos_s [B, P]`` and ``pos_t [B, P]`` (int64,
        ``P = min(Ls, Lt)``) hold in slot ``i`` the position of the i-th True entry of
        each mask (slots past a mask's count hold its False positions, unused);
        ``valid [B, P]`` is True for the ``i < n_b`` slots that form a pair and
        ``n [B]`` (int64) is ``n_b = min(count_s, count_t)``.
    """
    num = min(student_mask.shape[1], teacher_mask.shape[1])
    # A stable sort of ~mask puts the True positions first, in increasing position order:
    # slot i of the result is the i-th True position. No host sync, no duplicate indices.
    pos_s = torch.argsort((~student_mask).to(torch.uint8), dim=1, stable=True)[:, :num]
    pos_t = torch.argsort((~teacher_mask).to(torch.uint8), dim=1, stable=True)[:, :num]
    n = torch.minimum(student_mask.sum(1), teacher_mask.sum(1))  # [B]
    slots = torch.arange(num, device=student_mask.device)
    valid = slots.unsqueeze(0) < n.unsqueeze(1)  # [B, P]
    return pos_s, pos_t, valid, n


def _paired_rows(logits: Tensor, pos: Tensor, valid: Tensor, temperature: float,
                 dtype: torch.dtype) -> Tensor:
    """``logits [B, L, V]`` -> the rows at ``pos [B, P]`` in ``dtype``, shifted to a max of
    0, divided by ``T``: ``[B, P, V]``.

    Rows of invalid slots are replaced by zeros with ``torch.where`` (their content
    reaches neither value nor gradient). ``gather`` with an expanded (stride-0) index:
    no host sync, no copy of the whole input even when it is a non-contiguous slice,
    and a backward that is deterministic on CUDA under
    ``torch.use_deterministic_algorithms``. The shift (by the detached row max) changes
    no softmax but keeps a row's ``logsumexp`` in [0, log V], so that the top-k path's
    ``exp(x − logsumexp(x))`` does not lose the low bits of a large log-normaliser
    (float32 logits of magnitude 50 would otherwise give top-k probabilities, and
    tails, off by ~4e-6).
    """
    index = pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    rows = logits.gather(1, index).to(dtype)  # [B, P, V], a new tensor
    rows = torch.where(valid.unsqueeze(-1), rows - rows.detach().amax(-1, keepdim=True), 0.0)
    return rows / temperature if temperature != 1.0 else rows


def _sorted_l1(a: Tensor, b: Tensor) -> Tensor:
    """``Σ_k |a_k − b_k|`` for descending non-negative ``a [..., Va]``, ``b [..., Vb]``,
    the shorter one zero-padded: the common head plus the longer one's tail (no padding
    is materialised) -> ``[...]``."""
    m = min(a.shape[-1], b.shape[-1])
    head = (a[..., :m] - b[..., :m]).abs().sum(-1)
    longer = a if a.shape[-1] > m else b
    return head + longer[..., m:].sum(-1) if longer.shape[-1] > m else head


def _in_row_blocks(work: Callable[[int, int], None], rows: int) -> None:
    """Run ``work(start, stop)`` over contiguous row blocks in ``torch.get_num_threads()`` threads.

    numpy's sort releases the GIL, so the blocks sort in parallel, as ``torch.sort`` would.
    """
    threads = max(1, min(torch.get_num_threads(), rows))
    bounds = np.linspace(0, rows, threads + 1).astype(int)
    if threads == 1:
        work(0, rows)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, bounds[:-1], bounds[1:]))


def _descending_order(rows: np.ndarray, out: np.ndarray) -> None:
    """Write the descending order of each row of non-negative ``rows [n, V]`` into int64 ``out``.

    float32 rows sort one int64 key per entry, the value's bits (monotonic for non-negative
    floats) above the column index, which is ~20 % faster than ``argsort`` and breaks ties by
    index; float64 rows use ``argsort``.
    """
    if rows.dtype != np.float32:
        out[:] = np.argsort(-rows, axis=-1)
        return
    np.copyto(out, rows.view(np.int32))
    np.subtract(np.int64(0x7FFFFFFF), out, out=out)  # descending values = ascending keys
    np.left_shift(out, np.int64(32), out=out)
    np.bitwise_or(out, np.arange(rows.shape[-1], dtype=np.int64), out=out)
    out.sort(axis=-1)
    np.bitwise_and(out, np.int64(0xFFFFFFFF), out=out)


def _sort_descending(probs: Tensor) -> Tensor:
    """``probs [..., V]`` (non-negative) sorted in descending order along the last dimension,
    differentiable.

    On the CPU the order comes from numpy's vectorised (AVX-512 / AVX2) sort, run over row
    blocks in ``torch.get_num_threads()`` threads; the values are then gathered through
    autograd, so the gradient is the same scatter as ``torch.sort``'s. Elsewhere, ``torch.sort``.
    """
    if probs.device.type != "cpu" or probs.dtype not in (torch.float32, torch.float64):
        return probs.sort(dim=-1, descending=True).values
    rows = probs.detach().reshape(-1, probs.shape[-1]).contiguous().numpy()
    if not probs.requires_grad:
        values = np.empty_like(rows)

        def sort_values(start: int, stop: int) -> None:
            block = values[start:stop]
            np.negative(rows[start:stop], out=block)
            block.sort(axis=-1)
            np.negative(block, out=block)

        _in_row_blocks(sort_values, rows.shape[0])
        return torch.from_numpy(values).reshape(probs.shape)
    order = np.empty(rows.shape, dtype=np.int64)
    _in_row_blocks(lambda start, stop: _descending_order(rows[start:stop], order[start:stop]), rows.shape[0])
    return probs.gather(-1, torch.from_numpy(order).reshape(probs.shape))


def _exact_distance(xs: Tensor, xt: Tensor) -> Tensor:
    """Exact ULD per row from scaled logits ``xs [..., Vs]``, ``xt [..., Vt]`` -> ``[...]``."""
    q = _sort_descending(torch.softmax(xs, dim=-1))
    p = _sort_descending(torch.softmax(xt, dim=-1))
    return _sorted_l1(q, p)


def _top_probs(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` probabilities of ``softmax(x)`` (descending) and the tail mass beyond them.

    Args:
        x: ``[..., V]`` scaled logits.
        k: entries kept; ``min(k, V)`` are returned.

    Returns:
        ``(top [..., min(k, V)], tail [...])`` with ``tail = max(1 − Σ top, 0)``, exactly
        0 when ``k >= V``. The full softmax is never materialised:
        ``top = exp(topk(x) − logsumexp(x))``; gradients flow through both terms.
    """
    vocab = x.shape[-1]
    kk = min(k, vocab)
    top = (x.topk(kk, dim=-1, sorted=True).values - torch.logsumexp(x, -1, keepdim=True)).exp()
    if kk == vocab:
        return top, torch.zeros_like(top[..., 0])
    return top, (1.0 - top.sum(-1)).clamp_min(0.0)


def _topk_distance(xs: Tensor, xt: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k ULD per row: the exact L1 over the (zero-padded) top-k lists plus
    ``|tail_q − tail_p|`` -> ``(distance, tail_q, tail_p)``, each ``[...]``."""
    q, tail_q = _top_probs(xs, k)
    p, tail_p = _top_probs(xt, k)
    return _sorted_l1(q, p) + (tail_q - tail_p).abs(), tail_q, tail_p


def _reduce_pairs(per_pair: Tensor, valid: Tensor, n: Tensor) -> Tensor:
    """Per-sample mean over the valid pairs, then mean over samples with a pair.

    Args:
        per_pair: ``[B, P]`` per-pair values (any value in invalid slots).
        valid: bool ``[B, P]``.
        n: ``[B]`` number of valid slots per sample.

    Returns:
        0-dim tensor; 0 (with a zero gradient) when no sample has a pair.
    """
    per_pair = torch.where(valid, per_pair, 0.0)
    per_sample = per_pair.sum(1) / n.clamp_min(1).to(per_pair.dtype)  # [B]
    has = n > 0
    return torch.where(has, per_sample, 0.0).sum() / has.sum().clamp_min(1).to(per_pair.dtype)


def uld(student_logits: Tensor, teacher_logits: Tensor, student_mask: Tensor,
        teacher_mask: Tensor, temperature: float = 1.0, top_k: int | None = None) -> Tensor:
    """Universal Logit Distillation loss between models with different vocabularies.

    Per pair of positions (the i-th True student position with the i-th True teacher
    position of the same sample), ``D = Σ_k |q↓_k − p↓_k|``: the L1 distance between
    the student's and the teacher's probability vectors sorted in descending order,
    the shorter zero-padded. Mean over the pairs of each sample, then over the samples
    that have at least one pair. See the module docstring for the full definition.

    ``top_k`` fast path. Per side, keep the ``k`` largest probabilities (sorted) and the
    tail mass ``τ = 1 − Σ top-k`` (``τ_q`` student, ``τ_p`` teacher), and return
    ``D_k = Σ_{j<k} |q↓_j − p↓_j| + |τ_q − τ_p|`` (the shorter top list zero-padded when
    ``k`` exceeds a vocabulary): exact over the top-k, the tails compared by mass only.

    Error bound, per pair: with ``a``, ``b`` the (zero-padded) tails of ``q↓``, ``p↓``
    beyond index ``k``, ``D − D_k = Σ_j |a_j − b_j| − |Σa − Σb|``;
    since ``|x − y| = x + y − 2·min(x, y)`` for ``x, y ≥ 0``, this is
    ``D − D_k = 2·(min(τ_q, τ_p) − Σ_j min(a_j, b_j))``, hence

        ``0 ≤ D − D_k ≤ 2·min(τ_q, τ_p)``

    (``D_k`` never overestimates; the upper bound is approached when one tail is spread
    over many more entries than the other). The loss is a convex combination of the
    ``D``'s, so the same holds for it with the bound averaged the same way. In practice
    allow for the rounding of ``τ`` (up to ~1e-6 in float32). When ``k ≥ min(Vs, Vt)``
    a tail is 0 and ``D_k = D``. The top-k probabilities are ``exp(topk(x) −
    logsumexp(x))`` (no full softmax is materialised); gradients flow through the top-k
    values and the tails (each tail depends on every logit through the logsumexp). Cost
    per row: one ``topk`` and one ``logsumexp`` instead of a softmax and a full sort.

    Args:
        student_logits: ``[B, Ls, Vs]`` student logits, any float dtype (gradients flow here).
        teacher_logits: ``[B, Lt, Vt]`` teacher logits; ``Vt`` may differ from ``Vs`` either
            way (gradients flow here too if it requires grad).
        student_mask: bool ``[B, Ls]``, True at the student logit positions to compare.
        teacher_mask: bool ``[B, Lt]``, True at the teacher logit positions to compare.
            Sample ``b`` has ``n_b = min(count_s[b], count_t[b])`` pairs; the extra True
            positions of the side with more are ignored.
        temperature: divides both logits before the softmax; the result is **not**
            multiplied by ``temperature**2`` (ULD is not a KL; the paper uses 1).
        top_k: None for the exact loss; an int ``k >= 1`` for the top-k fast path above.

    Returns:
        0-dim tensor, float32 (float64 for float64 inputs), in [0, 2]: the per-sample mean
        of the per-pair distances averaged over the samples with ``n_b > 0``; 0 with a
        zero gradient when no sample has a pair.

    Raises:
        ValueError: logits not floating point ``[B, L, V]`` with ``V > 0``; batch sizes
            differ; a mask is not a bool ``[B, L]`` tensor matching its logits;
            temperature is not a finite number > 0; top_k is not None or an int >= 1.
    """
    temperature = float(temperature)
    _check(student_logits, teacher_logits, student_mask, teacher_mask, temperature, top_k)
    wide = torch.float64 in (student_logits.dtype, teacher_logits.dtype)
    dtype = torch.float64 if wide else torch.float32
    pos_s, pos_t, valid, n = _pairing(student_mask, teacher_mask)
    xs = _paired_rows(student_logits, pos_s, valid, temperature, dtype)  # [B, P, Vs]
    xt = _paired_rows(teacher_logits, pos_t, valid, temperature, dtype)  # [B, P, Vt]
    if top_k is None:
        per_pair = _exact_distance(xs, xt)
    else:
        per_pair = _topk_distance(xs, xt, top_k)[0]
    return _reduce_pairs(per_pair, valid, n)


def without_last_position(mask: Tensor) -> Tensor:
    """``mask`` ``[B, L]`` (bool) with each row's last True position set to False."""
    last = mask & (mask.cumsum(-1) == mask.sum(-1, keepdim=True))
    return mask & ~last


class ULD(LossTerm):
    """ULD as a loss term: L1 between sorted teacher and student distributions, paired by index.

    The paper's objective is ``CE(student) + λ·ULD`` with λ = 1.5: configure it as
    two terms, ``ce: CrossEntropy`` (weight 1) and ``uld: ULD`` (weight 1.5, the
    default here). Two alignments of the tokenizations (batches from
    ``datamodules.CrossTokenizerDataModule`` carry the masks for both):

    - ``index`` (the paper's): the i-th answer position of the student
      (``batch.loss_mask``) is paired with the i-th answer position of the teacher
      (``batch.teacher_loss_mask``), whatever text they cover. Simple, but once the
      two tokenizations drift apart the pairs predict different text.
    - ``bytes``: text is cut into the smallest chunks that both tokenizations split
      at the same byte; the positions that predict the first token of each chunk
      (``batch.*_chunk_start_mask``) are paired. Both models have then read exactly
      the same text, so each pair compares predictions from the same context.

    Args:
        alignment: ``index`` or ``bytes`` (sets the default mask sources).
        temperature: divides both sides' logits (the paper uses 1; no T² factor).
        top_k: None for the exact loss; an int for the fast path from each side's
            top-k probabilities plus tail mass (it never overestimates; the error is
            at most 2·min(tail masses) per pair).
        skip_student_eos: leave out each student sequence's last answer position (the one
            that predicts its EOS) before pairing, as the authors' ``skip_student_eos`` does:
            with ``index`` alignment the student's EOS would otherwise be paired with a
            teacher position that predicts something else.
        weight: λ, the multiplier of this term in the total loss.
        teacher: with several teachers of their own tokenizers (a ``MultiModel`` teacher and
            ``CrossTokenizerDataModule(teacher_tokenizer={name: ...})``), the one this term reads:
            its logits and its masks in ``batch.teachers.<name>`` (:func:`lit_distill.sources.for_teacher`).
            One ULD term per teacher distils from all of them.
        sources: overrides of where logits and masks come from.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "student_logits": "student.logits", "teacher_logits": "teacher.logits",
        "student_mask": "batch.loss_mask", "teacher_mask": "batch.teacher_loss_mask"}

    def __init__(self, alignment: Literal["index", "bytes"] = "index", temperature: float = 1.0,
                 top_k: int | None = None, skip_student_eos: bool = False, weight: float = 1.5,
                 teacher: str | None = None, sources: dict[str, str] | None = None) -> None:
        base = dict(self.default_sources)
        if alignment == "bytes":
            base.update(student_mask="batch.student_chunk_start_mask", teacher_mask="batch.teacher_chunk_start_mask")
        elif alignment != "index":
            raise ConfigError(f"ULD.alignment: '{alignment}' is not 'index' or 'bytes'")
        if teacher is not None:
            base = for_teacher(base, teacher)
        super().__init__(weight, {**base, **(sources or {})})
        self.teacher = teacher
        self.alignment = alignment
        if temperature <= 0 or (top_k is not None and top_k < 1):
            raise ConfigError(f"ULD: need temperature > 0 and top_k >= 1 or null, got "
                              f"temperature={temperature}, top_k={top_k}")
        self.temperature = temperature
        self.top_k = top_k
        self.skip_student_eos = bool(skip_student_eos)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, student_mask: Tensor,
                teacher_mask: Tensor) -> Tensor:
        if self.skip_student_eos:
            student_mask = without_last_position(student_mask)
        return uld(student_logits, teacher_logits, student_mask, teacher_mask, self.temperature, self.top_k)
