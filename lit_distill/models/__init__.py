"""Model adapters: every model, whatever library built it, returns a ``ModelOutput``."""

from lit_distill.models.base import ModelAdapter
from lit_distill.models.codec import ConvCodec, ResidualQuantizer
from lit_distill.models.hf import HFCausalLM
from lit_distill.models.hf_audio import HFSpeechEncoder
from lit_distill.models.moe import MoEFeedForward, upcycle
from lit_distill.models.multi import MultiModel
from lit_distill.models.segmentation import (
           TimmSegmentation,
           TorchvisionSegmentation,
           widen_input_stem,
)
from lit_distill.models.torch_module import TorchModule, as_adapter
from lit_distill.models.vision import (
           ImageModelAdapter,
           OpenClipImageTower,
           TimmModel,
           TorchvisionModel,
)
from lit_distill.models.vlm import HFLlava, HFVisionTower, LlavaComposition

__all__ = ["HFCausalLM", "ImageModelAdapter", "ModelAdapter", "OpenClipImageTower", "TimmModel",
           "TorchModule", "TorchvisionModel", "as_adapter",
           "HFLlava", "HFVisionTower", "LlavaComposition", "MoEFeedForward", "upcycle"]
__all__ += ["TimmSegmentation", "TorchvisionSegmentation", "widen_input_stem"]
__all__ += ["ConvCodec", "ResidualQuantizer"]
__all__ += ["HFSpeechEncoder"]
__all__ += ["MultiModel"]
from lit_distill.models.hf_whisper import HFWhisperEncoder  # noqa: E402
from lit_distill.models.lm_spt import LMSPTCodec  # noqa: E402

__all__ += ["HFWhisperEncoder", "LMSPTCodec"]
