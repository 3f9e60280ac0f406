"""Loading ``transformers`` models safely: hub ids or ``save_pretrained`` directories, fresh models
from architecture fields, tokenizers beside exports, the LM-head check of fused losses, and the
check that a field is set only on the tasks that take it."""

from __future__ import annotations

import os
import re
from typing import Any

from lit_distill.errors import ConfigError

# Config fields of architectures whose logits are not a plain linear map of the last hidden state.
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}


def check_plain_head(module: Any, field: str) -> None:
    """Fail early when ``compute_logits: false`` cannot reproduce the model's logits.

    Args:
        module: a ``transformers`` model with an LM head.
        field: the config field, for messages (e.g. ``HFModel.compute_logits``).
    """
    head = module.get_output_embeddings()
    if head is None or not hasattr(head, "weight") or module.base_model is module:
        raise ConfigError(f"{field}: {type(module).__name__} has no separate linear "
                          "LM head (get_output_embeddings); keep compute_logits: true")
    for name, neutral in _LOGIT_TRANSFORMS.items():
        value = getattr(module.config, name, neutral)
        if value is not None and value != neutral:
            raise ConfigError(f"{field}: {type(module).__name__} transforms its logits "
                              f"after the head ({name}={value}); fused losses would compute other "
                              "logits, keep compute_logits: true")


def check_task_fields(name: str, task: str, table: dict[str, tuple[tuple[str, ...], str, Any]],
                      **values: Any) -> None:
    """A one-line ConfigError for a field set (not at its unset value) on a task that does not take it.

    Args:
        name: the adapter's class name, for messages.
        task: the task the adapter was given.
        table: field -> (the tasks that take it, what they are called in messages, its unset value).
        values: the fields' values.
    """
    for field, value in values.items():
        tasks, label, unset = table[field]
        if task not in tasks and value != unset:
            shown = str(value).lower() if isinstance(value, bool) else value
            raise ConfigError(f"{name}.{field}: {shown} is for {label}, not {task}; leave it out")


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
