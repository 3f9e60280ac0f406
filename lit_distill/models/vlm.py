"""LLaVA-style vision-language models: vision encoder + projector + HF causal LM.

Batch inputs (see :mod:`datamodules.vlm`): ``input_ids`` ``[B, L]`` with ``N``
copies of the image placeholder token per sample (``N`` = the number of image
tokens the vision tower gives), ``attention_mask`` ``[B, L]`` and
``pixel_values`` ``[B, 3, H, W]``. The embeddings at the placeholder positions
are replaced, in order, by the projected image tokens; the causal LM then runs
on the embeddings. Outputs: ``logits`` ``[B, L, V]``, and
``features["moe_aux_loss"]`` (0-dim) when the LM has MoE layers
(:mod:`lit_distill.models.moe`).

Two adapters:

- :class:`LlavaComposition` composes any vision adapter that returns
  ``features["tokens"]`` ``[B, N, D_v]`` (``TimmModel`` ViTs,
  :class:`HFVisionTower` for transformers' CLIP/SigLIP vision models) or
  ``features["pooled"]`` ``[B, D_v]`` (one image token, e.g.
  ``OpenClipImageTower``), an MLP projector, and an ``HFCausalLM``.
- :class:`HFLlava` wraps transformers' ``LlavaForConditionalGeneration`` as it is.

Both can sparse-upcycle their LM (``moe``), freeze all but ``trainable``
parameters, and start from saved weights (``init_from``).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter, parse_dtype
from lit_distill.models.hf import HFCausalLM
from lit_distill.models.hf_loading import load_pretrained_checked
from lit_distill.models.moe import moe_aux_loss, upcycle
from lit_distill.sources import OutputSpec


class HFVisionTower(ModelAdapter):
    """A transformers vision encoder (CLIP, SigLIP, ... vision model) giving patch tokens.

    Give ``path`` (hub id or local directory of a vision model or of a whole
    CLIP/SigLIP model, whose ``vision_model`` is used) or ``config`` (a dict with
    ``model_type``, e.g. ``clip_vision_model``, and its fields).

    Outputs ``features["tokens"]`` ``[B, N, D]`` (hidden states of layer
    ``select_layer``, class token removed, as LLaVA uses) and ``features["pooled"]``
    ``[B, D]``.

    Args:
        path: hub id (e.g. ``openai/clip-vit-large-patch14-336``) or local directory.
        config: architecture fields of a fresh vision model.
        select_layer: which hidden state gives the tokens (LLaVA: -2, the penultimate).
        dtype: load the weights in this dtype.
    """

    def __init__(self, path: str | None = None, config: dict[str, Any] | None = None,
                 select_layer: int = -2, dtype: str | None = None) -> None:
        super().__init__()
        if (path is None) == (config is None):
            raise ConfigError("HFVisionTower: give exactly one of 'path' or 'config'")
        from transformers import AutoConfig, AutoModel

        torch_dtype = parse_dtype(dtype, "HFVisionTower.dtype")
        kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
        if path is not None:
            module = load_pretrained_checked(AutoModel, path, "HFVisionTower.path",
                                             "openai/clip-vit-large-patch14-336", **kwargs)
        else:
            fields = dict(config)
            model_type = fields.pop("model_type", None)
            if model_type is None:
                raise ConfigError("HFVisionTower.config: needs 'model_type' (e.g. clip_vision_model)")
            module = AutoModel.from_config(AutoConfig.for_model(model_type, **fields), **kwargs)
        # a whole CLIP/SigLIP model: keep its vision half
        self.module = module.vision_model if hasattr(module, "text_model") else module
        self.select_layer = select_layer
        cfg = self.module.config
        self.image_size = int(cfg.image_size)
        patches = (cfg.image_size // cfg.patch_size) ** 2
        self._num_patches = patches

    def run(self, pixel_values: Tensor) -> ModelOutput:
        out = self.module(pixel_values=pixel_values, output_hidden_states=True)
        hidden = out.hidden_states[self.select_layer]
        tokens = hidden[:, hidden.shape[1] - self._num_patches:]  # drop a class token if any
        features = {"tokens": tokens}
        if getattr(out, "pooler_output", None) is not None:
            features["pooled"] = out.pooler_output
        return ModelOutput(features=features)


class _Projector(nn.Sequential):
    """LLaVA-1.5's MLP projector: Linear → GELU → Linear (``depth`` linears)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int) -> None:
        if depth < 1:
            raise ConfigError(f"LlavaComposition.projector_depth: must be >= 1, got {depth}")
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        super().__init__(*layers)


def image_tokens(out: ModelOutput, feature: str | None = None) -> Tensor:
    """``[B, N, D]`` image tokens from a vision adapter's output.

    ``feature`` names the entry of ``out.features`` to use (e.g. a hooked module path); a
    ``[B, C, H, W]`` feature map becomes ``H·W`` tokens ``[B, H·W, C]`` (row-major). None:
    ``tokens``, else ``pooled`` as one token.
    """
    if feature is not None:
        if feature not in out.features:
            raise ConfigError(f"LlavaComposition.vision_feature: '{feature}' is not among the vision "
                              f"adapter's features {sorted(out.features)} (hook it with vision hooks)")
        value = out.features[feature]
        if value.ndim == 4:
            return value.flatten(2).transpose(1, 2)
        return value if value.ndim == 3 else value[:, None]
    if "tokens" in out.features:
        return out.features["tokens"]
    if "pooled" in out.features:
        return out.features["pooled"][:, None]
    raise ConfigError("LlavaComposition.vision: the vision adapter returns neither features['tokens'] "
                      f"nor features['pooled'] (got {sorted(out.features)})")


def insert_image_features(embeds: Tensor, input_ids: Tensor, image_features: Tensor,
                          image_token_id: int) -> Tensor:
    """Replace the embeddings at placeholder positions by image features, in order.

    Args:
        embeds: ``[B, L, D]`` token embeddings.
        input_ids: ``[B, L]``; each row holds exactly ``N`` ``image_token_id`` entries.
        image_features: ``[B, N, D]``.
        image_token_id: the placeholder id.

    Returns:
        ``[B, L, D]``.
    """
    mask = (input_ids == image_token_id)[..., None]
    return embeds.masked_scatter(mask, image_features.to(embeds.dtype))


def apply_trainable(model: nn.Module, patterns: list[str] | None, field: str) -> None:
    """Freeze every parameter whose name matches none of the glob ``patterns`` (None: train all)."""
    if patterns is None:
        return
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ConfigError(f"{field}: pattern '{pattern}' matches no parameter "
                              f"(e.g. {names[:3]} ... {names[-3:]})")
    for name, param in model.named_parameters():
        param.requires_grad_(any(fnmatch.fnmatchcase(name, p) for p in patterns))


def _load_init(model: nn.Module, path: str, field: str) -> None:
    """Load ``student.*`` weights of a Lightning checkpoint, or the export directory of ``model``."""
    p = Path(path)
    if p.is_file():
        checkpoint = torch.load(p, map_location="cpu", weights_only=False)
        state = checkpoint.get("state_dict", checkpoint)
        if any(k.startswith("student.") for k in state):
            state = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"{field}: '{path}' does not fit this model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}); build the same architecture (moe too)")
        return
    if not p.is_dir():
        raise ConfigError(f"{field}: no checkpoint file or export directory '{path}'")
    model.load_export(str(p))


def _read_safetensors_dir(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"init_from: no *.safetensors weights in '{path}'")
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _load_lm_weights(lm: nn.Module, path: Path, field: str) -> None:
    """Strictly load ``save_pretrained`` weights (MoE experts included); tied heads may be absent."""
    state = _read_safetensors_dir(path)
    missing, unexpected = lm.load_state_dict(state, strict=False)
    out_emb, in_emb = lm.get_output_embeddings(), lm.get_input_embeddings()
    tied = out_emb is not None and out_emb.weight is in_emb.weight
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise ConfigError(f"{field}: LM weights in '{path}' do not fit (missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}); build the same architecture (moe too)")


class LlavaComposition(ModelAdapter):
    """Vision encoder + MLP projector + HF causal LM, LLaVA style.

    Args:
        vision: a vision adapter returning ``features["tokens"]`` ``[B, N, D_v]`` or
            ``features["pooled"]`` ``[B, D_v]``, e.g. ``lit_distill.models.TimmModel``
            (``num_classes: 0``), :class:`HFVisionTower`, ``OpenClipImageTower``.
        image_token_id: id of the image placeholder token in ``input_ids`` (each sample
            holds ``num_image_tokens`` of them; see :mod:`datamodules.vlm`).
        lm_path: hub id or local directory of the causal LM (as ``HFCausalLM.path``);
            an MoE LM saved by :meth:`export` loads here only with the same ``moe``.
        lm_config: architecture fields of a fresh LM (as ``HFCausalLM.config``).
        vocab_size: vocabulary of the data's tokenizer (linked from the datamodule).
        pad_token_id: pad id of the data's tokenizer (linked from the datamodule).
        projector_depth: linear layers of the projector (LLaVA-1.5: 2).
        moe: sparse-upcycle the LM, e.g. ``{every: 2, num_experts: 4, top_k: 2,
            capacity_factor: 1.5}`` (arguments of :func:`lit_distill.models.moe.upcycle`).
        trainable: glob patterns of parameter names to train (the rest is frozen), e.g.
            ``["lm.*.experts.*", "lm.*.router.*", "projector.*"]``; None trains everything.
            A vision tower left wholly frozen also stays in eval mode (BatchNorm statistics fixed).
        init_from: start from saved weights: a Lightning checkpoint (its ``student.*``
            entries) or a directory written by :meth:`export`; applied after ``moe``.
        vision_image_size: side of the images used to probe the vision tower's
            output shape at build time (default: the tower's ``input_size``/``image_size``).
        vision_feature: which vision feature gives the image tokens: a name in the vision
            adapter's ``features`` (e.g. a CNN stage recorded with the adapter's ``hooks``, whose
            ``[B, C, H, W]`` map becomes ``H·W`` tokens); None: ``tokens``, else ``pooled``.
        dtype: LM dtype (as ``HFCausalLM.dtype``).
        attn_implementation: LM attention implementation.
    """

    def __init__(
        self,
        vision: nn.Module,
        image_token_id: int,
        lm_path: str | None = None,
        lm_config: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        pad_token_id: int | None = None,
        projector_depth: int = 2,
        moe: dict[str, Any] | None = None,
        trainable: list[str] | None = None,
        init_from: str | None = None,
        vision_image_size: int | None = None,
        vision_feature: str | None = None,
        dtype: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.image_token_id = int(image_token_id)
        self.vision_feature = vision_feature
        self.lm = HFCausalLM(path=lm_path, config=lm_config, vocab_size=vocab_size, pad_token_id=pad_token_id,
                             dtype=dtype, attn_implementation=attn_implementation)
        if vocab_size is not None and not 0 <= self.image_token_id < vocab_size:
            raise ConfigError(f"LlavaComposition.image_token_id: {image_token_id} is outside the "
                              f"tokenizer's {vocab_size} ids")
        self.num_image_tokens, vision_dim = self._probe_vision(vision_image_size)
        text_hidden = self.module.get_input_embeddings().weight.shape[1]
        self.projector = _Projector(vision_dim, text_hidden, projector_depth)
        self.moe_args = dict(moe) if moe is not None else None
        if self.moe_args is not None:
            try:
                upcycle(self.module, **self.moe_args)
            except TypeError as err:
                raise ConfigError(f"LlavaComposition.moe: {err} (valid keys: every, offset, num_experts, "
                                  "top_k, capacity_factor, router_std)") from err
        if init_from is not None:
            _load_init(self, init_from, "LlavaComposition.init_from")
        apply_trainable(self, trainable, "LlavaComposition.trainable")
        # A frozen vision tower also keeps its normalisation statistics (BatchNorm) fixed.
        self.vision_frozen = not any(p.requires_grad for p in self.vision.parameters())
        self.train(self.training)
        self._checked = False

    def train(self, mode: bool = True) -> LlavaComposition:
        """As ``nn.Module.train``, but a fully frozen vision tower stays in eval mode."""
        super().train(mode)
        if getattr(self, "vision_frozen", False):
            self.vision.eval()
        return self

    @property
    def module(self) -> nn.Module:
        """The causal LM (owned by ``self.lm``; not registered twice)."""
        return self.lm.module

    def _probe_vision(self, image_size: int | None) -> tuple[int, int]:
        size = image_size or getattr(self.vision, "image_size", None) or getattr(self.vision, "input_size", None)
        if size is None:
            raise ConfigError("LlavaComposition.vision_image_size: the vision tower does not say its "
                              "input size; set vision_image_size")
        size = tuple(size[-2:]) if isinstance(size, list | tuple) else (int(size), int(size))
        was_training = self.vision.training
        with torch.no_grad():
            param = next(self.vision.parameters())
            probe = self.vision.eval()(pixel_values=torch.zeros(1, 3, *size, dtype=param.dtype))
            tokens = image_tokens(probe, self.vision_feature)
        self.vision.train(was_training)
        return tokens.shape[1], tokens.shape[2]

    @property
    def output_size(self) -> int | None:
        return self.lm.output_size

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """``[B, 3, H, W]`` → projected image tokens ``[B, N, D_lm]``."""
        return self.projector(image_tokens(self.vision(pixel_values=pixel_values), self.vision_feature))

    def declared_outputs(self) -> OutputSpec:
        """Logits ``[B, L, V]``; ``features.moe_aux_loss`` when the LM has MoE layers."""
        return OutputSpec(logits=True, hidden_states=0)

    def run(self, input_ids: Tensor, pixel_values: Tensor, attention_mask: Tensor | None = None) -> ModelOutput:
        if not self._checked:  # once: the count check needs a host sync
            counts = (input_ids == self.image_token_id).sum(dim=1)
            if not bool((counts == self.num_image_tokens).all()):
                raise ConfigError(f"LlavaComposition: each sample needs {self.num_image_tokens} image "
                                  f"placeholder tokens (id {self.image_token_id}); got {counts.tolist()} "
                                  "(set the datamodule's num_image_tokens)")
            self._checked = True
        embeds = self.module.get_input_embeddings()(input_ids)
        embeds = insert_image_features(embeds, input_ids, self.encode_images(pixel_values), self.image_token_id)
        out = self.module(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        features = {}
        aux = moe_aux_loss(self.module)
        if aux is not None:
            features["moe_aux_loss"] = aux
        return ModelOutput(logits=out.logits, features=features)

    def export(self, out_dir: str) -> None:
        """Write ``lm/`` (``save_pretrained``; a dense LM loads with ``AutoModelForCausalLM``),
        ``vision_projector.pt`` (vision + projector state dict) and ``composition.json``.
        ``init_from: <out_dir>`` on the same architecture loads it back exactly."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.module.save_pretrained(str(out / "lm"))
        state = {k: v for k, v in self.state_dict().items() if k.startswith(("vision.", "projector."))}
        torch.save(state, out / "vision_projector.pt")
        meta = {"image_token_id": self.image_token_id, "num_image_tokens": self.num_image_tokens,
                "moe": self.moe_args}
        (out / "composition.json").write_text(json.dumps(meta, indent=2))

    def load_export(self, path: str) -> None:
        """Load weights written by :meth:`export` (same architecture required)."""
        root = Path(path)
        field = "LlavaComposition.init_from"
        meta_file = root / "composition.json"
        if not meta_file.is_file():
            raise ConfigError(f"{field}: '{path}' has no composition.json (not written by export)")
        meta = json.loads(meta_file.read_text())
        if meta.get("moe") != self.moe_args:
            raise ConfigError(f"{field}: '{path}' was saved with moe={meta.get('moe')} but this model "
                              f"has moe={self.moe_args}")
        _load_lm_weights(self.module, root / "lm", field)
        state = torch.load(root / "vision_projector.pt", map_location="cpu", weights_only=True)
        own = {k for k in self.state_dict() if k.startswith(("vision.", "projector."))}
        if set(state) != own:
            raise ConfigError(f"{field}: vision/projector weights in '{path}' do not fit "
                              f"(differing keys {sorted(set(state) ^ own)[:5]})")
        self.load_state_dict(state, strict=False)


class HFLlava(ModelAdapter):
    """transformers' ``LlavaForConditionalGeneration`` as a lit_distill model.

    Give ``path`` (hub id such as ``llava-hf/llava-1.5-7b-hf`` or a local directory)
    or ``config`` (``LlavaConfig`` fields: ``vision_config`` and ``text_config``
    dicts with ``model_type``, ``image_token_index``, ...; builds offline).

    Args:
        path: hub id or local directory.
        config: fields of a fresh ``LlavaConfig``.
        vocab_size: vocabulary of the data's tokenizer (sets a fresh model's text vocab).
        pad_token_id: pad id of the data's tokenizer.
        moe: sparse-upcycle the language model (see :class:`LlavaComposition`).
        trainable: glob patterns of parameter names to train (names start with ``module.``).
        init_from: a Lightning checkpoint whose ``student.*`` weights are loaded.
        dtype: weights' dtype.
    """

    def __init__(self, path: str | None = None, config: dict[str, Any] | None = None,
                 vocab_size: int | None = None, pad_token_id: int | None = None,
                 moe: dict[str, Any] | None = None, trainable: list[str] | None = None,
                 init_from: str | None = None, dtype: str | None = None) -> None:
        super().__init__()
        if (path is None) == (config is None):
            raise ConfigError("HFLlava: give exactly one of 'path' or 'config'")
        from transformers import LlavaConfig, LlavaForConditionalGeneration

        torch_dtype = parse_dtype(dtype, "HFLlava.dtype")
        kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
        if path is not None:
            self.module = load_pretrained_checked(LlavaForConditionalGeneration, path, "HFLlava.path",
                                                  "llava-hf/llava-1.5-7b-hf", **kwargs)
        else:
            fields = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
            if vocab_size is not None:
                fields.setdefault("text_config", {})["vocab_size"] = vocab_size
            if pad_token_id is not None:
                fields.setdefault("text_config", {}).setdefault("pad_token_id", pad_token_id)
            self.module = LlavaForConditionalGeneration(LlavaConfig(**fields))
            if torch_dtype is not None:
                self.module.to(torch_dtype)
        self.image_token_id = int(self.module.config.image_token_id)
        self.moe_args = dict(moe) if moe is not None else None
        if self.moe_args is not None:
            upcycle(self.language_model, **self.moe_args)
        if init_from is not None:
            _load_init(self, init_from, "HFLlava.init_from")
        apply_trainable(self, trainable, "HFLlava.trainable")

    @property
    def language_model(self) -> nn.Module:
        """The decoder of the language model (where MoE layers go)."""
        inner = getattr(self.module, "model", self.module)
        return getattr(inner, "language_model", None) or self.module.language_model

    @property
    def output_size(self) -> int | None:
        return self.module.get_output_embeddings().weight.shape[0]

    def declared_outputs(self) -> OutputSpec:
        """Logits ``[B, L, V]``; ``features.moe_aux_loss`` when the LM has MoE layers."""
        return OutputSpec(logits=True, hidden_states=0)

    def run(self, input_ids: Tensor, pixel_values: Tensor, attention_mask: Tensor | None = None) -> ModelOutput:
        out = self.module(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                          use_cache=False)
        aux = moe_aux_loss(self.module)
        return ModelOutput(logits=out.logits, features={"moe_aux_loss": aux} if aux is not None else {})

    def export(self, out_dir: str) -> None:
        """``save_pretrained`` (loadable with ``LlavaForConditionalGeneration`` / ``path`` when dense)
        plus ``adapter_state_dict.pt`` (this adapter's exact state, MoE layers included), which
        ``init_from: <out_dir>`` loads."""
        self.module.save_pretrained(out_dir)
        torch.save(self.state_dict(), Path(out_dir) / "adapter_state_dict.pt")

    def load_export(self, path: str) -> None:
        """Load ``adapter_state_dict.pt`` written by :meth:`export` (same architecture required)."""
        state_file = Path(path) / "adapter_state_dict.pt"
        if not state_file.is_file():
            raise ConfigError(f"HFLlava.init_from: '{path}' has no adapter_state_dict.pt (not written by "
                              "export); load a save_pretrained directory with HFLlava.path instead")
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"HFLlava.init_from: '{path}' does not fit this model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}); build the same architecture (moe too)")
