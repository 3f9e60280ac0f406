"""lit_distill: knowledge distillation across modalities, on Lightning.

The public core: :class:`DistillationModule`, :class:`Teacher`, the contracts
(:class:`ModelOutput`, :class:`LossTerm`, typed loss :class:`Source` paths checked against each
adapter's :class:`OutputSpec`), :class:`TrainingStep` (a step variant a recipe plugs in) and
:class:`ConfigError`. Losses are in
:mod:`lit_distill.losses`, model adapters in :mod:`lit_distill.models`, and
:func:`lit_distill.build.build` builds from a config what ``python -m lit_distill`` would.

Names are imported on first use (:mod:`lit_distill.lazy_exports`), so ``import lit_distill``
or one loss module loads neither Lightning nor any modality library.
"""

from lit_distill.errors import ConfigError
from lit_distill.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "lit_distill.contracts": ["LossTerm", "ModelOutput"],
    "lit_distill.gradmag": ["GradMagStep"],
    "lit_distill.module": ["DistillationModule"],
    "lit_distill.on_policy": ["OnPolicyStep"],
    "lit_distill.replay": ["AdaptiveOffPolicyStep"],
    "lit_distill.sources": ["OutputSpec", "Source"],
    "lit_distill.steps": ["StepResult", "TrainingStep"],
    "lit_distill.teacher": ["Teacher"],
})
__all__ += ["ConfigError"]
__version__ = "0.1.0"
