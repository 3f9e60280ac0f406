"""Refuse a truncated cached teacher read at another temperature than the one it was written at.

A :class:`~lit_distill.models.CachedTopK` teacher (alone or as a ``MultiModel`` member) returns the
features ``cache_temperature`` (``T_c``) and ``cache_top_k`` (``k``) beside its logits. With
``k < V`` the tail's mass is known at ``T_c`` only, so a loss at another temperature would read a
distribution the teacher never had; at ``k = V`` every temperature is exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lit_distill.errors import ConfigError


def check_cached_teacher(owner: str, temperature: float, features: Mapping[str, Any], member: str,
                         vocab_size: int) -> None:
    """Raise a one-line ConfigError when ``member``'s cache is truncated and written at another ``T``.

    Args:
        owner: the loss term's name in the message (e.g. ``"EnsembleKD"``).
        temperature: the loss's temperature.
        features: the teacher's ``ModelOutput.features``.
        member: the ``MultiModel`` member's name, or ``""`` for a ``CachedTopK`` teacher itself.
        vocab_size: ``V``, the last dimension of the logits read.
    """
    prefix = f"{member}." if member else ""
    cached_t, k = features.get(f"{prefix}cache_temperature"), features.get(f"{prefix}cache_top_k")
    if cached_t is None or k is None or k >= vocab_size or math.isclose(float(cached_t), float(temperature)):
        return
    name = f"teacher '{member}'" if member else "the teacher"
    raise ConfigError(f"{owner}.temperature: {temperature}, but {name} is a top-{k} cache (of V = {vocab_size}) "
                      f"written at temperature {cached_t}, whose tail is known only there; set temperature: "
                      f"{cached_t}, or rewrite the cache with cache-teacher --temperature {temperature} "
                      f"(or --top-k {vocab_size})")
