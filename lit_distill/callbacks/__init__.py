"""Lightning callbacks: reporting, and schedules whose state survives checkpoint/resume."""

from lit_distill.callbacks.codec_metrics import CodecMetrics
from lit_distill.callbacks.drw import DeferredReweighting
from lit_distill.callbacks.group_accuracy import ClassGroupAccuracy
from lit_distill.callbacks.metrics_table import MetricsTable
from lit_distill.callbacks.schedule import ParameterSchedule
from lit_distill.callbacks.segmentation import SegmentationMetrics
from lit_distill.callbacks.taid import TAIDSchedule

__all__ = ["ClassGroupAccuracy", "DeferredReweighting", "MetricsTable", "ParameterSchedule", "TAIDSchedule"]
__all__ += ["SegmentationMetrics"]
__all__ += ["CodecMetrics"]
