"""Distillation losses.

Functional losses (pure functions of tensors, documented with shapes) live in
one module per family; the ``LossTerm`` classes wrap them for YAML.

- :mod:`lit_distill.losses.divergences`: forward/reverse KL, generalised JSD,
  skew KL, skew reverse KL, total variation.
- :mod:`lit_distill.losses.kl_ce`: forward KL and cross-entropy from one student softmax (what
  the module runs for a ``ForwardKL`` + ``CrossEntropy`` pair at T = 1).
- :mod:`lit_distill.losses.cross_tokenizer`: ULD, universal logit distillation
  between different vocabularies (``uld`` exact or top-k, and the ``ULD`` term).
- :mod:`lit_distill.losses.alm`: ALM, cross-tokenizer approximate likelihood
  matching over byte-aligned chunks (``alm`` and the ``ALM`` term).
- :mod:`lit_distill.losses.ctc`: CTC (connectionist temporal classification) of per-frame
  scores against label sequences, to train speech models on transcripts (``CTC`` term).
- :mod:`lit_distill.losses.deit`: DeiT/DeiT-LT distillation through a distillation
  token, and DeiT-LT's effective-number class weights.
- :mod:`lit_distill.losses.long_tail`: logit-adjusted cross-entropy (balanced softmax) for
  long-tail-aware teachers.
- :mod:`lit_distill.losses.multilabel`: ``MultiLabelBCE``, binary cross-entropy per class against
  multi-hot targets (multi-label classification).
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

Names are imported from their module on first use (:mod:`lit_distill.lazy_exports`):
importing one loss family loads no other family's library (torchaudio, transformers).
"""

from lit_distill.lazy_exports import lazy_exports

# `alm` is both a function and this package's submodule; imported eagerly, the function is what
# `lit_distill.losses.alm` names, as it always has (alm.py needs only torch).
from lit_distill.losses.alm import ALM, alm  # noqa: I001

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "lit_distill.losses.audio": [
        "CodecReconstruction",
        "Commitment",
        "MultiResolutionMelLoss",
        "multi_resolution_stft_loss",
        "si_snr",
        "si_snr_loss",
        "waveform_l1",
    ],
    "lit_distill.losses.cross_tokenizer": ["ULD", "uld"],
    "lit_distill.losses.ctc": ["CTC", "ctc_loss"],
    "lit_distill.losses.kl_ce": ["forward_kl_and_cross_entropy"],
    "lit_distill.losses.long_tail": ["LogitAdjustedCrossEntropy", "log_prior", "logit_adjusted_cross_entropy"],
    "lit_distill.losses.deit": ["DeiTHardDistillation", "deit_hard_distillation", "effective_number_weights"],
    "lit_distill.losses.divergences": [
        "forward_kl",
        "generalized_jsd",
        "reverse_kl",
        "skew_kl",
        "skew_reverse_kl",
        "total_variation",
    ],
    "lit_distill.losses.encoder": ["AttentionDistillation", "EmbeddingDistillation", "HiddenStatesMSE",
                                   "MiniLMRelation", "attention_kl", "attention_mse", "embedding_distance",
                                   "hidden_mse", "layer_map", "relation_kl"],
    "lit_distill.losses.feature": ["FeatureMSE", "feature_mse"],
    "lit_distill.losses.fused": ["fused_cross_entropy", "fused_forward_kl", "fused_reverse_kl"],
    "lit_distill.losses.fused_terms": ["FusedCrossEntropy", "FusedForwardKL", "FusedReverseKL"],
    "lit_distill.losses.fused_sparse": ["FusedSparseForwardKL", "fused_sparse_forward_kl"],
    "lit_distill.losses.multi_teacher": ["EnsembleKD", "ensemble_kd"],
    "lit_distill.losses.multilabel": ["MultiLabelBCE", "multilabel_bce"],
    "lit_distill.losses.adaspec": ["AdaSPEC"],
    "lit_distill.losses.preference": ["DPO", "MoEAuxLoss", "dpo_loss", "sequence_logprobs"],
    "lit_distill.losses.relation": ["TRG", "contextual_relation", "global_contrastive", "local_graph_kl"],
    "lit_distill.losses.segmentation": [
        "ChannelWiseDistillation",
        "PixelCrossEntropy",
        "PixelKD",
        "channel_wise_distillation",
        "pixel_cross_entropy",
        "pixel_kd",
    ],
    "lit_distill.losses.sparse": ["SparseForwardKL", "sparse_forward_kl"],
    "lit_distill.losses.taid": ["TAID", "taid_cross_entropy"],
    "lit_distill.losses.terms": [
        "CrossEntropy",
        "ForwardKL",
        "GeneralizedJSD",
        "LogitDivergence",
        "ReverseKL",
        "SkewKL",
        "SkewReverseKL",
        "TotalVariation",
        "cross_entropy",
    ],
    "lit_distill.losses.speech_distill": [
        "CodecFeatureDistillation",
        "cosine_frame_loss",
        "cosine_time_loss",
        "indirect_semantic_loss",
        "interpolate_align",
        "positional_align",
    ],
    "lit_distill.losses.indirect_semantic": ["IndirectSemanticDistillation"],
})
__all__ += ["ALM", "alm"]
