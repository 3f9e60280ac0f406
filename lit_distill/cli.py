"""``python -m lit_distill``: LightningCLI plus the project's own subcommands.

Lightning subcommands (``fit``, ``validate``, ``test``, ``predict``) take a
``--config`` (stackable) naming the model, the data and the trainer; extra
subcommands: ``export`` (student to its native format), ``quickstart``, ``slurm`` (render an
sbatch script), ``cache-teacher`` (write the teacher's sparse outputs once) and
``tokenize``/``decode`` (audio to a speech codec's token ids and back).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from lit_distill.checkpointing import DistillationCheckpoint
from lit_distill.errors import ConfigError, MissingPathError
from lit_distill.module import DistillationModule

DESCRIPTION = """lit_distill: knowledge distillation on Lightning.

  python -m lit_distill fit --config configs/quickstart.yaml
  python -m lit_distill fit --help            (every option, from the docstrings)
  python -m lit_distill export --ckpt CKPT --out DIR
  python -m lit_distill quickstart            (build data, teacher, distill, compare)
  python -m lit_distill slurm --config A.yaml --nodes 2 --ntasks-per-node 4 --save job.sbatch
  python -m lit_distill cache-teacher --config A.yaml --out CACHE_DIR
  python -m lit_distill tokenize|decode --ckpt CODEC.ckpt --out DIR FILES...   (speech codecs)
"""

# Values a datamodule only knows once it is built (its tokenizer's size and pad
# id, its number of classes) flow into the student. A link whose source the chosen datamodule lacks, or
# whose target the chosen student lacks, is skipped, so one CLI serves every modality.
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


def run_cli(args: Sequence[str] | None = None, run: bool = True) -> DistillationCLI:
    """Build (and by default run) the Lightning CLI on ``args`` (None: ``sys.argv``); returns it."""
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


def _export(args: Sequence[str]) -> None:
    from lit_distill.export import main as export_main

    export_main(args)


def _quickstart(args: Sequence[str]) -> None:
    from lit_distill.quickstart import main as quickstart_main

    quickstart_main(args)


def _slurm(args: Sequence[str]) -> None:
    from lit_distill.slurm import main as slurm_main

    slurm_main(args)


def _cache_teacher(args: Sequence[str]) -> None:
    from lit_distill.cache import main as cache_main

    cache_main(args)


def _tokenize(args: Sequence[str]) -> None:
    from lit_distill.codec_cli import tokenize_main

    tokenize_main(args)


def _decode(args: Sequence[str]) -> None:
    from lit_distill.codec_cli import decode_main

    decode_main(args)


COMMANDS: dict[str, Callable[[Sequence[str]], None]] = {
    "export": _export, "quickstart": _quickstart, "slurm": _slurm, "cache-teacher": _cache_teacher,
    "tokenize": _tokenize, "decode": _decode}


class _DropCloudTips(logging.Filter):
    """Hide Lightning's adverts for its cloud services (this runs offline)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m lit_distill`` and the ``lit-distill`` script."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropCloudTips())
    # Lightning advises `srun` whenever SLURM is installed; runs meant for SLURM use `slurm`.
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in COMMANDS:
            COMMANDS[args[0]](args[1:])
        else:
            run_cli(None if argv is None else args)
    except argparse.ArgumentError as err:  # the config does not parse: one line, not the usage
        print(f"error: {condense_parse_error(str(err))} "
              f"(python -m lit_distill {args[0] if args else 'fit'} --help lists every option)", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:  # noqa: BLE001 - only input errors are turned into messages
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


_STRUCTURE = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value",
              "- Expected a <class 'NoneType'>")


def condense_parse_error(message: str) -> str:
    """jsonargparse's nested parse error as ``<full.field.path>: <innermost reason>``.

    Example: ``model.init_args.losses.kd.init_args.temperature: Expected a <class 'float'>.
    Got value: abc``. Messages without nesting are returned as they are.
    """
    lines = [line for line in message.splitlines() if line.strip()]
    if len(lines) < 2:
        return message.strip()
    keys = re.findall(r'Parser key "([^"]+)"', message)
    nested = re.search(r"NestedArg\(key='([^']+)'", message)
    if nested and keys:
        field = f"{keys[0]}.init_args.{nested.group(1)}" if keys[0] in ("model", "data") else \
            f"{keys[0]}.{nested.group(1)}"
    else:
        field = ".".join(keys)
    details = [line for line in lines if not line.strip().startswith(_STRUCTURE)]
    if not details:
        return " ".join(line.strip() for line in lines)
    deepest = max(details, key=lambda line: len(line) - len(line.lstrip()))
    reason = deepest.strip().lstrip("- ")
    return f"{field}: {reason}" if field else reason


def find_user_error(err: BaseException) -> Exception | None:
    """The ConfigError or FileNotFoundError behind ``err``, if any.

    jsonargparse re-raises errors of the classes it instantiates as ValueErrors
    that embed the whole config; the original is in the exception chain.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError | FileNotFoundError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
