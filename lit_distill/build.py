"""Build, or run, from a config what ``python -m lit_distill`` would: the library's entry point.

Library code (the teacher-cache writer, pipelines, the quickstart, experiments) builds its
objects here rather than through the command line::

    from lit_distill.build import build, fit

    built = build("configs/text/kd/quickstart-student_from_quickstart-teacher.yaml", ["--trainer.max_steps=2"])
    built.model, built.datamodule, built.trainer        # instantiated, nothing run

    run = fit(["configs/text/kd/quickstart-student_from_quickstart-teacher.yaml", {"trainer": {"max_steps": 2}}])
    run.metrics()                                      # {"val/loss": ..., "val/kd": ...}

Both go through :func:`lit_distill.distillation_cli.make_cli`: the same parser, the same
data-to-student links, the same checkpoint callback and seed default as the command line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from lit_distill.distillation_cli import DistillationCLI, make_cli

ConfigSource = str | os.PathLike | Mapping[str, Any]
Subcommand = Literal["fit", "validate", "test", "predict"]


@dataclass
class Built:
    """The objects a config describes.

    Attributes:
        model: the ``DistillationModule`` (or the config's other ``LightningModule``).
        datamodule: the config's ``data``.
        trainer: the ``Trainer``, with the config's callbacks and the default checkpoint callback;
            after :func:`run` it holds the run's state (``callback_metrics``, ``checkpoint_callback``).
        config: the parsed config (a jsonargparse ``Namespace``, as ``--print_config`` shows it).
    """

    model: LightningModule
    datamodule: LightningDataModule
    trainer: Trainer
    config: Namespace

    def metrics(self, prefix: str = "val/") -> dict[str, float]:
        """The trainer's last logged values whose names start with ``prefix``, as floats."""
        return {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(prefix)}


def config_args(configs: ConfigSource | Sequence[ConfigSource] = (), overrides: Sequence[str] = ()) -> list[str]:
    """Command-line arguments for ``configs`` (stacked in order) followed by ``overrides``.

    Args:
        configs: YAML/JSON files and/or config dicts; later ones override earlier ones, as
            repeated ``--config`` flags do. A dict is passed as ``--config <its JSON>``.
        overrides: flags as on the command line, e.g. ``["--trainer.max_steps=2"]``.
    """
    if isinstance(configs, str | os.PathLike | Mapping):
        configs = [configs]
    args = []
    for config in configs:
        args += ["--config", json.dumps(config) if isinstance(config, Mapping) else os.fspath(config)]
    return [*args, *overrides]


def build(configs: ConfigSource | Sequence[ConfigSource] = (), overrides: Sequence[str] = ()) -> Built:
    """Instantiate the model, datamodule and trainer of a config without running anything.

    Args:
        configs: config files and/or dicts, stacked in order (see :func:`config_args`).
        overrides: command-line flags applied after the configs (e.g. ``--data.init_args.batch_size=8``);
            subcommand flags such as ``--ckpt_path`` belong to :func:`run`.

    Raises:
        argparse.ArgumentError: the config does not parse (unknown key, wrong type, bad YAML).
        ConfigError: a component refuses its arguments.
    """
    return _built(make_cli(config_args(configs, overrides), run=False), None)


def run(subcommand: Subcommand, configs: ConfigSource | Sequence[ConfigSource] = (),
        overrides: Sequence[str] = ()) -> Built:
    """Run ``python -m lit_distill <subcommand>`` on a config, in this process.

    Args:
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        configs: config files and/or dicts, stacked in order (see :func:`config_args`).
        overrides: command-line flags, including the subcommand's own (``--ckpt_path=...``).

    Returns:
        The objects, after the run (``trainer.callback_metrics``, ``trainer.checkpoint_callback``).
    """
    return _built(make_cli([subcommand, *config_args(configs, overrides)], run=True), subcommand)


def fit(configs: ConfigSource | Sequence[ConfigSource] = (), overrides: Sequence[str] = ()) -> Built:
    """``run("fit", configs, overrides)``: train as ``python -m lit_distill fit`` would."""
    return run("fit", configs, overrides)


def _built(cli: DistillationCLI, subcommand: str | None) -> Built:
    config = cli.config[subcommand] if subcommand else cli.config
    return Built(model=cli.model, datamodule=cli.datamodule, trainer=cli.trainer, config=config)
