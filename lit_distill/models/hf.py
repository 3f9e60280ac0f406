"""Hugging Face causal language models, from a hub id, a local directory, or a config."""

from __future__ import annotations

import os
import re
from typing import Any

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter, parse_dtype
from lit_distill.sources import OutputSpec


class HFCausalLM(ModelAdapter):
    """A ``transformers`` causal LM (``AutoModelForCausalLM``) as a lit_distill model.

    Give exactly one of ``path`` (a hub id or a local directory written by
    ``save_pretrained``) or ``config`` (a dict with ``model_type`` and the
    architecture's fields, to build a fresh randomly initialised model).

    Args:
        path: hub id (e.g. ``Qwen/Qwen2.5-0.5B``) or local directory.
        config: architecture fields for a model built from scratch, e.g.
            ``{model_type: llama, hidden_size: 64, num_hidden_layers: 2, ...}``.
        vocab_size: vocabulary size of the data's tokenizer (linked from the
            datamodule by the CLI). Sets the vocab of a model built from
            ``config``; for a loaded model it is checked against the model's
            embedding size.
        pad_token_id: pad id of the data's tokenizer (linked from the datamodule).
        dtype: load the weights in this dtype (``bfloat16``, ``float32``, ...);
            None keeps float32 for a fresh model and the checkpoint's default
            otherwise.
        trust_remote_code: allow code shipped with the checkpoint to run. Off
            unless you trust the source.
        revision: hub revision (branch, tag or commit).
        attn_implementation: e.g. ``sdpa``, ``eager``, ``flash_attention_2``.
        output_hidden_states: also return every layer's hidden states.
        hooks: module paths whose outputs are recorded as features.
        compute_logits: False skips the LM head: ``logits`` is None and ``features``
            hold ``last_hidden_state`` ``[B, L, D]`` (after the final norm), the head's
            ``lm_head.weight`` ``[V, D]`` and, if it has one, ``lm_head.bias`` ``[V]``,
            for fused losses (``lit_distill.losses.FusedForwardKL``) that never build
            full ``[B, L, V]`` logits. Only for models whose logits are exactly
            ``hidden @ weight.T + bias`` (no soft-capping or logit scale).
        lora: train LoRA adapters instead of the whole model, through ``peft``:
            ``{r: 8, alpha: 16, dropout: 0.0, target_modules: [q_proj, v_proj]}`` (also ``bias``,
            ``modules_to_save``; :mod:`lit_distill.models.lora`). The base stays frozen;
            ``export`` writes merged weights and the adapter alone in ``adapter/``.
    """

    def __init__(
        self,
        path: str | None = None,
        config: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        pad_token_id: int | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        attn_implementation: str | None = None,
        output_hidden_states: bool = False,
        hooks: list[str] | None = None,
        compute_logits: bool = True,
        lora: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(hooks)
        if (path is None) == (config is None):
            raise ConfigError("HFCausalLM: give exactly one of 'path' (hub id or local directory) "
                              "or 'config' (a dict with model_type, to build a fresh model)")
        self.path = path
        self.output_hidden_states = output_hidden_states
        self.lora = None  # set after loading: the checks below read the plain model
        torch_dtype = parse_dtype(dtype, "HFCausalLM.dtype")
        if path is not None:
            self.module = _load_pretrained(path, torch_dtype, trust_remote_code, revision, attn_implementation)
            if vocab_size is not None and self.output_size is not None and self.output_size < vocab_size:
                raise ConfigError(f"HFCausalLM.path: the model at '{path}' has {self.output_size} output "
                                  f"logits but the data's tokenizer has {vocab_size} tokens; "
                                  "use the tokenizer that belongs to this model")
        else:
            self.module = _build_from_config(dict(config), vocab_size, pad_token_id, torch_dtype,
                                             attn_implementation)
        self.compute_logits = compute_logits
        if not compute_logits:
            _check_plain_head(self.module)
        if lora:
            from lit_distill.models.lora import apply_lora

            self.module = apply_lora(self.module, dict(lora), "HFCausalLM.lora")
            self.lora = dict(lora)
        self._install_hooks()

    @property
    def model(self):
        """The ``transformers`` model (under a LoRA student's ``peft`` wrapper, with its adapters)."""
        return self.module.get_base_model() if self.lora else self.module

    @property
    def output_size(self) -> int | None:
        embeddings = self.model.get_output_embeddings()
        return embeddings.weight.shape[0] if embeddings is not None else self.model.config.vocab_size

    def declared_outputs(self) -> OutputSpec:
        """Logits (or, with ``compute_logits: false``, the last hidden state and the LM head as
        features), plus every layer's hidden states when ``output_hidden_states``."""
        features = frozenset()
        if not self.compute_logits:
            head = self.model.get_output_embeddings()
            features = frozenset({"last_hidden_state", "lm_head.weight"}
                                 | ({"lm_head.bias"} if getattr(head, "bias", None) is not None else set()))
        layers = getattr(self.model.config, "num_hidden_layers", None)
        hidden = (None if layers is None else int(layers) + 1) if self.output_hidden_states else 0
        return OutputSpec(logits=self.compute_logits, hidden_states=hidden, features=features, closed=True)

    def run(self, **inputs: Any) -> ModelOutput:
        if not self.compute_logits:
            return self._run_without_head(inputs)
        out = self.module(**inputs, output_hidden_states=self.output_hidden_states, use_cache=False)
        return ModelOutput(logits=out.logits,
                           hidden_states=out.hidden_states if self.output_hidden_states else None)

    def _run_without_head(self, inputs: dict[str, Any]) -> ModelOutput:
        """The base model only; the head's parameters are handed to the loss as features."""
        out = self.model.base_model(**inputs, output_hidden_states=self.output_hidden_states,
                                    use_cache=False)
        head = self.model.get_output_embeddings()
        features = {"last_hidden_state": out.last_hidden_state, "lm_head.weight": head.weight}
        if getattr(head, "bias", None) is not None:
            features["lm_head.bias"] = head.bias
        return ModelOutput(logits=None, features=features,
                           hidden_states=out.hidden_states if self.output_hidden_states else None)

    def export(self, out_dir: str) -> None:
        """``save_pretrained`` the model, plus the tokenizer saved beside a loaded checkpoint.

        A LoRA student writes its merged weights there and its adapter in ``out_dir/adapter``
        (the tokenizer in both).
        """
        if self.lora:
            from lit_distill.models.lora import export_lora

            export_lora(self.module, out_dir, self.path)
        else:
            self.module.save_pretrained(out_dir)
        if self.path is not None and os.path.isdir(self.path):
            from lit_distill.models.lora import export_dirs

            for target in export_dirs(out_dir):
                copy_tokenizer(self.path, target)


# Config fields of architectures whose logits are not a plain linear map of the last hidden state.
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}


def _check_plain_head(module) -> None:
    """Fail early when ``compute_logits: false`` cannot reproduce the model's logits."""
    head = module.get_output_embeddings()
    if head is None or not hasattr(head, "weight") or module.base_model is module:
        raise ConfigError(f"HFCausalLM.compute_logits: {type(module).__name__} has no separate linear "
                          "LM head (get_output_embeddings); keep compute_logits: true")
    for name, neutral in _LOGIT_TRANSFORMS.items():
        value = getattr(module.config, name, neutral)
        if value is not None and value != neutral:
            raise ConfigError(f"HFCausalLM.compute_logits: {type(module).__name__} transforms its logits "
                              f"after the head ({name}={value}); fused losses would compute other "
                              "logits, keep compute_logits: true")


# "name" or "org/name": what the hub accepts; anything else is taken as a local path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def copy_tokenizer(source: str, out_dir: str) -> bool:
    """Save the tokenizer found at ``source`` into ``out_dir``; False if there is none."""
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(source).save_pretrained(out_dir)
    except (OSError, ValueError, TypeError):
        return False
    return True


def load_pretrained_checked(auto_class: Any, path: str, field: str, example: str, **kwargs: Any):
    """``auto_class.from_pretrained(path, **kwargs)`` with one-line ConfigErrors naming ``field``.

    A path that exists locally (or is not hub-id shaped) must be a ``save_pretrained``
    directory; anything else is a hub id served from the cache when offline. ``None`` keyword
    values are left out.

    Args:
        auto_class: e.g. ``AutoModelForCausalLM`` or ``AutoModel``.
        path: local directory or hub id.
        field: the config field, for messages (e.g. ``HFCausalLM.path``).
        example: a hub id to show in the message.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    looks_local = os.path.exists(path) or not HUB_ID.fullmatch(path)
    if looks_local and not os.path.isdir(path):
        raise ConfigError(f"{field}: no directory '{path}' (give a directory written by "
                          f"save_pretrained, or a hub id such as '{example}')")
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        where = "local directory" if looks_local else "hub id (is the hub reachable, or the model in the local cache?)"
        raise ConfigError(f"{field}: could not load '{path}' as a {where}: {str(err).splitlines()[0]}") from err


def _load_pretrained(path, dtype, trust_remote_code, revision, attn_implementation):
    from transformers import AutoModelForCausalLM

    # from_pretrained returns the model in eval mode; a student must train with its dropout, as a
    # model built from a config does (Lightning keeps submodules' modes). Teacher sets eval itself.
    return load_pretrained_checked(AutoModelForCausalLM, path, "HFCausalLM.path", "Qwen/Qwen2.5-0.5B",
                                   trust_remote_code=trust_remote_code, dtype=dtype, revision=revision,
                                   attn_implementation=attn_implementation).train()


def _build_from_config(config, vocab_size, pad_token_id, dtype, attn_implementation):
    from transformers import AutoModelForCausalLM

    return build_from_config(AutoModelForCausalLM, config, "HFCausalLM.config", vocab_size, pad_token_id, dtype,
                             attn_implementation)


def build_from_config(auto_class: Any, config: dict[str, Any], field: str, vocab_size: int | None = None,
                      pad_token_id: int | None = None, dtype: Any = None, attn_implementation: str | None = None,
                      **overrides: Any):
    """A fresh, randomly initialised ``auto_class`` model from architecture fields.

    Args:
        auto_class: e.g. ``AutoModelForCausalLM``.
        config: ``model_type`` plus the architecture's fields (consumed).
        field: the config field, for messages (e.g. ``HFModel.config``).
        vocab_size: sets the vocabulary (the data's tokenizer) when given.
        pad_token_id: sets the pad id unless the config has one.
        dtype: parameter dtype (None: float32).
        attn_implementation: e.g. ``sdpa`` or ``eager``.
        overrides: further config fields set whatever the config says (e.g. ``num_labels``).
    """
    from transformers import AutoConfig

    model_type = config.pop("model_type", None)
    if model_type is None:
        raise ConfigError(f"{field}: needs 'model_type' (e.g. llama, qwen2, bert)")
    if vocab_size is not None:
        config["vocab_size"] = vocab_size
    if pad_token_id is not None:
        config.setdefault("pad_token_id", pad_token_id)
    config.update(overrides)
    try:
        hf_config = AutoConfig.for_model(model_type, **config)
    except ValueError as err:
        raise ConfigError(f"{field}.model_type: {err}") from err
    kwargs = {k: v for k, v in (("dtype", dtype), ("attn_implementation", attn_implementation)) if v is not None}
    return auto_class.from_config(hf_config, **kwargs)
