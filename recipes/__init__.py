"""Recipes: one thin file per published method, only where its training step differs.

Most methods need no Python at all: a YAML under ``configs/`` composes
``lit_distill.DistillationModule`` with the method's loss terms and callbacks.
A recipe file appears here when a method genuinely changes the step (an extra
distillation token, a GAN codec with several optimisers, a two-stage pipeline,
a preference-optimisation stage). A step that differs plugs into the module as a
``lit_distill.steps.TrainingStep`` (``model.init_args.step``), never as a subclass
of ``DistillationModule``; a variant of a config is an overlay YAML stacked with a
second ``--config``, not a dict rewritten in Python.
"""
