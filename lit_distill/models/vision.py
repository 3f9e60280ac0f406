"""Image classifiers from timm, torchvision and open_clip as lit_distill models.

Every adapter here takes the batch input ``pixel_values`` (``[B, 3, H, W]``
float, normalised) and knows the resolution and normalisation its model
expects (``input_size``, ``mean``, ``std``). :meth:`ImageModelAdapter.prepare`
converts a batch normalised for another model (the datamodule normalises for
the student) into this model's: un-normalise, resize, re-normalise.

Outputs: ``logits`` ``[B, C]`` and ``features["pooled"]`` ``[B, D]`` (the
pooled pre-logits features, or the image embedding of an open_clip tower);
timm ViTs also give ``features["tokens"]`` ``[B, N, D]`` (patch tokens only)
and DeiT distilled models ``features["dist_logits"]``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import Tensor, nn

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.vision_base import (  # noqa: F401 - re-exported
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageModelAdapter,
    _as_size,
    _as_stats,
    _close_names,
    load_checked,
    read_state_dict,
)
from lit_distill.sources import OutputSpec


class TimmModel(ImageModelAdapter):
    """A ``timm`` image model (``timm.create_model``) as a lit_distill model.

    Outputs ``logits`` ``[B, C]`` (None when ``num_classes`` is 0),
    ``features["pooled"]`` ``[B, D]`` (the pre-logits pooled features) and, for
    ViT-style models, ``features["tokens"]`` ``[B, N, D]`` (the patch tokens,
    without CLS/DIST/register tokens).

    DeiT distilled models (``deit_*_distilled_*``) have two heads: ``logits``
    is always the CLS head and ``features["dist_logits"]`` the DIST head, in
    train and eval mode alike (timm itself returns a tuple in train mode and
    their average in eval). At inference, average the two as DeiT does;
    ``features["pooled"]`` is the average of the CLS and DIST tokens.

    Default ``mean``/``std`` come from the model's pretrained config; the
    default ``input_size`` is the fixed image size of a ViT-style model, else
    the pretrained config's size when ``pretrained`` is on, else None (batches
    are used at their own size).

    Args:
        name: timm model name, e.g. ``resnet18`` or ``deit_tiny_distilled_patch16_224``.
        pretrained: load timm's pretrained weights (downloads them unless cached).
        checkpoint: local state-dict file (``torch.save(model.state_dict())``) loaded
            into the model after it is built.
        num_classes: number of classes of the classifier (0: no classifier). None
            keeps the model's default (1000 for ImageNet models).
        model_kwargs: further keyword arguments of ``timm.create_model``, e.g.
            ``{img_size: 32, patch_size: 4, drop_path_rate: 0.1}``.
        input_size: side of the square images the model expects; overrides the default.
        mean: per-channel normalisation mean the model expects; overrides the default.
        std: per-channel normalisation std the model expects; overrides the default.
        hooks: module paths whose outputs are recorded as features.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        checkpoint: str | None = None,
        num_classes: int | None = None,
        model_kwargs: dict | None = None,
        input_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        hooks: list[str] | None = None,
    ) -> None:
        import timm
        from timm.data import resolve_data_config

        if not timm.is_model(name):
            parts = {p for p in name.replace("-", "_").split("_") if len(p) >= 3}
            pool = sorted({m for p in parts for m in timm.list_models(f"*{p}*")}) or timm.list_models()
            raise ConfigError(f"TimmModel.name: unknown timm model '{name}' "
                              f"(similar: {_close_names(name, pool)}; see timm.list_models())")
        kwargs = dict(model_kwargs or {})
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        try:
            module = timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as err:
            raise ConfigError(f"TimmModel.model_kwargs: {kwargs} not accepted by '{name}': {err}") from err
        except (RuntimeError, OSError) as err:
            if not pretrained:
                raise
            raise ConfigError(f"TimmModel.pretrained: could not load pretrained weights of '{name}' "
                              f"(is the hub reachable, or the weights cached?): "
                              f"{str(err).splitlines()[0]}") from err
        data_cfg = resolve_data_config({}, model=module)
        patch_embed = getattr(module, "patch_embed", None)
        fixed = getattr(patch_embed, "img_size", None)
        # a ViT without dynamic_img_size only takes its own resolution
        strict_size = None
        if fixed is not None and not getattr(patch_embed, "dynamic_img_size", False):
            default_size: Any = fixed
            strict_size = tuple(int(v) for v in fixed)
        else:
            default_size = data_cfg["input_size"] if pretrained else None
        super().__init__(input_size if input_size is not None else default_size,
                         mean if mean is not None else data_cfg["mean"],
                         std if std is not None else data_cfg["std"], hooks)
        self.module = module
        self.name = name
        self.model_kwargs = kwargs
        self.fixed_size: tuple[int, int] | None = strict_size
        self.distilled = hasattr(module, "head_dist")
        if checkpoint is not None:
            self._load_checkpoint(module, checkpoint)
        self._install_hooks()

    @property
    def output_size(self) -> int | None:
        return self.module.num_classes or None

    def declared_outputs(self) -> OutputSpec:
        """Logits (when the model has a head), ``features.pooled``, ``features.dist_logits`` for
        distilled models; ``features.tokens`` for token models (known only when run)."""
        names = {"pooled"} | ({"dist_logits"} if self.distilled else set())
        return OutputSpec(logits=bool(self.module.num_classes) or self.distilled, hidden_states=0,
                          features=frozenset(names))

    def run(self, pixel_values: Tensor) -> ModelOutput:
        m = self.module
        if self.fixed_size is not None and tuple(pixel_values.shape[-2:]) != self.fixed_size:
            h, w = self.fixed_size
            raise ConfigError(
                f"TimmModel '{self.name}' takes {h}x{w} images but got "
                f"{pixel_values.shape[-2]}x{pixel_values.shape[-1]}: set the data's image_size "
                f"(data.init_args.image_size) to {h}, or model_kwargs.img_size to the data's size")
        feats = m.forward_features(pixel_values)
        features: dict[str, Tensor] = {}
        if self.distilled and getattr(m, "num_prefix_tokens", 0) >= 2:  # DeiT: CLS and DIST tokens
            cls_token, dist_token = m.head_drop(feats[:, 0]), m.head_drop(feats[:, 1])
            features["pooled"] = (cls_token + dist_token) / 2
            logits = m.head(cls_token)
            features["dist_logits"] = m.head_dist(dist_token)
        elif self.distilled:  # e.g. LeViT: both heads read the same pooled features
            features["pooled"] = m.forward_head(feats, pre_logits=True)
            logits = m.head(features["pooled"])
            features["dist_logits"] = m.head_dist(features["pooled"])
        else:
            features["pooled"] = m.forward_head(feats, pre_logits=True)
            logits = m.forward_head(feats) if m.num_classes else None
        if feats.ndim == 3:
            features["tokens"] = feats[:, getattr(m, "num_prefix_tokens", 0):]
        return ModelOutput(logits=logits, features=features)

    def export(self, out_dir: str) -> None:
        """Save ``model_state_dict.pt`` and ``timm_config.json`` (name, create_model arguments,
        pretrained config, input size and normalisation) to rebuild it with ``TimmModel``."""
        super().export(out_dir)
        config = {"name": self.name, "model_kwargs": self.model_kwargs, **self._config(),
                  "pretrained_cfg": dict(getattr(self.module, "pretrained_cfg", {}) or {})}
        with open(os.path.join(out_dir, "timm_config.json"), "w") as f:
            json.dump(config, f, indent=2, default=str)


# Names of the final classifier in torchvision's classification models.
_TV_CLASSIFIERS = ("fc", "classifier", "heads", "head")


class TorchvisionModel(ImageModelAdapter):
    """A ``torchvision`` classification model (``torchvision.models.get_model``) as a lit_distill model.

    Outputs ``logits`` ``[B, C]`` and ``features["pooled"]`` ``[B, D]``: the
    input of the model's final classifier (the top-level ``fc``,
    ``classifier``, ``heads`` or ``head`` module, e.g. the flattened
    ``avgpool`` output of a ResNet), global-average-pooled when it is still a
    feature map. Models without such a module give only ``logits``.

    Default ``input_size``/``mean``/``std`` come from the weights' transforms
    when ``weights`` is set; otherwise ImageNet statistics and no resizing.

    Args:
        name: torchvision model name, e.g. ``resnet18`` (see ``torchvision.models.list_models()``).
        weights: pretrained weights, e.g. ``DEFAULT`` or ``IMAGENET1K_V1`` (downloads them
            unless cached); None builds a randomly initialised model.
        num_classes: number of classes of the classifier (must match the weights' when
            ``weights`` is set). None keeps the default (1000).
        checkpoint: local state-dict file loaded into the model after it is built.
        model_kwargs: further keyword arguments of the model builder, e.g. ``{dropout: 0.2}``.
        input_size: side of the square images the model expects; overrides the default.
        mean: per-channel normalisation mean the model expects; overrides the default.
        std: per-channel normalisation std the model expects; overrides the default.
        hooks: module paths whose outputs are recorded as features.
    """

    def __init__(
        self,
        name: str,
        weights: str | None = None,
        num_classes: int | None = None,
        checkpoint: str | None = None,
        model_kwargs: dict | None = None,
        input_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        hooks: list[str] | None = None,
    ) -> None:
        import torchvision

        available = torchvision.models.list_models()
        if name not in available:
            raise ConfigError(f"TorchvisionModel.name: unknown torchvision model '{name}' "
                              f"(similar: {_close_names(name, available)}; see torchvision.models.list_models())")
        weight_enum = None
        if weights is not None:
            members = torchvision.models.get_model_weights(name).__members__
            key = weights.rsplit(".", 1)[-1]
            if key not in members:
                raise ConfigError(f"TorchvisionModel.weights: '{weights}' is not a weight of '{name}' "
                                  f"(valid: {list(members)})")
            weight_enum = members[key]
        kwargs = dict(model_kwargs or {})
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        try:
            module = torchvision.models.get_model(name, weights=weight_enum, **kwargs)
        except TypeError as err:
            raise ConfigError(f"TorchvisionModel.model_kwargs: {kwargs} not accepted by '{name}': {err}") from err
        except ValueError as err:
            raise ConfigError(f"TorchvisionModel.num_classes: {err} (leave num_classes unset with weights, "
                              "or build without weights)") from err
        except (RuntimeError, OSError) as err:
            raise ConfigError(f"TorchvisionModel.weights: could not load '{weights}' for '{name}' "
                              f"(are the weights cached?): {str(err).splitlines()[0]}") from err
        default_size, default_mean, default_std = None, None, None
        if weight_enum is not None:
            transform = weight_enum.transforms()
            default_size = getattr(transform, "crop_size", None)
            default_mean, default_std = getattr(transform, "mean", None), getattr(transform, "std", None)
        super().__init__(input_size if input_size is not None else default_size,
                         mean if mean is not None else default_mean,
                         std if std is not None else default_std, hooks)
        self.module = module
        self.name = name
        self.weights = weights
        self.model_kwargs = kwargs
        self._pooled: Tensor | None = None
        children = dict(module.named_children())
        self.classifier_path = next((n for n in reversed(children) if n in _TV_CLASSIFIERS), None)
        if self.classifier_path is not None:
            children[self.classifier_path].register_forward_pre_hook(self._capture_pooled)
        if checkpoint is not None:
            self._load_checkpoint(module, checkpoint)
        self._install_hooks()

    def _capture_pooled(self, _module: nn.Module, args: tuple) -> None:
        x = args[0]
        if x.ndim == 4:
            x = x.mean(dim=(2, 3))
        self._pooled = x.flatten(1)

    @property
    def output_size(self) -> int | None:
        if "num_classes" in self.model_kwargs:
            return self.model_kwargs["num_classes"]
        if self.classifier_path is None:
            return None
        classifier = getattr(self.module, self.classifier_path)
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
        return linears[-1].out_features if linears else None

    def declared_outputs(self) -> OutputSpec:
        """Logits; ``features.pooled`` when the classifier's input could be captured."""
        return OutputSpec(logits=True, hidden_states=0)

    def run(self, pixel_values: Tensor) -> ModelOutput:
        self._pooled = None
        raw = self.module(pixel_values)
        if isinstance(raw, tuple):  # GoogLeNet/Inception in train mode: (logits, aux...)
            raw = raw[0]
        features = {"pooled": self._pooled} if self._pooled is not None else {}
        self._pooled = None
        return ModelOutput(logits=raw, features=features)

    def export(self, out_dir: str) -> None:
        """Save ``model_state_dict.pt`` and ``torchvision_config.json`` (name and builder arguments)."""
        super().export(out_dir)
        config = {"name": self.name, "weights": self.weights, "model_kwargs": self.model_kwargs, **self._config()}
        with open(os.path.join(out_dir, "torchvision_config.json"), "w") as f:
            json.dump(config, f, indent=2, default=str)


class OpenClipImageTower(ImageModelAdapter):
    """The image tower (``.visual``) of an ``open_clip`` model as a lit_distill model.

    Outputs ``features["pooled"]`` ``[B, E]``: the image embedding (after the
    tower's projection, not L2-normalised). With ``num_classes`` a linear head
    (a trainable parameter of this adapter, saved in its state dict as
    ``classifier.*``) maps it to ``logits`` ``[B, C]``; without, ``logits`` is None.

    Default ``input_size``/``mean``/``std`` come from the model's preprocessing config.

    Args:
        name: open_clip model name, e.g. ``ViT-B-32`` (see ``open_clip.list_models()``),
            or ``hf-hub:org/repo``.
        pretrained: open_clip pretrained tag (e.g. ``openai``, ``laion2b_s34b_b79k``) or a
            local file of CLIP weights; None builds a randomly initialised tower.
        checkpoint: local state-dict file of the tower (keys as in ``.visual``, plus
            ``classifier.*`` for the head) or of a whole CLIP model (its ``visual.*`` keys
            are used), loaded after it is built.
        num_classes: add a linear classifier with this many classes on the embedding.
        input_size: side of the square images the tower expects; overrides the default.
        mean: per-channel normalisation mean the tower expects; overrides the default.
        std: per-channel normalisation std the tower expects; overrides the default.
        hooks: module paths inside the tower whose outputs are recorded as features.
    """

    def __init__(
        self,
        name: str,
        pretrained: str | None = None,
        checkpoint: str | None = None,
        num_classes: int | None = None,
        input_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        hooks: list[str] | None = None,
    ) -> None:
        import open_clip

        available = open_clip.list_models()
        if not name.startswith("hf-hub:") and name not in available:
            raise ConfigError(f"OpenClipImageTower.name: unknown open_clip model '{name}' "
                              f"(similar: {_close_names(name, available)}; see open_clip.list_models())")
        try:
            clip = open_clip.create_model(name, pretrained=pretrained)
        except (RuntimeError, OSError, ValueError) as err:
            raise ConfigError(f"OpenClipImageTower.pretrained: could not build '{name}' with "
                              f"pretrained={pretrained!r}: {str(err).splitlines()[0]}") from err
        visual = clip.visual
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        default_size = cfg.get("size", getattr(visual, "image_size", None))
        default_mean = cfg.get("mean", getattr(visual, "image_mean", None))
        default_std = cfg.get("std", getattr(visual, "image_std", None))
        super().__init__(input_size if input_size is not None else default_size,
                         mean if mean is not None else default_mean,
                         std if std is not None else default_std, hooks)
        self.module = visual
        self.name = name
        self.pretrained = pretrained
        self.embed_dim = self._embed_dim(visual)
        self.classifier = nn.Linear(self.embed_dim, num_classes) if num_classes else None
        if checkpoint is not None:
            self._load_tower_checkpoint(checkpoint)
        self._install_hooks()

    def _embed_dim(self, visual: nn.Module) -> int:
        dim = getattr(visual, "output_dim", None)
        if isinstance(dim, int):
            return dim
        size = self.input_size or (224, 224)
        with torch.no_grad():
            was_training = visual.training
            out = visual.eval()(torch.zeros(1, 3, *size))
            visual.train(was_training)
        return (out[0] if isinstance(out, tuple) else out).shape[-1]

    def _load_tower_checkpoint(self, checkpoint: str) -> None:
        field = "OpenClipImageTower.checkpoint"
        state = read_state_dict(checkpoint, field)
        if any(k.startswith("visual.") for k in state):  # a whole CLIP model
            state = {k.removeprefix("visual."): v for k, v in state.items()
                     if k.startswith(("visual.", "classifier."))}
        head = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
        tower = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        load_checked(self.module, tower, field, checkpoint)
        if self.classifier is not None and head:
            load_checked(self.classifier, head, field, checkpoint)

    @property
    def output_size(self) -> int | None:
        return self.classifier.out_features if self.classifier is not None else None

    def declared_outputs(self) -> OutputSpec:
        """``features.pooled`` (the image embedding); logits when a classifier is attached."""
        return OutputSpec(logits=self.classifier is not None, hidden_states=0,
                          features=frozenset({"pooled"}), closed=True)

    def run(self, pixel_values: Tensor) -> ModelOutput:
        embedding = self.module(pixel_values)
        if isinstance(embedding, tuple):  # towers asked to also return tokens
            embedding = embedding[0]
        logits = self.classifier(embedding) if self.classifier is not None else None
        return ModelOutput(logits=logits, features={"pooled": embedding})

    def export(self, out_dir: str) -> None:
        """Save ``model_state_dict.pt`` (the tower, plus ``classifier.*`` for the head; loadable
        through ``checkpoint``) and ``open_clip_config.json``."""
        os.makedirs(out_dir, exist_ok=True)
        state = dict(self.module.state_dict())
        if self.classifier is not None:
            state.update({f"classifier.{k}": v for k, v in self.classifier.state_dict().items()})
        torch.save(state, os.path.join(out_dir, "model_state_dict.pt"))
        config = {"name": self.name, "pretrained": self.pretrained, "num_classes": self.output_size,
                  **self._config()}
        with open(os.path.join(out_dir, "open_clip_config.json"), "w") as f:
            json.dump(config, f, indent=2, default=str)
