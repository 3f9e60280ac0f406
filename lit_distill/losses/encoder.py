"""Encoder (BERT-family) distillation losses: TinyBERT's hidden states, attention maps, MiniLM's
self-attention relations, and sentence embeddings.

Functional forms (tensors only) and their YAML terms. Shapes: hidden states ``[B, L, D]``,
attention maps ``[B, H, L, L]`` (rows = queries, each row a distribution over keys), token mask
``[B, L]`` (True / 1 = a real token), embeddings ``[B, D]``.

- :func:`layer_map`: which teacher layer each student layer learns from (``uniform``: student
  layer m ↔ teacher layer m·N/M, embeddings 0 ↔ 0, as TinyBERT; ``last``: M ↔ N; or explicit).
- :func:`hidden_mse`: TinyBERT's Σ over mapped layers of MSE(W·h_s^m, h_t^{g(m)}), one shared
  projection W, mean over all elements (padded positions included, as the reference).
- :func:`attention_kl` / :func:`attention_mse`: KL(A_t ‖ A_s) per head and query row (MiniLM's
  L_AT), mean over heads × real query rows, padded keys ignored; or the element MSE.
- :func:`relation_kl`: MiniLM(v2) self-attention relations: X (queries, keys or values of one
  layer, ``[B, L, D]``) re-split into ``heads`` relation heads of width d_r = D/heads,
  R = softmax(X_a X_aᵀ/√d_r) over real keys, KL(R_t ‖ R_s) summed over keys, averaged over
  relation heads and real query rows of each example, then over the batch. The two sides may have
  different widths and head counts; only the number of relation heads must match.
- :func:`embedding_distance`: 1 − cos(e_s, e_t) or MSE, mean over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError
from lit_distill.losses.feature import make_projector, to_teacher_width


def layer_map(student_layers: int, teacher_layers: int, mode: Literal["uniform", "last"] | Sequence[Sequence[int]],
              include_embeddings: bool = True) -> list[tuple[int, int]]:
    """Pairs ``(student index, teacher index)`` into hidden-state tuples of ``M + 1`` and ``N + 1`` entries.

    Args:
        student_layers: M, the student's transformer layers (its hidden-state tuple has M + 1).
        teacher_layers: N, the teacher's.
        mode: ``uniform`` (m ↔ m·N/M for m = 1..M; N must be a multiple of M), ``last`` (M ↔ N), or
            explicit ``[[m, n], ...]`` pairs.
        include_embeddings: with ``uniform``, also pair the embedding outputs (0 ↔ 0), as TinyBERT.

    Raises:
        ConfigError: N is not a multiple of M for ``uniform``, or a pair is out of range.
    """
    if mode == "uniform":
        if teacher_layers % student_layers:
            raise ConfigError(f"layer_map: uniform needs the teacher's layers ({teacher_layers}) to be a multiple "
                              f"of the student's ({student_layers}); give explicit pairs instead")
        step = teacher_layers // student_layers
        pairs = [(m, m * step) for m in range(0 if include_embeddings else 1, student_layers + 1)]
    elif mode == "last":
        pairs = [(student_layers, teacher_layers)]
    else:
        pairs = [(int(m), int(n)) for m, n in mode]
    bad = [(m, n) for m, n in pairs if not (0 <= m <= student_layers and 0 <= n <= teacher_layers)]
    if bad:
        raise ConfigError(f"layer_map: pairs {bad} are out of range for {student_layers} student and "
                          f"{teacher_layers} teacher layers (index 0 is the embedding output)")
    return pairs


def hidden_mse(student_hidden: Sequence[Tensor], teacher_hidden: Sequence[Tensor], pairs: Sequence[tuple[int, int]],
               projector: torch.nn.Module | None = None) -> Tensor:
    """Σ over ``pairs`` of MSE(projector(h_s^m), h_t^n), each a mean over ``[B, L, D_t]`` elements."""
    total = torch.zeros((), device=student_hidden[0].device)
    for m, n in pairs:
        student = student_hidden[m].float()
        if projector is not None:
            student = projector(student)
        total = total + F.mse_loss(student, teacher_hidden[n].float())
    return total


def _query_rows(mask: Tensor | None, shape: torch.Size, device: torch.device) -> Tensor:
    """``[B, L]`` float weights of the real query rows (all ones without a mask)."""
    if mask is None:
        return torch.ones(shape[0], shape[-1], device=device)
    return mask.to(device=device, dtype=torch.float32)


def attention_kl(student_attention: Tensor, teacher_attention: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over heads and real query rows of KL(A_t ‖ A_s) over the real keys.

    Args:
        student_attention: ``[B, H, L, L]`` attention probabilities (rows sum to 1 over keys).
        teacher_attention: ``[B, H, L, L]``, the same number of heads.
        mask: ``[B, L]`` real tokens; padded keys carry no probability on either side.
    """
    if student_attention.shape != teacher_attention.shape:
        raise ConfigError(f"attention_kl: student maps {tuple(student_attention.shape)} and teacher maps "
                          f"{tuple(teacher_attention.shape)} differ; map layers with equal head counts "
                          "(or use relation_kl, which needs no head match)")
    p, q = teacher_attention.float(), student_attention.float()
    per_row = torch.xlogy(p, p).sum(-1) - (p * q.clamp_min(1e-30).log()).sum(-1)  # [B, H, L]
    rows = _query_rows(mask, student_attention.shape, student_attention.device)[:, None, :]
    return (per_row * rows).sum() / (rows.sum() * per_row.shape[1]).clamp_min(1)


def attention_mse(student_attention: Tensor, teacher_attention: Tensor, mask: Tensor | None = None) -> Tensor:
    """Element MSE of two ``[B, H, L, L]`` attention maps over real query rows and keys."""
    rows = _query_rows(mask, student_attention.shape, student_attention.device)
    weight = rows[:, None, :, None] * rows[:, None, None, :]
    diff = (student_attention.float() - teacher_attention.float()).pow(2) * weight
    return diff.sum() / (weight.sum() * student_attention.shape[1]).clamp_min(1)


def _relations(x: Tensor, heads: int, key_mask: Tensor | None) -> Tensor:
    """Log of softmax(X_a X_aᵀ/√d_r) over real keys, ``[B, heads, L, L]``."""
    b, length, width = x.shape
    if width % heads:
        raise ConfigError(f"relation_kl: width {width} is not divisible by {heads} relation heads")
    d = width // heads
    xa = x.float().reshape(b, length, heads, d).transpose(1, 2)  # [B, A, L, d]
    scores = xa @ xa.transpose(-1, -2) / math.sqrt(d)
    if key_mask is not None:  # a finite floor: probability exactly 0, and no 0·inf anywhere
        scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], -1.0e30)
    return torch.log_softmax(scores, -1)


def relation_kl(student_states: Tensor, teacher_states: Tensor, heads: int, mask: Tensor | None = None) -> Tensor:
    """MiniLM(v2) relation loss between one kind of vectors (Q, K or V) of a student and a teacher layer.

    Per example: Σ over relation heads a and real query rows t of KL(R^T_{a,t} ‖ R^S_{a,t}),
    divided by heads × real rows; then the mean over the batch.

    Args:
        student_states: ``[B, L, D_s]``.
        teacher_states: ``[B, L, D_t]``; D_s and D_t must both be divisible by ``heads``.
        heads: relation heads A_r (the same on both sides).
        mask: ``[B, L]`` real tokens (padded keys and query rows are left out).
    """
    log_t = _relations(teacher_states, heads, mask)
    log_s = _relations(student_states, heads, mask)
    p = log_t.exp()
    per_row = (p * (log_t - log_s)).sum(-1)  # [B, A, L]
    rows = _query_rows(mask, student_states.shape[:2], student_states.device)  # [B, L]
    per_example = (per_row * rows[:, None, :]).sum((1, 2)) / (rows.sum(-1) * heads).clamp_min(1)
    return per_example.mean()


def embedding_distance(student: Tensor, teacher: Tensor, kind: Literal["cosine", "mse"] = "cosine") -> Tensor:
    """Mean over the batch of 1 − cos(e_s, e_t) (``cosine``), or the element MSE (``mse``); ``[B, D]`` each."""
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(student.float(), teacher.float())
    raise ConfigError(f"embedding_distance.kind: '{kind}' is not 'cosine' or 'mse'")


class HiddenStatesMSE(LossTerm):
    """TinyBERT's hidden-state loss over a layer map, through one learned projection.

    Reads every hidden state of both models (``output_hidden_states: true`` on both adapters).

    Args:
        layers: ``uniform`` (TinyBERT), ``last``, or explicit ``[[student, teacher], ...]`` pairs
            (index 0 = embedding output).
        include_embeddings: with ``uniform``, pair the embedding outputs too.
        student_dim: student width, for the projection (give both dims or neither).
        teacher_dim: teacher width.
        weight: multiplier of this term in the total loss.
        sources: overrides of where the hidden states come from.
    """

    default_sources: ClassVar[dict[str, str]] = {"student_hidden": "student.hidden_states",
                                                 "teacher_hidden": "teacher.hidden_states"}

    def __init__(self, layers: Literal["uniform", "last"] | Sequence[Sequence[int]] = "uniform",
                 include_embeddings: bool = True, student_dim: int | None = None, teacher_dim: int | None = None,
                 weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        self.layers, self.include_embeddings = layers, include_embeddings
        self.projector = make_projector("HiddenStatesMSE", student_dim, teacher_dim)

    def forward(self, student_hidden: Sequence[Tensor], teacher_hidden: Sequence[Tensor]) -> Tensor:
        pairs = layer_map(len(student_hidden) - 1, len(teacher_hidden) - 1, self.layers, self.include_embeddings)
        width = teacher_hidden[0].shape[-1]
        to_teacher_width(self.projector, student_hidden[0], width, "HiddenStatesMSE",
                         (str(self.sources["student_hidden"]), str(self.sources["teacher_hidden"])))
        return hidden_mse(student_hidden, teacher_hidden, pairs, self.projector)


class AttentionDistillation(LossTerm):
    """One student attention map against one teacher map: KL (MiniLM v1's L_AT) or MSE (TinyBERT-style).

    Point the sources at attention features (``HFModel(output_attentions: true)`` gives
    ``features.attentions.<i>``); use one term per layer pair.

    Args:
        kind: ``kl`` or ``mse``.
        weight: multiplier of this term in the total loss.
        sources: ``student_attention``, ``teacher_attention`` and ``mask`` paths.
    """

    default_sources: ClassVar[dict[str, str]] = {"student_attention": "student.features.attentions.-1",
                                                 "teacher_attention": "teacher.features.attentions.-1",
                                                 "mask": "batch.inputs.attention_mask"}

    def __init__(self, kind: Literal["kl", "mse"] = "kl", weight: float = 1.0,
                 sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        if kind not in ("kl", "mse"):
            raise ConfigError(f"AttentionDistillation.kind: '{kind}' is not 'kl' or 'mse'")
        self.kind = kind

    def forward(self, student_attention: Tensor, teacher_attention: Tensor, mask: Tensor | None = None) -> Tensor:
        fn = attention_kl if self.kind == "kl" else attention_mse
        return fn(student_attention, teacher_attention, mask)


class MiniLMRelation(LossTerm):
    """MiniLM(v2)'s self-attention relation loss for one kind of vectors (Q, K or V) of one layer pair.

    Capture the vectors with ``hooks`` on the layers' query / key / value projections (e.g.
    ``bert.encoder.layer.5.attention.self.value``) and use one term per relation (QQ, KK, VV;
    the reference weights them equally).

    Args:
        heads: relation heads A_r, the same on both sides (each width must be divisible by it).
        weight: multiplier of this term in the total loss.
        sources: ``student_states``, ``teacher_states`` and ``mask`` paths.
    """

    default_sources: ClassVar[dict[str, str]] = {"mask": "batch.inputs.attention_mask"}

    def __init__(self, heads: int = 12, weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        missing = {"student_states", "teacher_states"} - set(self.sources)
        if missing:
            raise ConfigError(f"MiniLMRelation.sources: give {sorted(missing)} (e.g. hooked value projections: "
                              "student.features.<module path>)")
        if heads < 1:
            raise ConfigError(f"MiniLMRelation.heads: must be >= 1, got {heads}")
        self.heads = heads

    def forward(self, student_states: Tensor, teacher_states: Tensor, mask: Tensor | None = None) -> Tensor:
        return relation_kl(student_states, teacher_states, self.heads, mask)


class EmbeddingDistillation(LossTerm):
    """Sentence-embedding distillation: 1 − cosine or MSE between pooled embeddings.

    Defaults read ``features.mean_pooled`` of both sides (``HFModel``); a learned projection maps a
    narrower student to the teacher's width when both dims are given.

    Args:
        kind: ``cosine`` or ``mse`` (sentence-transformers' ``MSELoss``).
        student_dim: student width, for the projection (give both dims or neither).
        teacher_dim: teacher width.
        weight: multiplier of this term in the total loss.
        sources: ``student_embedding`` and ``teacher_embedding`` paths.
    """

    default_sources: ClassVar[dict[str, str]] = {"student_embedding": "student.features.mean_pooled",
                                                 "teacher_embedding": "teacher.features.mean_pooled"}

    def __init__(self, kind: Literal["cosine", "mse"] = "cosine", student_dim: int | None = None,
                 teacher_dim: int | None = None, weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        if kind not in ("cosine", "mse"):
            raise ConfigError(f"EmbeddingDistillation.kind: '{kind}' is not 'cosine' or 'mse'")
        self.kind = kind
        self.projector = make_projector("EmbeddingDistillation", student_dim, teacher_dim)

    def forward(self, student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
        student = to_teacher_width(self.projector, student_embedding, teacher_embedding.shape[-1],
                                   "EmbeddingDistillation", (str(self.sources["student_embedding"]),
                                                             str(self.sources["teacher_embedding"])))
        return embedding_distance(student, teacher_embedding, self.kind)
