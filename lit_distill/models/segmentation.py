"""Semantic-segmentation models as lit_distill models, and input-stem widening.

Every adapter here takes ``pixel_values`` ``[B, K, H, W]`` (``K = 3 + extra_input_channels``,
already normalised by the datamodule) and returns ``ModelOutput.logits`` ``[B, C, H, W]``:
per-pixel class scores at the input resolution.

:func:`widen_input_stem` adds input channels to a model's first convolution (e.g. LAD's
label channel): the existing filters are kept and the new channels' weights are drawn from
``N(0, init_std²)``, so the widened model computes the same function as before when the
extra channels hold zeros, and almost the same at the start of training otherwise.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter
from lit_distill.models.vision_base import _close_names, load_checked, read_state_dict
from lit_distill.sources import OutputSpec

__all__ = ["TimmSegmentation", "TorchvisionSegmentation", "widen_input_stem"]


# LAD's authors draw the label channel's stem weights as 0.1 * randn (their train script); at the
# label scale of 100 they feed, a small std such as 1e-3 gives those weights relative gradients
# thousands of times the authors' (issue 14).
LABEL_CHANNEL_INIT_STD = 0.1


def widen_input_stem(model: nn.Module, extra_channels: int = 1, init_std: float = LABEL_CHANNEL_INIT_STD,
                     in_channels: int = 3) -> str:
    """Give the model's first convolution ``extra_channels`` more input channels, in place.

    The first ``nn.Conv2d`` (in ``named_modules`` order) that reads ``in_channels`` channels is
    replaced by one reading ``in_channels + extra_channels``: weights of the existing channels
    and the bias are copied, the new channels' weights are drawn from ``N(0, init_std²)``.

    Args:
        model: the network (modified in place).
        extra_channels: how many input channels to add (appended after the existing ones).
        init_std: standard deviation of the new channels' initial weights (0: zeros).
        in_channels: the stem's current number of input channels.

    Returns:
        The module path of the widened convolution.
    """
    if extra_channels < 1:
        raise ConfigError(f"extra_input_channels: must be >= 1 to widen the stem, got {extra_channels}")
    if init_std < 0:
        raise ConfigError(f"extra_channel_init_std: must be >= 0, got {init_std}")
    found = next(((path, m) for path, m in model.named_modules()
                  if isinstance(m, nn.Conv2d) and m.in_channels == in_channels), None)
    if found is None:
        raise ConfigError(f"extra_input_channels: {type(model).__name__} has no Conv2d reading "
                          f"{in_channels} channels to widen")
    path, conv = found
    if conv.groups != 1:
        raise ConfigError(f"extra_input_channels: the stem convolution '{path}' is grouped "
                          f"(groups={conv.groups}); cannot widen it")
    wider = nn.Conv2d(in_channels + extra_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, 1, conv.bias is not None, conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        wider.weight[:, :in_channels] = conv.weight
        wider.weight[:, in_channels:].normal_(0.0, init_std)  # std 0 gives zeros
        if conv.bias is not None:
            wider.bias.copy_(conv.bias)
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, wider)
    return path


class _SegmentationAdapter(ModelAdapter):
    """Shared parts: stem widening, checkpoint loading, export with a JSON config."""

    config_file: str = "segmentation_config.json"

    def _finish(self, extra_input_channels: int, extra_channel_init_std: float,
                checkpoint: str | None, init_from: str | None = None) -> None:
        self.stem_path: str | None = None
        if init_from is not None:  # the RGB model's weights first: the widened stem keeps them
            field = f"{type(self).__name__}.init_from"
            load_checked(self.module, read_state_dict(init_from, field), field, init_from)
        if extra_input_channels:
            self.stem_path = widen_input_stem(self.module, extra_input_channels, extra_channel_init_std)
        if checkpoint is not None:
            field = f"{type(self).__name__}.checkpoint"
            load_checked(self.module, read_state_dict(checkpoint, field), field, checkpoint)
        self._install_hooks()

    @property
    def output_size(self) -> int | None:
        return self.num_classes

    def declared_outputs(self) -> OutputSpec:
        """Per-pixel logits ``[B, C, H, W]`` only (hooked features besides)."""
        return OutputSpec(logits=True, hidden_states=0, closed=True)

    def export(self, out_dir: str) -> None:
        """Save ``model_state_dict.pt`` (loadable through ``checkpoint``) and a JSON of the arguments."""
        super().export(out_dir)
        with open(os.path.join(out_dir, self.config_file), "w") as f:
            json.dump({"class_path": f"{type(self).__module__}.{type(self).__name__}",
                       "init_args": self.config}, f, indent=2, default=str)


class TorchvisionSegmentation(_SegmentationAdapter):
    """A ``torchvision`` segmentation model (FCN, DeepLabV3, LRASPP) built by name.

    Built without segmentation weights; an ImageNet backbone can be asked for with
    ``model_kwargs: {weights_backbone: IMAGENET1K_V1}`` (the weights must be cached locally).
    Outputs ``logits`` ``[B, C, H, W]`` (torchvision's ``out``, at the input resolution).
    The auxiliary head is off.

    Args:
        name: e.g. ``lraspp_mobilenet_v3_large``, ``fcn_resnet50``, ``deeplabv3_mobilenet_v3_large``
            (see ``torchvision.models.list_models(module=torchvision.models.segmentation)``).
        num_classes: number of classes (background included).
        extra_input_channels: input channels added to the stem (LAD's teacher: 1).
        extra_channel_init_std: standard deviation of the added channels' initial weights (LAD's
            authors: 0.1).
        init_from: a state-dict file of the same model *without* the extra channels (e.g. the exported
            no-KD baseline), loaded before the stem is widened: LAD fine-tunes its teacher and student
            from a trained baseline. ``checkpoint`` (this widened model's own weights) loads after.
        checkpoint: local state-dict file loaded after the model is built (and widened).
        model_kwargs: further keyword arguments of the builder.
        hooks: module paths whose outputs are recorded as features.
    """

    def __init__(self, name: str, num_classes: int = 21, extra_input_channels: int = 0,
                 extra_channel_init_std: float = LABEL_CHANNEL_INIT_STD, checkpoint: str | None = None,
                 init_from: str | None = None,
                 model_kwargs: dict | None = None, hooks: list[str] | None = None) -> None:
        super().__init__(hooks)
        from torchvision.models import get_model, list_models, segmentation

        available = list_models(module=segmentation)
        if name not in available:
            raise ConfigError(f"TorchvisionSegmentation.name: unknown model '{name}' "
                              f"(similar: {_close_names(name, available)})")
        if num_classes < 1:
            raise ConfigError(f"TorchvisionSegmentation.num_classes: must be >= 1, got {num_classes}")
        kwargs: dict = {"weights": None, "weights_backbone": None}
        if not name.startswith("lraspp"):  # LRASPP has no auxiliary head
            kwargs["aux_loss"] = False
        kwargs.update(model_kwargs or {})
        try:
            self.module = get_model(name, num_classes=num_classes, **kwargs)
        except TypeError as err:
            raise ConfigError(f"TorchvisionSegmentation.model_kwargs: {model_kwargs} not accepted by "
                              f"'{name}': {err}") from err
        self.num_classes = num_classes
        self.config = {"name": name, "num_classes": num_classes, "extra_input_channels": extra_input_channels,
                       "model_kwargs": dict(model_kwargs or {})}
        self._finish(extra_input_channels, extra_channel_init_std, checkpoint, init_from)

    def run(self, pixel_values: Tensor) -> ModelOutput:
        return ModelOutput(logits=self.module(pixel_values)["out"])


class _LightHead(nn.Module):
    """Projects each feature map to ``channels`` (1x1 conv, BN, ReLU), upsamples to the finest one,
    sums, and classifies with a 1x1 conv."""

    def __init__(self, in_channels: list[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                                nn.ReLU(inplace=True)) for c in in_channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        fused = sum(F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size
                    else p(f) for p, f in zip(self.proj, features, strict=True))
        return self.classifier(fused)


class _BackboneWithHead(nn.Module):
    def __init__(self, backbone: nn.Module, head: _LightHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class TimmSegmentation(_SegmentationAdapter):
    """A ``timm`` backbone (``features_only``) with a light segmentation head.

    The head projects the chosen feature levels to ``head_channels`` (1x1 conv, BN, ReLU),
    upsamples them to the finest level, sums them and classifies each position with a 1x1
    conv; the logits are upsampled (bilinear) to the input size: ``logits`` ``[B, C, H, W]``.

    Args:
        name: timm model name, e.g. ``resnet18``, ``test_resnet``, ``mobilenetv3_small_050``.
        num_classes: number of classes (background included).
        out_indices: feature levels of the backbone fed to the head (timm's ``out_indices``).
        head_channels: width of the head.
        pretrained: load timm's pretrained backbone weights (needs them cached locally).
        extra_input_channels: input channels added to the stem (LAD's teacher: 1).
        extra_channel_init_std: standard deviation of the added channels' initial weights (LAD's
            authors: 0.1).
        init_from: a state-dict file of the same model *without* the extra channels (e.g. the exported
            no-KD baseline), loaded before the stem is widened: LAD fine-tunes its teacher and student
            from a trained baseline. ``checkpoint`` (this widened model's own weights) loads after.
        checkpoint: local state-dict file (of this whole model) loaded after it is built.
        model_kwargs: further keyword arguments of ``timm.create_model``.
        hooks: module paths whose outputs are recorded as features.
    """

    def __init__(self, name: str, num_classes: int = 21, out_indices: list[int] | None = None,
                 head_channels: int = 64, pretrained: bool = False, extra_input_channels: int = 0,
                 extra_channel_init_std: float = LABEL_CHANNEL_INIT_STD, checkpoint: str | None = None,
                 init_from: str | None = None,
                 model_kwargs: dict | None = None, hooks: list[str] | None = None) -> None:
        super().__init__(hooks)
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"TimmSegmentation.name: unknown timm model '{name}' "
                              f"(similar: {_close_names(name, timm.list_models())})")
        if num_classes < 1:
            raise ConfigError(f"TimmSegmentation.num_classes: must be >= 1, got {num_classes}")
        indices = list(out_indices) if out_indices is not None else [1, 4]
        try:
            backbone = timm.create_model(name, pretrained=pretrained, features_only=True,
                                         out_indices=tuple(indices), **(model_kwargs or {}))
        except (TypeError, IndexError, AssertionError) as err:
            raise ConfigError(f"TimmSegmentation: '{name}' cannot be built with out_indices={indices} and "
                              f"model_kwargs={model_kwargs}: {err}") from err
        head = _LightHead(backbone.feature_info.channels(), head_channels, num_classes)
        self.module = _BackboneWithHead(backbone, head)
        self.num_classes = num_classes
        self.config = {"name": name, "num_classes": num_classes, "out_indices": indices,
                       "head_channels": head_channels, "extra_input_channels": extra_input_channels,
                       "model_kwargs": dict(model_kwargs or {})}
        self._finish(extra_input_channels, extra_channel_init_std, checkpoint, init_from)

    def run(self, pixel_values: Tensor) -> ModelOutput:
        return ModelOutput(logits=self.module(pixel_values))
