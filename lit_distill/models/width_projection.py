"""A narrower student by projecting the teacher's residual stream (SliceGPT's idea, data-free).

In a pre-norm transformer with RMSNorm (Llama, Qwen2, Mistral, ...) every block reads the
residual stream ``x`` through an RMSNorm and writes back through a linear map. Folding each
norm's gain into the linear maps that read it, the network is invariant to an orthogonal
rotation ``Q`` of the residual stream (RMSNorm(xQ) = RMSNorm(x)Q: a rotation keeps the norm):
embeddings become ``E Q``, maps reading the stream ``W Q``, maps writing it ``Qᵀ W``. Keeping only
the first ``d_s`` columns of ``Q`` projects the stream onto a ``d_s``-dimensional subspace; with
``Q`` the principal directions of the teacher's token embeddings, the subspace keeps as much of
the embedding energy as ``d_s`` dimensions can. Attention heads, their width and the feed-forward
width stay the teacher's (the config pins ``head_dim``), so only the residual width shrinks.

The student's norms get the gain ``sqrt(d / d_s)``: the RMS of a projected vector is computed
over ``d_s`` instead of ``d`` features, which (when the subspace holds most of the vector's
energy) scales the normalised stream by ``sqrt(d_s / d)``.

Exactness: at ``d_s = d`` the student computes the teacher's logits (up to rounding), tested.
Below ``d`` it is an approximation that fine-tuning starts from, compared with truncation in the
README. Only RMSNorm decoders with a Llama-style layout are supported; others are refused in one
line (use truncation).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lit_distill.errors import ConfigError

_READERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # read the attention norm's output
_MLP_READERS = ("mlp.gate_proj", "mlp.up_proj")  # read the post-attention norm's output
_WRITERS = ("self_attn.o_proj", "mlp.down_proj")  # write into the residual stream


def embedding_basis(embeddings: torch.Tensor) -> torch.Tensor:
    """``[d, d]`` orthogonal ``Q``: the right singular vectors of the ``[V, d]`` embeddings, by energy."""
    _, _, vh = torch.linalg.svd(embeddings.double(), full_matrices=True)
    return vh.T  # columns: principal directions, largest singular value first


def project_width(teacher: Any, hidden_size: int) -> Any:
    """A ``transformers`` model of the teacher's class whose residual stream is projected to ``hidden_size``.

    Args:
        teacher: a Llama-style ``PreTrainedModel`` with RMSNorm (``model.layers.*`` with
            ``input_layernorm``, ``post_attention_layernorm``, ``self_attn.{q,k,v,o}_proj``,
            ``mlp.{gate,up,down}_proj``, ``model.norm``, ``lm_head``).
        hidden_size: the student's residual width ``d_s ≤ d``.

    Returns:
        The student (the teacher's class, ``hidden_size`` = ``d_s``, ``head_dim`` pinned,
        untied head when the teacher's final norm has a gain other than 1).
    """
    config = teacher.config.to_dict()
    d = int(config["hidden_size"])
    state = {name: value.detach().double() for name, value in teacher.state_dict().items()}
    if "model.norm.weight" not in state or "model.layers.0.input_layernorm.weight" not in state \
            or "rms_norm_eps" not in config:
        raise ConfigError("init-student --width-method projection: only RMSNorm decoders with a Llama-style layout "
                          "(Llama, Qwen2, Mistral) can be projected; use --width-method truncation")
    if not 0 < hidden_size <= d:
        raise ConfigError(f"init-student --hidden-size: {hidden_size} must be in (0, {d}] for a projection")
    basis = embedding_basis(state["model.embed_tokens.weight"])[:, :hidden_size]  # [d, d_s]
    head_dim = config.get("head_dim") or d // config["num_attention_heads"]
    new: dict[str, torch.Tensor] = {"model.embed_tokens.weight": state["model.embed_tokens.weight"] @ basis}
    gain = math.sqrt(d / hidden_size)
    for index in range(int(config["num_hidden_layers"])):
        prefix = f"model.layers.{index}."
        for norm, readers in (("input_layernorm", _READERS), ("post_attention_layernorm", _MLP_READERS)):
            scale = state[prefix + norm + ".weight"]
            for reader in readers:
                new[prefix + reader + ".weight"] = (state[prefix + reader + ".weight"] * scale) @ basis
                if prefix + reader + ".bias" in state:
                    new[prefix + reader + ".bias"] = state[prefix + reader + ".bias"]
            new[prefix + norm + ".weight"] = torch.full((hidden_size,), gain, dtype=torch.float64)
        for writer in _WRITERS:
            new[prefix + writer + ".weight"] = basis.T @ state[prefix + writer + ".weight"]
            if prefix + writer + ".bias" in state:
                new[prefix + writer + ".bias"] = basis.T @ state[prefix + writer + ".bias"]
    head = state.get("lm_head.weight", state["model.embed_tokens.weight"])
    final = state["model.norm.weight"]
    new["lm_head.weight"] = (head * final) @ basis
    new["model.norm.weight"] = torch.full((hidden_size,), gain, dtype=torch.float64)
    tie = bool(config.get("tie_word_embeddings")) and torch.equal(final, torch.ones_like(final))
    student_config = type(teacher.config).from_dict({**config, "hidden_size": hidden_size, "head_dim": head_dim,
                                                     "tie_word_embeddings": tie})
    dtype = next(teacher.parameters()).dtype
    student = type(teacher)(student_config).to(dtype)
    expected = set(student.state_dict())
    unknown = set(state) - set(new) - {"lm_head.weight"} - {k for k in state if "rotary_emb" in k}
    if unknown or not set(new) >= expected - {k for k in expected if "rotary_emb" in k}:
        raise ConfigError(f"init-student --width-method projection: unsupported weights {sorted(unknown)[:3]}; "
                          "use --width-method truncation")
    student.load_state_dict({k: v.to(dtype) for k, v in new.items() if k in expected}, strict=False)
    if tie:
        student.tie_weights()
    return student
