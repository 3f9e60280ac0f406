"""Distillation losses.

Functional losses (pure functions of tensors, documented with shapes) live in
one module per family; the ``LossTerm`` classes wrap them for YAML.

- :mod:`lit_distill.losses.divergences`: forward/reverse KL, generalised JSD,
  skew KL, skew reverse KL, total variation.
- :mod:`lit_distill.losses.cross_tokenizer`: ULD, universal logit distillation
  between different vocabularies (``uld`` exact or top-k, and the ``ULD`` term).
- :mod:`lit_distill.losses.alm`: ALM, cross-tokenizer approximate likelihood
  matching over byte-aligned chunks (``alm`` and the ``ALM`` term).
- :mod:`lit_distill.losses.deit`: DeiT/DeiT-LT distillation through a distillation
  token, and DeiT-LT's effective-number class weights.
- :mod:`lit_distill.losses.feature`: ``FeatureMSE``, intermediate features (hidden states,
  feature maps) through a learned projector when the widths differ.
- :mod:`lit_distill.losses.relation`: TRG, token-level relationship graphs between
  ViT tokens (local k-NN graph KL, global InfoNCE, contextual relation maps).
- :mod:`lit_distill.losses.segmentation`: dense ``[B, C, H, W]`` logits: pixel CE,
  channel-wise distillation (CWD) and pixel-wise KD, per-image means.
- :mod:`lit_distill.losses.taid`: TAID's interpolated target and its adaptive
  schedule state (``TAID`` term, driven by ``lit_distill.callbacks.TAIDSchedule``).
- :mod:`lit_distill.losses.terms`: ``ForwardKL``, ``ReverseKL``,
  ``GeneralizedJSD``, ``SkewKL``, ``SkewReverseKL``, ``TotalVariation``,
  ``CrossEntropy``.
"""

from lit_distill.losses.alm import ALM, alm
from lit_distill.losses.audio import (
    CodecReconstruction,
    Commitment,
    MultiResolutionMelLoss,
    multi_resolution_stft_loss,
    si_snr,
    si_snr_loss,
    waveform_l1,
)
from lit_distill.losses.cross_tokenizer import ULD, uld
from lit_distill.losses.deit import (
    DeiTHardDistillation,
    deit_hard_distillation,
    effective_number_weights,
)
from lit_distill.losses.divergences import (
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    total_variation,
)
from lit_distill.losses.feature import FeatureMSE, feature_mse
from lit_distill.losses.fused import fused_cross_entropy, fused_forward_kl, fused_reverse_kl
from lit_distill.losses.fused_terms import FusedCrossEntropy, FusedForwardKL, FusedReverseKL
from lit_distill.losses.preference import DPO, MoEAuxLoss, dpo_loss, sequence_logprobs
from lit_distill.losses.relation import TRG, contextual_relation, global_contrastive, local_graph_kl
from lit_distill.losses.segmentation import (
    ChannelWiseDistillation,
    PixelCrossEntropy,
    PixelKD,
    channel_wise_distillation,
    pixel_cross_entropy,
    pixel_kd,
)
from lit_distill.losses.sparse import SparseForwardKL, sparse_forward_kl
from lit_distill.losses.taid import TAID, taid_cross_entropy
from lit_distill.losses.terms import (
    CrossEntropy,
    ForwardKL,
    GeneralizedJSD,
    LogitDivergence,
    ReverseKL,
    SkewKL,
    SkewReverseKL,
    TotalVariation,
    cross_entropy,
)

__all__ = [
    "FeatureMSE",
    "feature_mse",
    "ALM",
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "skew_kl",
    "skew_reverse_kl",
    "total_variation",
    "cross_entropy",
    "alm",
    "deit_hard_distillation",
    "effective_number_weights",
    "uld",
    "taid_cross_entropy",
    "local_graph_kl",
    "global_contrastive",
    "contextual_relation",
    "CrossEntropy",
    "DeiTHardDistillation",
    "ForwardKL",
    "GeneralizedJSD",
    "LogitDivergence",
    "ReverseKL",
    "SkewKL",
    "SkewReverseKL",
    "TAID",
    "TRG",
    "ULD",
    "TotalVariation",
    "FusedCrossEntropy",
    "FusedForwardKL",
    "FusedReverseKL",
    "fused_cross_entropy",
    "fused_forward_kl",
    "fused_reverse_kl",
    "ChannelWiseDistillation",
    "PixelCrossEntropy",
    "PixelKD",
    "channel_wise_distillation",
    "pixel_cross_entropy",
    "pixel_kd",
]
__all__ += ["DPO", "MoEAuxLoss", "dpo_loss", "sequence_logprobs"]
__all__ += ["SparseForwardKL", "sparse_forward_kl"]
__all__ += ["CodecReconstruction", "Commitment", "MultiResolutionMelLoss", "multi_resolution_stft_loss",
            "si_snr", "si_snr_loss", "waveform_l1"]
from lit_distill.losses.speech_distill import (  # noqa: E402
    CodecFeatureDistillation,
    cosine_frame_loss,
    cosine_time_loss,
    indirect_semantic_loss,
    interpolate_align,
    positional_align,
)

__all__ += ["CodecFeatureDistillation", "cosine_frame_loss", "cosine_time_loss", "indirect_semantic_loss",
            "interpolate_align", "positional_align"]
from lit_distill.losses.lm_spt import IndirectSemanticDistillation  # noqa: E402

__all__ += ["IndirectSemanticDistillation"]
