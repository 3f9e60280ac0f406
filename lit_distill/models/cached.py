"""A teacher read from the offline cache instead of run: a member of a multi-teacher ensemble.

``CachedTopK`` turns one cached row per position (``lit_distill.cache``: the teacher's top-k ids,
their log-probabilities at the cache's temperature ``T_c`` and the tail mass) back into dense
logits ``[..., V]`` — ``[B, L, V]`` for a token-level teacher, ``[B, C]`` for a sequence
classifier cached one row per sample (its rows come without the position axis) — so a
``MultiModel`` teacher can mix live and cached members and every loss that reads
``teachers.<name>.logits`` (``EnsembleKD``: mixture or logit average, uniform, entropy or gold
weights; ``ForwardKL`` with that source) works on them unchanged.
``datamodules.CachedTeacherDataModule(caches: {b: DIR})`` writes the rows into the batch's teacher inputs as ``b_topk_ids``, ``b_topk_logprobs``,
``b_tail_mass`` and ``b_temperature``; the ``MultiModel`` routes them to the member::

    teacher:
      class_path: lit_distill.Teacher
      init_args:
        model:
          class_path: lit_distill.models.MultiModel
          init_args:
            members:
              a: {class_path: lit_distill.models.HFCausalLM, init_args: {path: DIR_A}}   # runs
              b: {class_path: lit_distill.models.CachedTopK, init_args: {vocab_size: 1024}}  # read
            inputs:
              a: [input_ids, attention_mask]
              b: {topk_ids: b_topk_ids, topk_logprobs: b_topk_logprobs, tail_mass: b_tail_mass,
                  temperature: b_temperature, vocab_size: b_vocab_size}

(``vocab_size: b_vocab_size`` is optional: mapped, the cache's own ``V`` is checked against the
member's, which catches a classifier cache of 2 classes read as 3, whose missing class would
otherwise silently get probability 0. Classifier ensembles:
``configs/text/multi_teacher/tiny-bert-student_from_live+cached-bert-teachers_local.yaml``.)

The dense log-probabilities ``ℓ`` are the cached log-probs at the top-k ids and the tail mass
spread uniformly over the ``V − k`` other ids, ``log(p_tail / (V − k))``, so ``softmax(ℓ)`` is the
cached distribution (to the storage precision; the top-k log-probs are float16/bfloat16 or
8-bit in the cache). The logits returned are ``T_c · ℓ``:

- at ``k = V`` (no tail) ``T_c · log_softmax(z / T_c) = z − c`` is the teacher's own logits ``z``
  up to a constant per position, which no softmax sees: a loss at *any* temperature ``T`` gets
  exactly what it gets from the live teacher;
- at ``k < V`` a loss at ``T = T_c`` gets exactly the cached distribution, tail included. At
  another ``T`` the top-k entries keep their exact ratios ``exp((z_i − z_j) / T)`` but the tail's
  mass at ``T`` is unknown (the cache holds it at ``T_c`` only): ``EnsembleKD`` and the logit
  divergences (``ForwardKL``, ``GeneralizedJSD``, ...) refuse that combination, reading the
  teacher's (or member's) ``cache_temperature`` and ``cache_top_k`` features. Write the cache at the loss's temperature
  (``cache-teacher --temperature T``) or with ``--top-k`` equal to the vocabulary.

A probability 0 (tail 0 at ``k < V``, a ``-inf`` log-prob) gives the finite logit ``-1e30`` (its
probability stays exactly 0) so that no ``0 · log 0`` reaches a loss as NaN.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from torch import Tensor, nn

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter
from lit_distill.sources import OutputSpec

# log 0 as a finite logit: exp of it is exactly 0 in float32 and float64 (as losses.divergences)
LOG_ZERO = -1.0e30
FEATURES = frozenset({"cache_temperature", "cache_top_k"})


def dense_logprobs(topk_ids: Tensor, topk_logprobs: Tensor, tail_mass: Tensor, vocab_size: int) -> Tensor:
    """Dense log-probabilities ``[..., V]`` (float32) from one sparse cached row per position.

    Args:
        topk_ids: ``[..., k]`` integer ids (distinct per position, each ``< V``).
        topk_logprobs: ``[..., k]`` their log-probabilities.
        tail_mass: ``[...]`` 1 − Σ top-k probabilities.
        vocab_size: V.

    Returns:
        ``ℓ`` with ``ℓ[..., topk_ids] = topk_logprobs`` and ``log(tail_mass / (V − k))`` at every
        other id (``-inf`` where the tail is 0; irrelevant at ``k = V``, where no other id exists).
    """
    k = topk_ids.shape[-1]
    tail = (tail_mass.float().clamp_min(0.0) / max(vocab_size - k, 1)).log()  # log 0 = -inf: kept
    dense = tail.unsqueeze(-1).expand(*tail.shape, vocab_size).contiguous()
    return dense.scatter_(-1, topk_ids.long(), topk_logprobs.float())


class CachedTopK(ModelAdapter):
    """Dense teacher logits from cached top-k rows: the member of a ``MultiModel`` ensemble that is read, not run.

    See the module docstring for the formula, the temperature and a config.

    Args:
        vocab_size: V, the label space the other teachers and the student share (the data's
            tokenizer size; for a sequence classifier, its number of classes C). The cached ids
            must be below it.

    Inputs (``run``): ``topk_ids`` ``[B, L, k]``, ``topk_logprobs`` ``[B, L, k]``, ``tail_mass``
    ``[B, L]`` (a classifier's cache of sample rows: ``[B, k]``, ``[B, k]``, ``[B]``),
    ``temperature`` (float, the cache's ``T_c``) and optionally ``vocab_size`` (int, the cache's
    V, checked against the argument), as ``datamodules.CachedTeacherDataModule`` writes them for
    a named cache.

    Outputs: ``ModelOutput(logits=T_c · ℓ [B, L, V] (or [B, C]) float32,
    features={cache_temperature: T_c, cache_top_k: k})`` (in a ``MultiModel``: ``<member>.logits``,
    ``<member>.cache_temperature``, ``<member>.cache_top_k``).
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise ConfigError(f"CachedTopK.vocab_size: must be a positive int (the vocabulary), got {vocab_size!r}")
        self.vocab_size = vocab_size
        self._ids_checked = False
        self.module = nn.Identity()  # nothing to run; keeps the adapter contract (``model``)

    @property
    def output_size(self) -> int:
        """V."""
        return self.vocab_size

    def declared_outputs(self) -> OutputSpec:
        """Logits, no hidden states, and the features ``cache_temperature`` and ``cache_top_k``."""
        return OutputSpec(logits=True, hidden_states=0, features=FEATURES, closed=True)

    def run(self, topk_ids: Tensor | None = None, topk_logprobs: Tensor | None = None,
            tail_mass: Tensor | None = None, temperature: float | None = None, vocab_size: int | None = None,
            **unmapped: Any) -> ModelOutput:
        if any(x is None for x in (topk_ids, topk_logprobs, tail_mass, temperature)) or unmapped:
            given = sorted(k for k, v in {"topk_ids": topk_ids, "topk_logprobs": topk_logprobs, "tail_mass": tail_mass,
                                          "temperature": temperature, **unmapped}.items() if v is not None)
            raise ConfigError(f"CachedTopK: needs exactly topk_ids, topk_logprobs, tail_mass and temperature, got "
                              f"{given}; map them in MultiModel.inputs, e.g. b: {{topk_ids: b_topk_ids, topk_logprobs: "
                              "b_topk_logprobs, tail_mass: b_tail_mass, temperature: b_temperature} for the rows "
                              "CachedTeacherDataModule.caches.b writes")
        if not isinstance(temperature, int | float) or not (temperature > 0 and math.isfinite(temperature)):
            raise ConfigError(f"CachedTopK: the cache's temperature must be a number > 0, got {temperature!r}")
        if vocab_size is not None and int(vocab_size) != self.vocab_size:
            raise ConfigError(f"CachedTopK.vocab_size: {self.vocab_size}, but the cache was written with V = "
                              f"{int(vocab_size)} (its manifest's vocab_size; for a classifier, its classes); set "
                              f"vocab_size: {int(vocab_size)} or read the cache of a teacher of {self.vocab_size}")
        k = topk_ids.shape[-1]
        if topk_logprobs.shape != topk_ids.shape or tail_mass.shape != topk_ids.shape[:-1]:
            raise ConfigError(f"CachedTopK: topk_ids {tuple(topk_ids.shape)}, topk_logprobs "
                              f"{tuple(topk_logprobs.shape)} and tail_mass {tuple(tail_mass.shape)} must be "
                              "[..., k], [..., k] and [...]")
        if k > self.vocab_size:
            raise ConfigError(f"CachedTopK.vocab_size: the cache holds k = {k} entries per row, more than "
                              f"vocab_size = {self.vocab_size}; set the vocabulary the cache was written with")
        if not self._ids_checked:  # once: an id beyond vocab_size would fail inside scatter, without a message
            largest = int(topk_ids.max()) if topk_ids.numel() else -1
            if largest >= self.vocab_size:
                raise ConfigError(f"CachedTopK.vocab_size: the cache holds token id {largest}, beyond vocab_size = "
                                  f"{self.vocab_size}; set the vocabulary the cache was written with (its "
                                  "manifest's vocab_size)")
            self._ids_checked = True
        logits = dense_logprobs(topk_ids, topk_logprobs, tail_mass, self.vocab_size).mul_(float(temperature))
        return ModelOutput(logits=logits.clamp_min_(LOG_ZERO),
                           features={"cache_temperature": float(temperature), "cache_top_k": k})

    def export(self, out_dir: str) -> None:
        """Nothing to export but a note: this teacher's outputs live in its cache."""
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "cached_teacher.json"), "w") as f:
            json.dump({"class": "lit_distill.models.CachedTopK", "vocab_size": self.vocab_size}, f)


__all__ = ["LOG_ZERO", "CachedTopK", "dense_logprobs"]
