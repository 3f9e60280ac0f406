"""Token-level relationship graph (TRG) distillation for vision transformers.

No official code exists (see ``shared/methods/vision.md``); this follows the paper's
description, with every hyperparameter exposed. Tokens are patch tokens ``[B, N, D]``
(``features["tokens"]`` of ``lit_distill.models.TimmModel``) or a CNN's feature map
``[B, C, H, W]`` (captured with the adapter's ``hooks``), cut into its ``H·W`` cells; when the
two sides' square grids differ, the finer one is average-pooled to the coarser one
(:func:`align_token_grids`). A random subset of ``n`` tokens per image, shared by both sides,
is compared. Three relations are matched:

- **local** (:func:`local_graph_kl`): over all sampled tokens of the batch, each token's
  k nearest neighbours in the *teacher's* space form a graph with edge affinities
  exp(−‖T_i − T_j‖² / (2σ)); row-normalised over the neighbours this is a distribution
  p_i, and the student's affinities to the same neighbours give q_i. Loss: mean_i KL(p_i ‖ q_i).
- **global** (:func:`global_contrastive`): InfoNCE between projected student and teacher
  tokens — the positive of a student token is the same token in the teacher, every other
  sampled token of the batch is a negative — at a temperature that is annealed from high
  to low during training (:class:`lit_distill.callbacks.ParameterSchedule`).
- **contextual** (:func:`contextual_relation`): within each image, the token-to-token
  attention-like maps softmax(F Fᵀ/√D) of student and teacher are matched with MSE.

Student tokens are mapped to the teacher's width by a learned linear projector, which
belongs to the student side (optimised and checkpointed with it).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError


def local_graph_kl(student_tokens: Tensor, teacher_tokens: Tensor, k: int = 8, sigma: float = 1.0) -> Tensor:
    """KL between teacher and student neighbour distributions on the teacher's k-NN graph.

    Args:
        student_tokens: ``[M, D]`` (already in the teacher's width).
        teacher_tokens: ``[M, D]``.
        k: neighbours per token (excluding itself), ``1 <= k < M``.
        sigma: affinity bandwidth: a_ij = exp(−‖x_i − x_j‖² / (2σ)).

    Returns:
        0-dim float32 tensor: mean over tokens of KL(p_i ‖ q_i).
    """
    m = teacher_tokens.shape[0]
    if not 1 <= k < m:
        raise ValueError(f"k must be in [1, {m - 1}] for {m} tokens, got {k}")
    s, t = student_tokens.float(), teacher_tokens.detach().float()
    d_t = torch.cdist(t, t).pow(2)
    d_t.fill_diagonal_(float("inf"))
    neighbours = d_t.topk(k, dim=1, largest=False).indices  # [M, k]
    d_s = (s.unsqueeze(1) - s[neighbours]).pow(2).sum(-1)  # [M, k]
    log_p = torch.log_softmax(-d_t.gather(1, neighbours) / (2 * sigma), dim=1)
    log_q = torch.log_softmax(-d_s / (2 * sigma), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def global_contrastive(student_embeddings: Tensor, teacher_embeddings: Tensor, temperature: float) -> Tensor:
    """InfoNCE: student token i must pick teacher token i among all M teacher tokens.

    Args:
        student_embeddings: ``[M, E]``.
        teacher_embeddings: ``[M, E]`` (same order: row i is the same token).
        temperature: τ > 0 dividing the cosine similarities.

    Returns:
        0-dim float32 tensor: mean cross-entropy of the M rows.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = F.normalize(student_embeddings.float(), dim=-1)
    t = F.normalize(teacher_embeddings.float(), dim=-1)
    logits = s @ t.T / temperature
    return F.cross_entropy(logits, torch.arange(s.shape[0], device=s.device))


def contextual_relation(student_tokens: Tensor, teacher_tokens: Tensor) -> Tensor:
    """MSE between the per-image token relation maps softmax(F Fᵀ/√D) of both sides.

    Args:
        student_tokens: ``[B, n, Ds]``.
        teacher_tokens: ``[B, n, Dt]`` (widths may differ: each map is ``[B, n, n]``).

    Returns:
        0-dim float32 tensor: mean squared difference over all map entries.
    """
    def relation(x: Tensor) -> Tensor:
        x = x.float()
        return torch.softmax(x @ x.transpose(1, 2) / math.sqrt(x.shape[-1]), dim=-1)

    return F.mse_loss(relation(student_tokens), relation(teacher_tokens.detach()))


def as_tokens(x: Tensor) -> Tensor:
    """``[B, N, D]`` tokens as they are; a feature map ``[B, C, H, W]`` as ``[B, H·W, C]`` (row-major)."""
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)
    if x.dim() != 3:
        raise ValueError(f"tokens must be [B, N, D] or a feature map [B, C, H, W], got {tuple(x.shape)}")
    return x


def _pool_grid(tokens: Tensor, side: int) -> Tensor:
    b, n, d = tokens.shape
    grid = tokens.transpose(1, 2).reshape(b, d, math.isqrt(n), math.isqrt(n))
    return F.adaptive_avg_pool2d(grid, side).flatten(2).transpose(1, 2)


def align_token_grids(student_tokens: Tensor, teacher_tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Bring both sides to the same token grid, ``[B, N, Ds]`` and ``[B, N, Dt]``.

    Feature maps become tokens (:func:`as_tokens`). With different token counts, both grids
    must be square (``N = s²``) and the finer one is average-pooled to the coarser side, so
    token ``i`` of both covers the same image region (e.g. a ViT's 8x8 patch grid against a
    ResNet stage's 4x4 map).
    """
    s, t = as_tokens(student_tokens), as_tokens(teacher_tokens)
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"student batch {s.shape[0]} != teacher batch {t.shape[0]}")
    ns, nt = s.shape[1], t.shape[1]
    if ns == nt:
        return s, t
    if math.isqrt(ns) ** 2 != ns or math.isqrt(nt) ** 2 != nt:
        raise ValueError(f"student has {ns} tokens and teacher {nt}: different counts are only "
                         "aligned for square grids (give both models the same patch grid)")
    side = math.isqrt(min(ns, nt))
    return (_pool_grid(s, side) if ns > nt else s), (_pool_grid(t, side) if nt > ns else t)


def sample_tokens(student_tokens: Tensor, teacher_tokens: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The same random ``n`` token positions per image from both sides, ``[B, n, D*]``.

    Args:
        student_tokens: ``[B, N, Ds]``.
        teacher_tokens: ``[B, N, Dt]`` (same grid; see :func:`align_token_grids`).
        n: tokens to keep per image (all of them when ``n >= N``).
    """
    b, count = teacher_tokens.shape[:2]
    if student_tokens.shape[:2] != (b, count):
        raise ValueError(f"student tokens {tuple(student_tokens.shape)} and teacher tokens "
                         f"{tuple(teacher_tokens.shape)} must have the same batch and token counts "
                         "(give both models the same patch grid)")
    n = min(n, count)
    index = torch.rand(b, count, device=teacher_tokens.device).argsort(dim=1)[:, :n]
    take = lambda x: x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # noqa: E731
    return take(student_tokens), take(teacher_tokens)


class TRG(LossTerm):
    """Token-level relationship graph distillation: local + global + contextual relations.

    Args:
        student_dim: width of the student's tokens.
        teacher_dim: width of the teacher's tokens (channels of a CNN feature map).
        num_tokens: tokens sampled per image (the same positions on both sides).
        k: neighbours per token in the local graph.
        sigma: bandwidth of the local graph's affinities.
        temperature: InfoNCE temperature of the global term (anneal it with
            ``lit_distill.callbacks.ParameterSchedule``, attribute ``temperature``).
        projection_dim: width of the global term's projections.
        normalize_tokens: L2-normalise tokens before the local graph, so ``sigma`` is on the
            scale of unit vectors (squared distances in [0, 4]) whatever the features' scale.
        local_weight: weight of the local graph KL.
        global_weight: weight of the global contrastive loss.
        contextual_weight: weight of the contextual (inner-instance) loss.
        weight: multiplier of the whole term in the total loss.
        sources: overrides of where the tokens come from.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "student_tokens": "student.features.tokens", "teacher_tokens": "teacher.features.tokens"}

    def __init__(self, student_dim: int, teacher_dim: int, num_tokens: int = 16, k: int = 8,
                 sigma: float = 1.0, temperature: float = 0.1, projection_dim: int = 128,
                 normalize_tokens: bool = True, local_weight: float = 1.0, global_weight: float = 1.0, contextual_weight: float = 1.0,
                 weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        if num_tokens < 2 or k < 1 or sigma <= 0 or temperature <= 0:
            raise ConfigError(f"TRG: need num_tokens >= 2, k >= 1, sigma > 0 and temperature > 0, got "
                              f"num_tokens={num_tokens}, k={k}, sigma={sigma}, temperature={temperature}")
        self.num_tokens, self.k, self.sigma, self.temperature = num_tokens, k, sigma, temperature
        self.normalize_tokens = normalize_tokens
        self.local_weight, self.global_weight, self.contextual_weight = local_weight, global_weight, contextual_weight
        self.to_teacher = nn.Linear(student_dim, teacher_dim, bias=False)
        self.student_head = nn.Linear(teacher_dim, projection_dim)
        self.teacher_head = nn.Linear(teacher_dim, projection_dim)

    def forward(self, student_tokens: Tensor, teacher_tokens: Tensor) -> Tensor:
        """Args: student tokens ``[B, N, Ds]`` (or a map ``[B, Ds, H, W]``); teacher tokens
        ``[B, M, Dt]`` or a map ``[B, Dt, H', W']``. Returns a 0-dim float32 tensor."""
        s, t = sample_tokens(*align_token_grids(student_tokens, teacher_tokens), self.num_tokens)
        s = self.to_teacher(s.float())
        t = t.detach().float()
        flat_s, flat_t = s.flatten(0, 1), t.flatten(0, 1)
        total = self.contextual_weight * contextual_relation(s, t)
        if flat_t.shape[0] > self.k:
            graph_s, graph_t = ((F.normalize(flat_s, dim=-1), F.normalize(flat_t, dim=-1))
                                if self.normalize_tokens else (flat_s, flat_t))
            total = total + self.local_weight * local_graph_kl(graph_s, graph_t, self.k, self.sigma)
        total = total + self.global_weight * global_contrastive(
            self.student_head(flat_s), self.teacher_head(flat_t), self.temperature)
        return total
