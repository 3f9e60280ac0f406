"""Any Hugging Face ``transformers`` model family through one adapter, as timm has one ``create_model``.

``HFModel(task=..., path=... | config=...)`` picks the auto class from ``task`` and returns the
same :class:`~lit_distill.contracts.ModelOutput` whatever the family:

========================== ===================================== ==============================
task                       auto class                            logits
========================== ===================================== ==============================
``causal-lm``              ``AutoModelForCausalLM``              ``[B, L, V]``
``masked-lm``              ``AutoModelForMaskedLM``              ``[B, L, V]``
``sequence-classification`` ``AutoModelForSequenceClassification`` ``[B, C]``
``token-classification``   ``AutoModelForTokenClassification``   ``[B, L, C]``
``feature-extraction``     ``AutoModel`` (a bare encoder)        none
``speech-encoder``         ``AutoModel`` on waveforms            none
``speech-ctc``             ``AutoModelForCTC`` on waveforms      ``[B, F, C]`` per frame
``whisper-encoder``        Whisper's encoder on waveforms        none
========================== ===================================== ==============================

Features: ``last_hidden_state`` ``[B, L, D]`` (the last layer's output),
``cls_pooled`` ``[B, D]`` (the first token's last hidden state), ``mean_pooled`` ``[B, D]`` (the
mean over ``attention_mask``, sentence-embedding style) and, with ``output_attentions``,
``attentions.<i>`` ``[B, heads, L, L]`` per layer (post-softmax; negative indices too). Hidden states with
``output_hidden_states`` (embeddings first). A ``causal-lm`` returns the pooled features only with
``output_hidden_states`` (a large teacher would otherwise keep every layer's output alive during its
forward just to pool the last one), and with ``compute_logits: false`` it skips its LM head for fused
losses (see :class:`HFModel`).

The speech tasks read ``waveform`` ``[B, 1, T]`` (or ``[B, T]``) and an optional bool
``waveform_mask`` ``[B, T]`` through a front end of their own (``FRONT_ENDS``: HuBERT / WavLM /
wav2vec 2.0 in :mod:`~lit_distill.models.speech_front_end`; Whisper's log-mel and ``frame_mask`` in
:mod:`~lit_distill.models.whisper_front_end`) and return ``last_hidden_state`` ``[B, F, D]``;
``speech-ctc`` (a ``...ForCTC`` model, e.g. trained with :class:`lit_distill.losses.CTC`) also its class
logits and ``frame_mask`` ``[B, F]`` (frames of real audio); its export loads as ``speech-encoder`` too. What a
front end adds (Whisper's ``prepare``, ``num_samples``, ...) is reachable on the adapter by name.
Fields that only some tasks take are refused for the others unless left unset.

Thin names: ``lit_distill.models.HFCausalLM`` (``causal-lm``), ``HFSpeechEncoder``
(``speech-encoder``, hidden states always on) and ``HFWhisperEncoder`` (``whisper-encoder``).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from torch import Tensor

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter, parse_dtype
from lit_distill.models.hf_loading import (
    build_from_config,
    check_plain_head,
    check_task_fields,
    copy_tokenizer,
    load_pretrained_checked,
)
from lit_distill.models.speech_front_end import SpeechCTCFrontEnd, SpeechEncoderFrontEnd
from lit_distill.models.whisper_front_end import WHISPER_SAMPLE_RATE, WhisperFrontEnd
from lit_distill.sources import OutputSpec

Task = Literal["causal-lm", "masked-lm", "sequence-classification", "token-classification", "feature-extraction",
               "speech-encoder", "speech-ctc", "whisper-encoder"]
AUTO_CLASSES = {"causal-lm": "AutoModelForCausalLM", "masked-lm": "AutoModelForMaskedLM",
                "sequence-classification": "AutoModelForSequenceClassification",
                "token-classification": "AutoModelForTokenClassification", "feature-extraction": "AutoModel"}
# tasks whose inputs go through a front end of their own (loading, inputs, outputs)
FRONT_ENDS = {"speech-encoder": SpeechEncoderFrontEnd, "speech-ctc": SpeechCTCFrontEnd,
              "whisper-encoder": WhisperFrontEnd}
_CLASSIFIERS = ("sequence-classification", "token-classification")
_TEXT = tuple(AUTO_CLASSES)
# field -> (the tasks that take it, what they are called in messages, its value when left unset)
_TASK_FIELDS = {
    "compute_logits": (("causal-lm",), "task causal-lm", True),
    # (the label keeps its historic wording: speech-ctc takes it too)
    "normalize": (("speech-encoder", "speech-ctc"), "task speech-encoder", False),
    "num_classes": ((*_TEXT, "speech-ctc"), "the text tasks and speech-ctc", None),
    "sample_rate": (("whisper-encoder",), "task whisper-encoder", WHISPER_SAMPLE_RATE),
    **{field: (_TEXT, "the text tasks", unset) for field, unset in (
        ("vocab_size", None), ("pad_token_id", None), ("trust_remote_code", False),
        ("attn_implementation", None), ("output_attentions", False), ("lora", None))},
}


class HFModel(ModelAdapter):
    """A ``transformers`` model of any family (``task`` picks the auto class) as a lit_distill model.

    Give exactly one of ``path`` (a hub id or a ``save_pretrained`` directory) or ``config``
    (``model_type`` and the architecture's fields, for a fresh randomly initialised model).

    Args:
        task: ``causal-lm``, ``masked-lm``, ``sequence-classification``,
            ``token-classification``, ``feature-extraction``, ``speech-encoder``, ``speech-ctc`` or
            ``whisper-encoder`` (see the module docstring).
        path: hub id (e.g. ``bert-base-uncased``, ``facebook/hubert-base-ls960``,
            ``openai/whisper-large-v3``) or local directory. ``whisper-encoder`` keeps the encoder
            of a ``WhisperModel`` / ``WhisperForConditionalGeneration`` (or of an exported encoder).
        config: architecture fields for a model built from scratch, e.g.
            ``{model_type: bert, hidden_size: 64, num_hidden_layers: 2, ...}``; for
            ``speech-encoder`` e.g. ``{model_type: hubert, ..., conv_dim: [32, 32], conv_stride:
            [5, 4], conv_kernel: [10, 4]}``; for ``whisper-encoder`` Whisper config fields
            (``d_model``, ``encoder_layers``, ``num_mel_bins``, ``max_source_positions``, ...).
        vocab_size: the data's tokenizer size (linked from the datamodule by the CLI): sets the
            vocabulary of a fresh model; checked against a loaded one's embeddings.
        pad_token_id: the data's pad id (linked from the datamodule).
        num_classes: labels of a classification task (linked from the datamodule's
            ``num_classes``): sets ``num_labels`` of a fresh model; checked against a loaded one.
            For ``speech-ctc`` the CTC classes (blank included): a fresh model's ``vocab_size``.
        dtype: load the weights in this dtype (``bfloat16``, ``float32``, ...).
        trust_remote_code: allow code shipped with the checkpoint to run. Off unless you trust it.
        revision: hub revision (branch, tag or commit).
        attn_implementation: e.g. ``sdpa`` or ``eager`` (``output_attentions`` needs ``eager``).
        output_hidden_states: also return every layer's hidden states (speech: the CNN /
            convolution-and-position features first).
        output_attentions: also return every layer's attention maps as features.
        hooks: module paths whose outputs are recorded as features.
        compute_logits: ``causal-lm`` only. False skips the LM head: ``logits`` is None and the
            features hold ``last_hidden_state`` ``[B, L, D]`` (after the final norm), the head's
            ``lm_head.weight`` ``[V, D]`` and, if it has one, ``lm_head.bias`` ``[V]``, for fused
            losses (``lit_distill.losses.FusedForwardKL``) that never build full ``[B, L, V]``
            logits. Only for models whose logits are exactly ``hidden @ weight.T + bias`` (no
            soft-capping or logit scale; checked).
        lora: train LoRA adapters only, through ``peft``: ``{r: 8, alpha: 16, dropout: 0.0,
            target_modules: [q_proj, v_proj]}`` (also ``bias``, ``modules_to_save``;
            :mod:`lit_distill.models.lora`), on the model loaded from ``path``; the base stays
            frozen and, for classification tasks, the new head trains in full. Export writes the
            merged model and the adapter in ``adapter/``.
        normalize: ``speech-encoder`` and ``speech-ctc`` only. Normalise every utterance to zero mean and unit
            variance before the model (as the checkpoint's ``preprocessor_config.json``
            ``do_normalize`` says).
        sample_rate: ``whisper-encoder`` only. Rate of the waveforms (Hz); other rates than
            16 kHz are resampled (differentiably).
    """

    def __init__(self, task: Task = "causal-lm", path: str | None = None, config: dict[str, Any] | None = None,
                 vocab_size: int | None = None, pad_token_id: int | None = None, num_classes: int | None = None,
                 dtype: str | None = None, trust_remote_code: bool = False, revision: str | None = None,
                 attn_implementation: str | None = None, output_hidden_states: bool = False,
                 output_attentions: bool = False, hooks: list[str] | None = None, compute_logits: bool = True,
                 lora: dict[str, Any] | None = None, normalize: bool = False,
                 sample_rate: int = WHISPER_SAMPLE_RATE) -> None:
        super().__init__(hooks)
        name = type(self).__name__  # the thin names' messages name their own fields
        if task not in (*AUTO_CLASSES, *FRONT_ENDS):
            raise ConfigError(f"{name}.task: '{task}' is not one of {sorted((*AUTO_CLASSES, *FRONT_ENDS))}")
        if (path is None) == (config is None):
            raise ConfigError(f"{name}: give exactly one of 'path' (hub id or local directory) or 'config' "
                              "(a dict with model_type, to build a fresh model)")
        check_task_fields(name, task, _TASK_FIELDS, compute_logits=compute_logits, normalize=normalize,
                          sample_rate=sample_rate, vocab_size=vocab_size, pad_token_id=pad_token_id,
                          num_classes=num_classes, trust_remote_code=trust_remote_code,
                          attn_implementation=attn_implementation, output_attentions=output_attentions, lora=lora)
        self.task, self.path, self.compute_logits = task, path, compute_logits
        self.lora = None  # set after loading: the checks read the plain model
        self.output_hidden_states, self.output_attentions = output_hidden_states, output_attentions
        torch_dtype = parse_dtype(dtype, f"{name}.dtype")
        self.front_end = None
        if task in FRONT_ENDS:  # loading, inputs and outputs of its own
            front_end = FRONT_ENDS[task]
            # .train(): as for the text tasks below
            built = {"num_classes": num_classes} if "num_classes" in front_end.fields else {}
            self.module = (front_end.load(path, f"{name}.path", torch_dtype, revision).train() if path is not None
                           else front_end.build(dict(config), f"{name}.config", torch_dtype, **built))
            options = {"normalize": normalize, "sample_rate": sample_rate, "num_classes": num_classes}
            self.front_end = front_end(self.module, name, **{field: options[field] for field in front_end.fields})
            self._install_hooks()
            return
        if output_attentions and attn_implementation is None:
            attn_implementation = "eager"  # sdpa and flash kernels do not return attention maps
        import transformers

        auto_class = getattr(transformers, AUTO_CLASSES[task])
        labels = {"num_labels": num_classes} if task in _CLASSIFIERS and num_classes is not None else {}
        if path is not None:
            example = "Qwen/Qwen2.5-0.5B" if task == "causal-lm" else "bert-base-uncased"
            # from_pretrained returns eval mode; a student must train with its dropout, as a model built
            # from a config does (Lightning keeps submodules' modes). Teacher sets eval itself.
            self.module = load_pretrained_checked(auto_class, path, f"{name}.path", example,
                                                  trust_remote_code=trust_remote_code, dtype=torch_dtype,
                                                  revision=revision, attn_implementation=attn_implementation,
                                                  **labels).train()
            self._check_loaded(vocab_size, name)
        else:
            self.module = build_from_config(auto_class, dict(config), f"{name}.config", vocab_size, pad_token_id,
                                            torch_dtype, attn_implementation, **labels)
        if not compute_logits:
            check_plain_head(self.module, f"{name}.compute_logits")
        if lora:
            if path is None:
                raise ConfigError(f"{name}.lora: adapts a pretrained model; give 'path', not 'config'")
            from lit_distill.models.lora import apply_lora

            self.module = apply_lora(self.module, dict(lora), f"{name}.lora", task)
            self.lora = dict(lora)
        self._install_hooks()

    @property
    def model(self):
        """The ``transformers`` model (under a LoRA student's ``peft`` wrapper, with its adapters)."""
        return self.module.get_base_model() if self.lora else self.module

    def __getattr__(self, name: str) -> Any:
        # what a speech task's front end adds (Whisper's prepare, num_samples, ...), by name
        try:
            return super().__getattr__(name)
        except AttributeError:
            front_end = self.__dict__.get("_modules", {}).get("front_end")
            if front_end is None or name not in front_end.exports:
                raise
            return getattr(front_end, name)

    def _check_loaded(self, vocab_size: int | None, name: str) -> None:
        """A loaded model must cover the data's tokenizer: a causal LM's head, other models' embeddings."""
        if vocab_size is None:
            return
        if self.task == "causal-lm":
            size, what = self.output_size, "has {} output logits"
        else:
            embeddings = self.model.get_input_embeddings()
            size, what = (None if embeddings is None else embeddings.weight.shape[0]), "embeds {} tokens"
        if size is not None and size < vocab_size:
            raise ConfigError(f"{name}.path: the model at '{self.path}' {what.format(size)} but the data's "
                              f"tokenizer has {vocab_size}; use the tokenizer that belongs to this model")

    @property
    def output_size(self) -> int | None:
        if self.task in _CLASSIFIERS:
            return int(self.model.config.num_labels)
        if self.front_end is not None:  # the CTC task's classes; none for the encoders
            return getattr(self.front_end, "output_size", None)
        if self.task == "feature-extraction":
            return None
        head = self.model.get_output_embeddings()
        return head.weight.shape[0] if head is not None else int(self.model.config.vocab_size)

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states."""
        return int(self.model.config.hidden_size)

    @property
    def _pools(self) -> bool:
        """Whether :meth:`run` returns the pooled features (see the module docstring)."""
        return self.task != "causal-lm" or self.output_hidden_states

    def declared_outputs(self) -> OutputSpec:
        """Logits (not for ``feature-extraction`` or ``compute_logits: false``), the pooled features
        or the LM head, and, when asked, hidden states and attention maps (see the module docstring)."""
        if self.front_end is not None:
            return self.front_end.declared_outputs(self.model.config, self.output_hidden_states)
        layers = int(getattr(self.model.config, "num_hidden_layers", 0)) or None
        features = {"last_hidden_state", "cls_pooled", "mean_pooled"} if self._pools else set()
        if not self.compute_logits:
            head = self.model.get_output_embeddings()
            features |= {"last_hidden_state", "lm_head.weight"}
            features |= {"lm_head.bias"} if getattr(head, "bias", None) is not None else set()
        if self.output_attentions and layers:
            features |= {f"attentions.{i}" for i in range(-layers, layers)}
        hidden = (None if layers is None else layers + 1) if self.output_hidden_states else 0
        return OutputSpec(logits=self.compute_logits and self.task != "feature-extraction", hidden_states=hidden,
                          features=frozenset(features), closed=layers is not None or not self.output_attentions)

    def run(self, **inputs: Any) -> ModelOutput:
        if self.front_end is not None:
            return self.front_end.run(self.module, self.output_hidden_states, **inputs)
        features: dict[str, Tensor] = {}
        if self.compute_logits:
            extra = {"use_cache": False} if self.task == "causal-lm" else {}
            # the pooled features need the last hidden state, which models with a head only return
            # among all of them (a tuple of references: no extra compute)
            bare = self.task == "feature-extraction"
            out = self.module(**inputs, output_hidden_states=self.output_hidden_states or (self._pools and not bare),
                              output_attentions=self.output_attentions, **extra)
            logits = getattr(out, "logits", None)
            last = out.last_hidden_state if bare else out.hidden_states[-1] if out.hidden_states else None
        else:  # the base model only; the head's parameters go to the (fused) loss as features
            out = self.model.base_model(**inputs, output_hidden_states=self.output_hidden_states,
                                        output_attentions=self.output_attentions, use_cache=False)
            logits, last = None, out.last_hidden_state
            head = self.model.get_output_embeddings()
            features = {"last_hidden_state": last, "lm_head.weight": head.weight}
            if getattr(head, "bias", None) is not None:
                features["lm_head.bias"] = head.bias
        if self._pools:
            features.update(last_hidden_state=last, cls_pooled=last[:, 0],
                            mean_pooled=mean_pool(last, inputs.get("attention_mask")))
        if self.output_attentions:
            n = len(out.attentions)
            for i, attention in enumerate(out.attentions):
                features[f"attentions.{i}"] = features[f"attentions.{i - n}"] = attention
        return ModelOutput(logits=logits, features=features,
                           hidden_states=tuple(out.hidden_states) if self.output_hidden_states else None)

    def export(self, out_dir: str) -> None:
        """``save_pretrained`` the model, plus the tokenizer saved beside a loaded checkpoint.

        A LoRA student writes its merged weights there and its adapter in ``out_dir/adapter``
        (the tokenizer in both).
        """
        from lit_distill.models.lora import export_dirs, export_lora

        if self.lora:
            export_lora(self.module, out_dir, self.path)
        else:
            self.module.save_pretrained(out_dir)
        if self.path is not None and os.path.isdir(self.path) and self.front_end is None:
            for target in export_dirs(out_dir):
                copy_tokenizer(self.path, target)


def mean_pool(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mean of ``hidden`` ``[B, L, D]`` over the positions where ``attention_mask`` ``[B, L]`` is set."""
    if attention_mask is None:
        return hidden.mean(1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
