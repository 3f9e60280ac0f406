"""``DistillationModule``: one LightningModule for every modality and method."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torchmetrics import MeanMetric

from lit_distill.contracts import LossTerm, ModelOutput, batch_size, side_inputs, valid_count
from lit_distill.errors import ConfigError
from lit_distill.losses.kl_ce import paired_values
from lit_distill.losses.terms import cross_entropy
from lit_distill.models.lora import frozen_base_keys, restore_frozen_base
from lit_distill.models.torch_module import as_adapter
from lit_distill.sharding import ShardingConfig, is_sharded, shard_distillation_module
from lit_distill.sources import Source, SourceError
from lit_distill.steps import StepResult, TrainingStep
from lit_distill.teacher import Teacher

_RESERVED = {"loss", "student_ce", "teacher_ce"}
_STUDENT_LOGITS = Source.parse("student.logits")
_TEACHER_LOGITS = Source.parse("teacher.logits")


class DistillationModule(L.LightningModule):
    """Trains ``student`` from ``teacher`` with a weighted sum of named loss terms.

    Every term is logged as ``train/<name>`` and ``val/<name>`` (and the weighted
    total as ``*/loss``). When batches carry ``labels`` that fit the logits,
    validation also logs ``val/student_ce`` and ``val/teacher_ce``. With
    ``teacher: null`` the same module trains the student supervised, which is
    how a teacher is trained and how every experiment gets its baseline.

    Token-mean losses are normalised by the valid tokens of the whole optimizer
    step: under gradient accumulation and data parallelism each micro-batch's
    loss is weighted by its own count of valid elements (``loss_mask``, or the
    batch size), and the gradients are divided by the global count before the
    optimizer step, so ``accumulate_grad_batches`` and the number of devices
    never change the objective.

    Args:
        student: the model being trained (an adapter such as
            ``lit_distill.models.HFCausalLM``, or any ``nn.Module``).
        losses: named loss terms, e.g. ``{kd: ForwardKL, ce: CrossEntropy}``;
            each has a ``weight`` and names the outputs it reads.
        teacher: the frozen teacher: a ``lit_distill.Teacher`` (to set its dtype
            or checkpointing) or any model, wrapped in ``Teacher`` with defaults.
            None trains the student without distillation.
        optimizer: optimizer class and arguments (student and loss-term
            parameters only; the teacher is never optimised).
        scheduler: learning-rate scheduler class and arguments, or None.
        scheduler_interval: step the scheduler every optimizer ``step`` or ``epoch``.
        sharding: how ``configure_model`` shards student, teacher and loss-term
            parameters with FSDP2 when ``trainer.strategy`` is
            ``ModelParallelStrategy`` (block names, mixed-precision dtypes; see
            ``lit_distill.sharding``). Ignored under other strategies; None uses
            the defaults.
        step: what a training batch does (``lit_distill.steps.TrainingStep``); a method whose
            step differs plugs its own here, e.g. ``recipes.codec_gan.AdversarialStep``. None:
            plain distillation.
    """

    def __init__(
        self,
        student: nn.Module,
        losses: dict[str, LossTerm],
        teacher: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        sharding: ShardingConfig | None = None,
        step: TrainingStep | None = None,
    ) -> None:
        super().__init__()
        # Under LightningCLI the hyperparameters are the config (class paths), which
        # is what load_from_checkpoint and export rebuild from; outside it they would
        # be the model objects themselves, which must not be pickled into checkpoints.
        built_by_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(
            ignore=None if built_by_cli else ["student", "teacher", "losses", "optimizer", "scheduler", "step"])
        self.student = as_adapter(student)
        if teacher is not None and not isinstance(teacher, Teacher):
            teacher = Teacher(teacher)
        self.teacher: Teacher | None = teacher
        if teacher is not None:
            teacher.match_inputs_to(self.student)
        self.losses = nn.ModuleDict(losses)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.sharding = sharding
        self._check_losses()
        self._teacher_needed = any(term.reads_teacher for term in self.losses.values())
        self._window_count: Tensor | None = None
        self._teacher_checked = False
        metric_names = ["loss", *self.losses, "student_ce", "teacher_ce"]
        self.val_metrics = nn.ModuleDict({name: MeanMetric() for name in metric_names})
        self.test_metrics = nn.ModuleDict({name: MeanMetric() for name in metric_names})
        self.step = step if step is not None else TrainingStep()
        self.automatic_optimization = self.step.automatic_optimization
        self.step.attach(self)

    def _check_losses(self) -> None:
        if not self.losses:
            raise ConfigError("model.init_args.losses: empty; give at least one term, e.g. "
                              "{ce: {class_path: lit_distill.losses.CrossEntropy}}")
        for name, term in self.losses.items():
            field = f"model.init_args.losses.{name}"
            if name in _RESERVED:
                raise ConfigError(f"{field}: '{name}' is reserved for a logged metric; rename the term")
            if not isinstance(term, LossTerm):
                raise ConfigError(f"{field}: {type(term).__name__} is not a lit_distill.contracts.LossTerm")
            if term.reads_teacher and self.teacher is None:
                reads = sorted(str(s) for s in term.sources.values() if s.root == "teacher")
                raise ConfigError(f"{field}: reads {reads} but model.init_args.teacher is null; "
                                  "set a teacher or remove the term")
            self._check_sources(name, term)
            # Terms comparing the two sides' logits entry by entry declare check_vocab.
            if hasattr(term, "check_vocab") and self.teacher is not None \
                    and term.sources.get("student_logits") == _STUDENT_LOGITS \
                    and term.sources.get("teacher_logits") == _TEACHER_LOGITS:
                term.check_vocab(self.student.output_size, self.teacher.output_size, field)

    def _check_sources(self, name: str, term: LossTerm) -> None:
        """Fail before training on a source that a model's declared outputs cannot give.

        A default source of an argument with a default may be absent (e.g. a head's bias); a
        feature missing there is not an error.
        """
        specs = {"student": self.student.output_spec(),
                 "teacher": self.teacher.output_spec() if self.teacher is not None else None}
        for arg, source in term.sources.items():
            spec = specs.get(source.root)
            if spec is None:
                continue
            problem = spec.problem(source)
            if problem is None or (term.may_be_absent(arg) and source.field == "features"):
                continue
            raise ConfigError(f"model.init_args.losses.{name}.init_args.sources.{arg}: '{source}': {problem}; "
                              f"the {source.root} ({type(self._adapter(source.root)).__name__}) gives "
                              f"{spec.describe()}")

    def _adapter(self, side: str) -> nn.Module:
        return self.student if side == "student" else self.teacher.model

    def configure_model(self) -> None:
        """Shard with FSDP2 under ``ModelParallelStrategy`` (see ``lit_distill.sharding``); else nothing."""
        if self.device_mesh is not None:
            shard_distillation_module(self, self.device_mesh, self.sharding)

    def on_fit_start(self) -> None:
        if self.teacher is not None or any(not m.training for m in self.losses.modules()):
            # The teacher (and a frozen encoder inside a loss term, e.g. LM-SPT's Whisper) is in
            # eval mode on purpose; Lightning's generic warning about it would only alarm users.
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start")

    # ------------------------------------------------------------------ steps
    def forward(self, batch: dict[str, Any], run_teacher: bool = True) -> tuple[ModelOutput, ModelOutput | None]:
        """Run the teacher (when asked and present), then the student, on a batch.

        The teacher goes first so its forward's temporaries are freed before the student's
        activations are built and its logits are still in cache for the loss (measured 1–2 %
        of a CPU step faster than the other order, ``bench/overhead.py``).
        """
        teacher_out = None
        if run_teacher and self.teacher is not None:
            teacher_out = self.teacher(**side_inputs(batch, "teacher"))
        student_out = self.student(**side_inputs(batch, "student"))
        return student_out, teacher_out

    def compute_losses(self, batch: dict[str, Any], student_out: ModelOutput,
                       teacher_out: ModelOutput | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Evaluate every term; return the weighted total and the per-term values.

        A ``ForwardKL`` and a ``CrossEntropy`` term on the same student logits at T = 1 share one
        student softmax (:func:`lit_distill.losses.kl_ce.paired_values`); the others run alone.
        """
        inputs = {name: self._gather(name, term, batch, student_out, teacher_out) for name, term in self.losses.items()}
        paired = paired_values(self.losses, inputs)
        values = {name: paired[name] if name in paired else term(**inputs[name]) for name, term in self.losses.items()}
        total = sum(self.losses[name].weight * value for name, value in values.items())
        return total, values

    @staticmethod
    def _gather(name: str, term: LossTerm, batch: dict[str, Any], student_out: ModelOutput,
                teacher_out: ModelOutput | None) -> dict[str, Any]:
        """``term.gather`` with a missing source reported as the term's config field."""
        try:
            return term.gather(student_out, teacher_out, batch)
        except SourceError as err:
            raise ConfigError(f"model.init_args.losses.{name}.init_args.sources: {err}") from None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        """Delegates to ``step`` (default: :meth:`distillation_loss` weighted by its valid count)."""
        return self.step.training_step(self, batch, batch_idx)

    def distillation_loss(self, batch: dict[str, Any]) -> StepResult:
        """The part of every training step that steps share: models, first-batch checks, terms, count, logs.

        Runs the student (and the teacher when a term reads it), checks the first batch (finite
        teacher logits, masks with positions to compare), evaluates the terms, adds the batch's
        valid count to the optimizer step's count, and logs ``train/loss`` and ``train/<term>``
        on the steps the loggers write. Backpropagate ``result.weighted_total`` through the
        module's optimizer: its gradients are divided by the step's global valid count (see the
        class docstring).

        Args:
            batch: a training batch (see ``lit_distill.contracts``); a step may pass one it
                changed, e.g. with student samples as responses and their ``loss_mask``.

        Returns:
            :class:`~lit_distill.steps.StepResult` (total ``[]``, per-term values ``[]``, valid
            count ``[]``, the two sides' outputs, whether this step logs).
        """
        student_out, teacher_out = self(batch, run_teacher=self._teacher_needed)
        if not self._teacher_checked:  # once: these checks synchronise with the host
            if teacher_out is not None:
                _check_finite(teacher_out)
            self._check_masks(batch, student_out, teacher_out)
            self._teacher_checked = True
        total, values = self.compute_losses(batch, student_out, teacher_out)
        count = valid_count(batch)
        self._window_count = count if self._window_count is None else self._window_count + count
        logging = self._logging_step()
        if logging:
            size = batch_size(batch)
            self.log("train/loss", total, prog_bar=True, batch_size=size)
            for name, value in values.items():
                self.log(f"train/{name}", value, batch_size=size)
        return StepResult(total, values, count, student_out, teacher_out, logging)

    def _check_masks(self, batch: dict[str, Any], student_out: ModelOutput, teacher_out: ModelOutput | None) -> None:
        """Fail on a first batch whose masks leave nothing to compare (the loss would be 0)."""
        mask = batch.get("loss_mask")
        if isinstance(mask, Tensor) and not bool(mask.any()):
            raise ConfigError("batch.loss_mask: the first training batch has no position to train on (all "
                              "False); check the data (e.g. responses cut off by data.init_args.max_length)")
        for name, term in self.losses.items():
            source = term.sources.get("mask")
            if source is None or not source.present(student_out, teacher_out, batch):
                continue
            term_mask = source.read(student_out, teacher_out, batch)
            if isinstance(term_mask, Tensor) and term_mask.dtype == torch.bool and not bool(term_mask.any()):
                raise ConfigError(f"model.init_args.losses.{name}.sources.mask: '{source}' is all False on the "
                                  "first training batch, so the term compares nothing; point it at a mask "
                                  "with valid positions")

    def _logging_step(self) -> bool:
        """Log training values only on the steps the loggers write (``log_every_n_steps``).

        Each ``self.log`` call costs about a millisecond of Python on CPU; values
        logged on other steps would be overwritten before any logger sees them.
        """
        trainer = self._trainer
        if trainer is None or trainer.fast_dev_run:
            return True
        return trainer.global_step % max(trainer.log_every_n_steps, 1) == 0 or trainer.should_stop

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Only the module's optimizer (the first) is normalised; a step's own (a discriminator's)
        # keeps the mean its loss was written with.
        if self._window_count is not None and optimizer is self.trainer.optimizers[0]:
            self._normalise_gradients(optimizer)
        self.step.before_optimizer_step(self, optimizer)

    def _normalise_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        global_count = self.trainer.strategy.reduce(self._window_count.float(), reduce_op="sum")
        # Lightning already divided each micro-batch loss by accumulate_grad_batches and
        # data parallelism averaged over ranks; undo both and divide by the true count.
        factor = (self.trainer.accumulate_grad_batches * self.trainer.world_size) / global_count.clamp_min(1)
        # Under FSDP2 the gradients are DTensors (this process's shard); scale the shards.
        grads = [_local(p.grad) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, factor)
        self._window_count = None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, ModelOutput | None]:
        """Logs the terms; returns the outputs for callbacks' ``on_validation_batch_end``."""
        return self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, ModelOutput | None]:
        """Logs the terms; returns the outputs for callbacks' ``on_test_batch_end``."""
        return self._evaluate(batch, "test", self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self.student(**side_inputs(batch, "student")).logits

    def _evaluate(self, batch: dict[str, Any], stage: str,
                  metrics: nn.ModuleDict) -> dict[str, ModelOutput | None]:
        student_out, teacher_out = self(batch)
        total, values = self.compute_losses(batch, student_out, teacher_out)
        count = valid_count(batch).float()
        metrics["loss"].update(total, count)
        for name, value in values.items():
            metrics[name].update(value, count)
        logged = ["loss", *values]
        labels = batch.get("labels")
        if isinstance(labels, Tensor) and labels.dtype == torch.long:
            for side, out in (("student", student_out), ("teacher", teacher_out)):
                if out is not None and out.logits is not None and out.logits.shape[:-1] == labels.shape \
                        and f"{side}_inputs" not in batch:
                    metrics[f"{side}_ce"].update(cross_entropy(out.logits, labels), count)
                    logged.append(f"{side}_ce")
        size = batch_size(batch)
        for name in logged:
            self.log(f"{stage}/{name}", metrics[name], prog_bar=name == "loss", batch_size=size)
        return {"student": student_out, "teacher": teacher_out}

    # --------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        """The module's optimizer (student and loss-term parameters), then the step's own, if any."""
        params, seen = [], set()
        for p in [*self.student.parameters(), *self.losses.parameters()]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return self.step.configure_optimizers(self, optimizer)
        scheduler = self.scheduler_factory(optimizer)
        return self.step.configure_optimizers(self, {
            "optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}})

    # ------------------------------------------------------------ checkpoints
    def on_validation_epoch_end(self) -> None:
        # Here, not in on_validation_end: checkpoint callbacks save in on_validation_end, before
        # the module's hook, and a step's state changed by this validation must be in them.
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        if type(self.step).after_validation is TrainingStep.after_validation:
            return  # a step without the hook: no metric computed (and all-reduced) for it
        values = {f"val/{name}": metric.compute() for name, metric in self.val_metrics.items() if metric.update_called}
        self.step.after_validation(self, values)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A sharded run (FSDP2) resumes by loading into the whole module, teacher included,
        # so its checkpoints keep the teacher's shards; `python -m lit_distill.consolidate`
        # drops them for single-process use.
        if not is_sharded(self.student):
            state = checkpoint["state_dict"]
            if self.teacher is not None and not self.teacher.in_checkpoint:
                for key in [k for k in state if k.startswith("teacher.")]:
                    del state[key]
            for key in frozen_base_keys(self.student, "student."):  # a LoRA student's base: rebuilt from its path
                state.pop(key, None)
        step_state = self.step.checkpoint_state()
        if step_state:
            checkpoint["training_step_state"] = step_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The teacher was rebuilt from its own config; keep its weights on load.
        # (A sharded checkpoint's state was loaded by the strategy already: no state_dict here.)
        if "state_dict" in checkpoint:
            state = checkpoint["state_dict"]
            if self.teacher is not None:
                for key, value in self.teacher.state_dict(prefix="teacher.").items():
                    state.setdefault(key, value)
            restore_frozen_base(state, self.student, "student.")
        self.step.load_checkpoint_state(checkpoint.get("training_step_state", {}))


def _local(tensor: Tensor) -> Tensor:
    """The local shard of a DTensor (the tensor itself otherwise), for in-place updates."""
    return tensor._local_tensor if isinstance(tensor, DTensor) else tensor


def _check_finite(out: ModelOutput) -> None:
    """Fail on NaN or +inf teacher logits (-inf is a legitimate masked entry). Runs once."""
    if out.logits is not None and (torch.isnan(out.logits).any() or torch.isposinf(out.logits).any()):
        raise ConfigError("teacher: produced NaN/inf logits on the first training batch; check its "
                          "weights and dtype (float16 overflow?) before distilling from it")
