"""Lightning callbacks: reporting, and schedules whose state survives checkpoint/resume.

Names are imported from their module on first use (:mod:`lit_distill.lazy_exports`).
"""

from lit_distill.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "lit_distill.callbacks.class_prior": ["ClassPriorFromData"],
    "lit_distill.callbacks.codec_metrics": ["CodecMetrics"],
    "lit_distill.callbacks.drw": ["DeferredReweighting"],
    "lit_distill.callbacks.gradient_share": ["GradientShare"],
    "lit_distill.callbacks.group_accuracy": ["ClassGroupAccuracy"],
    "lit_distill.callbacks.acceptance": ["SpeculativeAcceptance"],
    "lit_distill.callbacks.label_check": ["LabelChannelCheck"],
    "lit_distill.callbacks.metrics_table": ["MetricsTable"],
    "lit_distill.callbacks.progress": ["StepProgressBar"],
    "lit_distill.callbacks.schedule": ["ParameterSchedule"],
    "lit_distill.callbacks.segmentation": ["SegmentationMetrics"],
    "lit_distill.callbacks.taid": ["TAIDSchedule"],
})
