"""``HFCausalLM``: the historic name of :class:`~lit_distill.models.hf_model.HFModel` for causal LMs."""

from __future__ import annotations

from typing import Any

from lit_distill.models.hf_model import HFModel


class HFCausalLM(HFModel):
    """A ``transformers`` causal LM: ``HFModel(task="causal-lm", ...)`` under its historic name.

    Every field means what it means in :class:`~lit_distill.models.hf_model.HFModel`; configs
    written for ``HFCausalLM`` keep working, and errors name ``HFCausalLM.<field>``.

    Args:
        path: hub id (e.g. ``Qwen/Qwen2.5-0.5B``) or local directory (``save_pretrained``).
        config: architecture fields for a model built from scratch, e.g.
            ``{model_type: llama, hidden_size: 64, num_hidden_layers: 2, ...}``.
        vocab_size: the data's tokenizer size (linked from the datamodule): sets a fresh model's
            vocabulary; checked against a loaded model's embeddings and LM head.
        pad_token_id: pad id of the data's tokenizer (linked from the datamodule).
        dtype: load the weights in this dtype (``bfloat16``, ``float32``, ...).
        trust_remote_code: allow code shipped with the checkpoint to run. Off unless you trust it.
        revision: hub revision (branch, tag or commit).
        attn_implementation: e.g. ``sdpa``, ``eager``, ``flash_attention_2``.
        output_hidden_states: also return every layer's hidden states (and the pooled features).
        hooks: module paths whose outputs are recorded as features.
        compute_logits: False skips the LM head for fused losses (``last_hidden_state`` and
            ``lm_head.weight`` as features instead of logits).
        lora: train LoRA adapters through ``peft`` (:mod:`lit_distill.models.lora`).
    """

    def __init__(self, path: str | None = None, config: dict[str, Any] | None = None,
                 vocab_size: int | None = None, pad_token_id: int | None = None, dtype: str | None = None,
                 trust_remote_code: bool = False, revision: str | None = None,
                 attn_implementation: str | None = None, output_hidden_states: bool = False,
                 hooks: list[str] | None = None, compute_logits: bool = True,
                 lora: dict[str, Any] | None = None) -> None:
        super().__init__("causal-lm", path=path, config=config, vocab_size=vocab_size, pad_token_id=pad_token_id,
                         dtype=dtype, trust_remote_code=trust_remote_code, revision=revision,
                         attn_implementation=attn_implementation, output_hidden_states=output_hidden_states,
                         hooks=hooks, compute_logits=compute_logits, lora=lora)
