"""Model adapters: every model, whatever library built it, returns a ``ModelOutput``.

Names are imported from their module on first use (:mod:`lit_distill.lazy_exports`), so
``from lit_distill.models import HFCausalLM`` loads transformers but not timm or torchaudio.
"""

from lit_distill.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "lit_distill.models.base": ["ModelAdapter"],
    "lit_distill.models.cached": ["CachedTopK"],
    "lit_distill.models.codec": ["ConvCodec", "ResidualQuantizer"],
    "lit_distill.models.ctc_head": ["CTCHead", "TokenCTCProbe"],
    "lit_distill.models.hf": ["HFCausalLM"],
    "lit_distill.models.hf_audio": ["HFSpeechEncoder"],
    "lit_distill.models.hf_model": ["HFModel"],
    "lit_distill.models.moe": ["MoEFeedForward", "upcycle"],
    "lit_distill.models.multi": ["MultiModel"],
    "lit_distill.models.segmentation": ["TimmSegmentation", "TorchvisionSegmentation", "widen_input_stem"],
    "lit_distill.models.torch_module": ["TorchModule", "as_adapter"],
    "lit_distill.models.vision": ["ImageModelAdapter", "OpenClipImageTower", "TimmModel", "TorchvisionModel"],
    "lit_distill.models.vlm": ["HFLlava", "HFVisionTower", "LlavaComposition"],
    "lit_distill.models.hf_whisper": ["HFWhisperEncoder"],
    "lit_distill.models.lm_spt": ["LMSPTCodec"],
})
