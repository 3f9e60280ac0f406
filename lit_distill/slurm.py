"""``python -m lit_distill slurm``: render an sbatch script that runs ``fit`` on a SLURM allocation.

    python -m lit_distill slurm --config configs/text/kd/quickstart-student_from_quickstart-teacher_ddp.yaml \\
        --nodes 2 --ntasks-per-node 4 --gpus-per-node 4 --cpus-per-task 8 --time 12:00:00 \\
        --partition gpu --setup 'source .venv/bin/activate' --save job.sbatch \\
        -- --trainer.max_steps=10000
    sbatch job.sbatch

The script asks for ``--nodes`` × ``--ntasks-per-node`` tasks (one process per
device: Lightning refuses ``--ntasks``), runs ``srun python -m lit_distill fit``
with ``trainer.num_nodes``/``trainer.devices`` set to match the request, and
gives the trainer ``SLURMEnvironment(auto_requeue=True)``: SLURM sends SIGUSR1
90 seconds before the time limit (``--signal=SIGUSR1@90``), Lightning saves
``hpc_ckpt_<n>.ckpt`` in ``trainer.default_root_dir`` and requeues the job, and
the requeued job resumes from that checkpoint by itself. Under
``ModelParallelStrategy`` (FSDP2) the data-parallel size is set to the total
number of tasks.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lit_distill.errors import ConfigError

SLURM_ENVIRONMENT = "lightning.pytorch.plugins.environments.SLURMEnvironment"
MODEL_PARALLEL = ("ModelParallelStrategy",)
# SLURM's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d+(:\d{1,2}){0,2}")
_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass
class SlurmJob:
    """What to ask SLURM for and what to run.

    Args:
        configs: ``fit`` configs, stacked in order (paths as the job will see them).
        nodes: number of nodes (``--nodes``, ``trainer.num_nodes``).
        ntasks_per_node: processes per node, one per device (``--ntasks-per-node``,
            ``trainer.devices``).
        gpus_per_node: GPUs per node; 0 runs on CPUs (``trainer.accelerator=cpu``),
            otherwise it must equal ``ntasks_per_node``.
        cpus_per_task: CPU cores per process (``--cpus-per-task``); None: SLURM's default.
        time: wall-clock limit in a SLURM format (``HH:MM:SS``, ``D-HH:MM:SS``, minutes).
        partition: partition to submit to; None: the cluster's default.
        job_name: job name (not ``bash``/``interactive``, which make Lightning
            ignore SLURM).
        setup: shell lines run before training (modules, ``source .venv/bin/activate``).
        output: path of the job's log (``%j`` is the job id); appended to on requeue.
        workdir: directory the job runs in (where relative config paths resolve).
        python: Python interpreter that runs lit_distill.
        fit_args: extra ``fit`` arguments (overrides), appended last.
        requeue_signal_seconds: seconds before the time limit at which SLURM sends SIGUSR1.
    """

    configs: list[str]
    nodes: int = 1
    ntasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    time: str = "01:00:00"
    partition: str | None = None
    job_name: str = "lit_distill"
    setup: list[str] = field(default_factory=list)
    output: str = "slurm-%j.out"
    workdir: str = "."
    python: str = "python"
    fit_args: list[str] = field(default_factory=list)
    requeue_signal_seconds: int = 90

    def validate(self) -> None:
        """ConfigError naming the option on any request SLURM or Lightning would refuse."""
        if not self.configs:
            raise ConfigError("slurm --config: give at least one fit config")
        for config in self.configs:
            path = config if os.path.isabs(config) else os.path.join(self.workdir, config)
            if not os.path.isfile(path):
                raise ConfigError(f"slurm --config: no file '{config}' (relative paths are taken from --workdir "
                                  f"'{self.workdir}')")
        for name in ("nodes", "ntasks_per_node"):
            if getattr(self, name) < 1:
                raise ConfigError(f"slurm --{name.replace('_', '-')}: must be at least 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ConfigError(f"slurm --gpus-per-node: must be 0 (CPUs) or more, got {self.gpus_per_node}")
        if self.gpus_per_node and self.gpus_per_node != self.ntasks_per_node:
            raise ConfigError(f"slurm --gpus-per-node: {self.gpus_per_node} GPUs but --ntasks-per-node "
                              f"{self.ntasks_per_node}; Lightning runs one process per GPU, make them equal")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ConfigError(f"slurm --cpus-per-task: must be at least 1, got {self.cpus_per_task}")
        if not _TIME.fullmatch(self.time):
            raise ConfigError(f"slurm --time: '{self.time}' is not a SLURM time; use minutes, HH:MM:SS, "
                              "D-HH or D-HH:MM:SS (e.g. 12:00:00, 2-00:00:00)")
        if self.partition is not None and not _NAME.fullmatch(self.partition):
            raise ConfigError(f"slurm --partition: '{self.partition}' is not a partition name")
        if not _NAME.fullmatch(self.job_name) or self.job_name in ("bash", "interactive"):
            raise ConfigError(f"slurm --job-name: '{self.job_name}' is not usable (letters, digits, _.+-; "
                              "not 'bash' or 'interactive', which make Lightning ignore SLURM)")
        if not 0 < self.requeue_signal_seconds <= 65535:
            raise ConfigError("slurm --requeue-signal-seconds: must be between 1 and 65535 "
                              f"(SLURM's limit), got {self.requeue_signal_seconds}")

    @property
    def world_size(self) -> int:
        """Total number of processes."""
        return self.nodes * self.ntasks_per_node

    def trainer_args(self) -> list[str]:
        """``fit`` overrides that make the trainer match the allocation."""
        plugin = [{"class_path": SLURM_ENVIRONMENT, "init_args": {"auto_requeue": True}}]
        args = [f"--trainer.num_nodes={self.nodes}", f"--trainer.devices={self.ntasks_per_node}",
                f"--trainer.accelerator={'gpu' if self.gpus_per_node else 'cpu'}",
                f"--trainer.plugins={_json(plugin)}"]
        if _strategy_name(self.configs, self.workdir).endswith(MODEL_PARALLEL):
            args += [f"--trainer.strategy.init_args.data_parallel_size={self.world_size}",
                     "--trainer.strategy.init_args.tensor_parallel_size=1"]
        return args

    def fit_command(self) -> list[str]:
        """The command every task runs (under ``srun``)."""
        configs = [arg for config in self.configs for arg in ("--config", config)]
        return [self.python, "-m", "lit_distill", "fit", *configs, *self.trainer_args(), *self.fit_args]


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


def _strategy_name(configs: Sequence[str], workdir: str) -> str:
    """The ``trainer.strategy`` the stacked configs end up with (its class path or name), '' if none."""
    name = ""
    for config in configs:
        path = config if os.path.isabs(config) else os.path.join(workdir, config)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"slurm --config: '{config}' is not valid YAML ({err})") from err
        strategy = (data.get("trainer") or {}).get("strategy") if isinstance(data, dict) else None
        if isinstance(strategy, dict):
            name = str(strategy.get("class_path", name))
        elif strategy is not None:
            name = str(strategy)
    return name


def render_sbatch(job: SlurmJob) -> str:
    """The sbatch script for ``job`` (validated first).

    Returns:
        The script's text: ``#SBATCH`` directives, the setup lines, then ``srun`` of ``fit``.
    """
    job.validate()
    directives = [
        f"--job-name={job.job_name}",
        f"--nodes={job.nodes}",
        f"--ntasks-per-node={job.ntasks_per_node}",
        *([f"--gpus-per-node={job.gpus_per_node}"] if job.gpus_per_node else []),
        *([f"--cpus-per-task={job.cpus_per_task}"] if job.cpus_per_task else []),
        f"--time={job.time}",
        *([f"--partition={job.partition}"] if job.partition else []),
        f"--output={job.output}",
        "--open-mode=append",
        # To every task, not just the batch shell: Lightning's handler saves and requeues.
        f"--signal=SIGUSR1@{job.requeue_signal_seconds}",
        "--requeue",
    ]
    lines = ["#!/bin/bash",
             "# Rendered by `python -m lit_distill slurm`; submit with `sbatch <this file>`.",
             *(f"#SBATCH {d}" for d in directives),
             "",
             "set -euo pipefail",
             f"cd {shlex.quote(os.path.abspath(job.workdir))}",
             *job.setup,
             'echo "lit_distill: job ${SLURM_JOB_ID} on ${SLURM_JOB_NODELIST}, '
             f'{job.world_size} processes (restart ${{SLURM_RESTART_COUNT:-0}})"',
             "srun " + shlex.join(job.fit_command()),
             ""]
    return "\n".join(lines)


def main(args: Sequence[str]) -> None:
    """``python -m lit_distill slurm [options] [-- fit overrides]``: print or save the sbatch script."""
    args = list(args)
    fit_args: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, fit_args = args[:cut], args[cut + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m lit_distill slurm", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after `--` are passed to `fit` (e.g. --trainer.max_steps=1000).")
    parser.add_argument("--config", action="append", required=True, help="fit config (repeat to stack)")
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    parser.add_argument("--ntasks-per-node", type=int, default=1, help="processes per node, one per device")
    parser.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (0: CPU training)")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per process")
    parser.add_argument("--time", default="01:00:00", help="time limit, e.g. 12:00:00 or 2-00:00:00")
    parser.add_argument("--partition", default=None, help="partition (default: the cluster's)")
    parser.add_argument("--job-name", default="lit_distill", help="job name")
    parser.add_argument("--setup", action="append", default=[],
                        help="shell line run before training (repeatable), e.g. 'source .venv/bin/activate'")
    parser.add_argument("--output", default="slurm-%j.out", help="job log path (%%j: job id)")
    parser.add_argument("--workdir", default=".", help="directory the job runs in (default: here)")
    parser.add_argument("--python", default="python", help="Python interpreter on the nodes")
    parser.add_argument("--requeue-signal-seconds", type=int, default=90,
                        help="send SIGUSR1 this many seconds before the time limit (default 90)")
    parser.add_argument("--save", default=None, help="write the script here instead of printing it")
    ns = parser.parse_args(args)
    job = SlurmJob(configs=ns.config, nodes=ns.nodes, ntasks_per_node=ns.ntasks_per_node,
                   gpus_per_node=ns.gpus_per_node, cpus_per_task=ns.cpus_per_task, time=ns.time,
                   partition=ns.partition, job_name=ns.job_name, setup=ns.setup, output=ns.output,
                   workdir=ns.workdir, python=ns.python, fit_args=fit_args,
                   requeue_signal_seconds=ns.requeue_signal_seconds)
    script = render_sbatch(job)
    if ns.save is None:
        print(script, end="")
        return
    Path(ns.save).write_text(script)
    Path(ns.save).chmod(0o755)
    print(f"wrote {ns.save}; submit with: sbatch {ns.save}")
