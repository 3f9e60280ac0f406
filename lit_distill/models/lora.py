"""LoRA students through ``peft``: wrap a ``transformers`` model, export adapter and merged weights.

Only the adapter weights train: ``peft`` freezes the base model, and
``DistillationModule.configure_optimizers`` hands the optimizer the trainable parameters only.
Checkpoints hold the adapters, the other trainable parameters and the buffers, under ``peft``'s
names, but not the frozen base weights (:func:`frozen_base_keys`): resume and ``export`` rebuild
the student from the same config, which loads the base from its ``path`` again
(:func:`restore_frozen_base`). A 7B base in bf16 would otherwise add 14 GB to every checkpoint.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from lit_distill.errors import ConfigError

#: ``lora:`` keys and their ``peft.LoraConfig`` names.
LORA_FIELDS = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "target_modules",
               "bias": "bias", "modules_to_save": "modules_to_save"}
ADAPTER_DIR = "adapter"
#: ``HFModel`` tasks -> ``peft.TaskType`` names; a classification type makes peft train the head in full.
PEFT_TASKS = {"causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS",
              "token-classification": "TOKEN_CLS", "feature-extraction": "FEATURE_EXTRACTION", "masked-lm": None}


def apply_lora(model: Any, options: dict[str, Any], field: str, task: str = "causal-lm") -> Any:
    """Wrap a ``transformers`` model in a ``peft`` LoRA model (base frozen, adapters trainable).

    Args:
        model: a ``transformers`` ``PreTrainedModel``.
        options: ``{r, alpha, dropout, target_modules, bias, modules_to_save}``; ``r`` and
            ``target_modules`` (e.g. ``[q_proj, v_proj]`` or ``all-linear``) matter most;
            the others default to peft's.
        field: the config field, for messages (e.g. ``HFCausalLM.lora``).
        task: the ``HFModel`` task (:data:`PEFT_TASKS`); for classification tasks peft also
            trains the classifier head in full (it is new, so adapters alone cannot fit it).

    Returns:
        A ``peft.PeftModel`` (e.g. ``PeftModelForCausalLM``) in the model's train/eval mode.
    """
    from peft import LoraConfig, get_peft_model

    unknown = sorted(set(options) - set(LORA_FIELDS))
    if unknown:
        raise ConfigError(f"{field}: unknown keys {unknown}; valid: {sorted(LORA_FIELDS)}")
    if int(options.get("r", 8)) < 1:
        raise ConfigError(f"{field}.r: the LoRA rank must be >= 1, got {options['r']}")
    kwargs = {LORA_FIELDS[key]: value for key, value in options.items()}
    if isinstance(kwargs.get("target_modules"), (list, tuple)):
        kwargs["target_modules"] = list(kwargs["target_modules"])
    try:
        wrapped = get_peft_model(model, LoraConfig(task_type=PEFT_TASKS.get(task), **kwargs))
    except ValueError as err:  # e.g. target modules that match nothing
        raise ConfigError(f"{field}: {str(err).splitlines()[0]}") from err
    return wrapped.train(model.training)


def export_lora(model: Any, out_dir: str, base_path: str | None) -> None:
    """Write merged weights to ``out_dir`` and the adapter alone to ``out_dir/adapter``.

    ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads the merged model (the base with
    ``B @ A * alpha / r`` added to each adapted weight); ``PeftModel.from_pretrained(base,
    out_dir/adapter)`` puts the adapter back on the base model at ``base_path``.

    Args:
        model: the ``peft`` model to export (left unchanged).
        out_dir: directory to write.
        base_path: the base model's directory or hub id, recorded in the adapter's config.
    """
    adapter_dir = os.path.join(out_dir, ADAPTER_DIR)
    if base_path is not None:
        for config in model.peft_config.values():
            config.base_model_name_or_path = base_path
    model.save_pretrained(adapter_dir)
    copy.deepcopy(model).merge_and_unload().save_pretrained(out_dir)


def export_dirs(out_dir: str) -> list[str]:
    """The directories of an export that get a tokenizer: ``out_dir`` and, for a LoRA student, its adapter."""
    adapter_dir = os.path.join(out_dir, ADAPTER_DIR)
    return [out_dir, adapter_dir] if os.path.isdir(adapter_dir) else [out_dir]


def frozen_base_keys(student: Any, prefix: str = "") -> set[str]:
    """State-dict keys of a LoRA student's frozen parameters (empty for a student without LoRA).

    They are the base model's weights, loaded from the adapter's ``path`` whenever the student is
    built, so checkpoints leave them out.
    """
    if not getattr(student, "lora", None):
        return set()
    return {prefix + name for name, param in student.named_parameters() if not param.requires_grad}


def restore_frozen_base(state: dict[str, Any], student: Any, prefix: str = "") -> None:
    """Fill a checkpoint's ``state`` with the rebuilt LoRA student's frozen base weights it left out."""
    current = student.state_dict(prefix=prefix)
    for key in frozen_base_keys(student, prefix):
        state.setdefault(key, current[key])
