"""The LightningCLI that parses lit_distill configs, shared by the command line and the builder.

One parser, one set of links and one checkpoint default: ``python -m lit_distill``
(:mod:`lit_distill.cli`) and :func:`lit_distill.build.build` both construct
:class:`DistillationCLI` through :func:`make_cli`, so a config builds the same objects
whichever way it is run.
"""

from __future__ import annotations

import argparse
import os
import zipfile
from collections.abc import Sequence
from typing import Any

from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from lit_distill.callbacks.progress import StepProgressBar
from lit_distill.checkpointing import DistillationCheckpoint
from lit_distill.errors import ConfigError, MissingPathError
from lit_distill.module import DistillationModule

DESCRIPTION = """lit_distill: knowledge distillation on Lightning.

  python -m lit_distill fit --config configs/text/kd/quickstart-student_from_quickstart-teacher.yaml
  python -m lit_distill fit --help            (every option, from the docstrings)
  python -m lit_distill export --ckpt CKPT --out DIR
  python -m lit_distill quickstart            (build data, teacher, distill, compare)
  python -m lit_distill slurm --config A.yaml --nodes 2 --ntasks-per-node 4 --save job.sbatch
  python -m lit_distill cache-teacher --config A.yaml --out CACHE_DIR
  python -m lit_distill generate --config A.yaml --out DIR   (the teacher answers the data's prompts: JSONL)
  python -m lit_distill init-student --teacher DIR --layers every:2 --out DIR   (student from teacher layers)
  python -m lit_distill tokenize|decode --ckpt CODEC.ckpt --out DIR FILES...   (speech codecs)
"""

# Values a datamodule only knows once it is built (its tokenizer's size and pad
# id, its number of classes) flow into the student. A link whose source the chosen datamodule lacks is
# skipped, so one CLI serves every modality; a student takes a linked value by having the argument.
DATA_TO_STUDENT_LINKS = ("vocab_size", "pad_token_id", "num_classes")


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks (the command examples)."""


class DistillationCLI(LightningCLI):
    """LightningCLI with lit_distill's links and a default checkpoint callback (``last.ckpt`` + best).

    The checkpoint callback is :class:`~lit_distill.checkpointing.DistillationCheckpoint`:
    atomic writes and the generators' states, so ``--ckpt_path last.ckpt`` resumes exactly.
    """

    def add_arguments_to_parser(self, parser) -> None:
        for name in DATA_TO_STUDENT_LINKS:
            parser.link_arguments(f"data.{name}", f"model.init_args.student.init_args.{name}",
                                  apply_on="instantiate")
        parser.add_lightning_class_args(DistillationCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 1,
            "checkpoint.filename": "best-step{step}",
            "checkpoint.auto_insert_metric_name": False,
        })

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with :class:`~lit_distill.callbacks.progress.StepProgressBar` unless the
        config turns the bar off or brings its own (Lightning's bar shows "Epoch 1/-2" when only
        ``max_steps`` bounds the run)."""
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        if trainer_config.get("enable_progress_bar") is not False \
                and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        # Lightning warns when `args` is given while sys.argv holds arguments too; here that is
        # always a library caller (the builder, the quickstart) running inside a command of its
        # own, and `args` is what it means, so parse it without the warning.
        if isinstance(args, dict | Namespace):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def _dump_config(self) -> None:
        # Lightning writes the linked values into the dumped config to save the module's
        # hyperparameters; a student whose every argument is linked or None (a user's
        # `{class_path: my.Model}`) is dumped without `init_args`, and Lightning then asserts.
        super()._dump_config()
        model = self.config_dump.get("model")
        student = model.get("init_args", {}).get("student") if isinstance(model, dict) else None
        if isinstance(student, dict) and "class_path" in student:
            student.setdefault("init_args", {})

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the checkpoint's hyperparameters right after parsing; check it first so
        # a bad file gives one line, not a deserialisation traceback.
        self._check_ckpt_path()
        super()._parse_ckpt_path()

    def _check_ckpt_path(self) -> None:
        """Fail with one line on a ``--ckpt_path`` that is missing or not a readable checkpoint."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or path in ("last", "best", "hpc", "registry") or os.path.isdir(path):
            return  # Lightning's keywords, and sharded checkpoints (directories)
        if not os.path.isfile(path):
            raise MissingPathError(f"ckpt_path: no file '{path}'")
        if not zipfile.is_zipfile(path):
            raise ConfigError(f"ckpt_path: '{path}' is not a readable checkpoint (truncated or not written "
                              "by torch.save); resume from another one, e.g. an earlier last.ckpt")


def make_cli(args: Sequence[str] | None = None, run: bool = True) -> DistillationCLI:
    """Construct :class:`DistillationCLI` on ``args`` (None: ``sys.argv``), running its subcommand if ``run``.

    Args:
        args: command-line arguments: ``["fit", "--config", "A.yaml", ...]`` with ``run``,
            the same without the subcommand otherwise; None reads ``sys.argv``.
        run: parse a subcommand (``fit``, ``validate``, ``test``, ``predict``) and run it;
            False only builds the model, datamodule and trainer.
    """
    return DistillationCLI(
        DistillationModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else list(args),
        run=run,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": DESCRIPTION, "default_env": False, "prog": "python -m lit_distill",
                       "formatter_class": _HelpFormatter, "exit_on_error": False},
        auto_configure_optimizers=False,
    )
