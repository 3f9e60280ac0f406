"""Run experiments through ``python -m lit_distill fit`` and collect their metrics.

An experiment is a list of :class:`Run` (config files + CLI overrides + a seed), usually
arms × seeds (:func:`expand`). :func:`launch` runs each one as the command a user types::

    python -m lit_distill fit --config A.yaml [--config B.yaml] <overrides> \\
        --trainer.default_root_dir=DIR --seed_everything=S [--ckpt_path=DIR/.../last.ckpt]
    python -m lit_distill export --ckpt DIR/.../last.ckpt --out DIR/export     (Run.export)

in a subprocess (resume, token normalisation and the early checks are the real ones),
``workers`` at a time with ``cores // workers`` torch threads each (``OMP_NUM_THREADS``).
Stages are successive calls: a teacher stage with ``export=True``, then students whose
overrides point at its ``export_dir``; a pretrained student is reused the same way.

A run's directory, ``ROOT/<group>/<name>/seed<S>/``, holds ``run.log`` (the commands'
output), ``run.json`` (its fit arguments: a rerun with other arguments is refused),
``lightning_logs/version_<n>/`` per attempt (``metrics.csv``, ``checkpoints/last.ckpt``),
``export/`` and, once fit and export succeeded, the completion marker ``done.json``. A rerun
skips finished runs and resumes an unfinished one from its newest ``last.ckpt``.

Metrics come from Lightning's ``CSVLogger``, which the toolkit sets as the run's logger
(before the run's own overrides, so a run may replace it and lose its trajectories):
:func:`read_metrics` returns every logged value by step and the last value of each.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from lit_distill.errors import ConfigError

DONE = "done.json"
SEED = "{seed}"  # in an override: the run's seed
LOG_TAIL_LINES = 8
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class Run:
    """One ``fit``: config files, CLI overrides and a seed, in its own directory.

    Args:
        name: the arm; runs of one arm differ only by ``seed``.
        configs: config files, stacked in order (``--config`` each).
        overrides: further CLI arguments, e.g. ``--trainer.max_steps=100``. ``{seed}`` in one is
            replaced by the run's seed: a pretrained student is deterministic apart from the data
            order and sampling, whose seeds (``--data.init_args.seed={seed}``, a step's ``seed``)
            ``--seed_everything`` does not set.
        seed: ``--seed_everything``.
        group: the stage (``teacher``, ``students``, ...): a level of the directory tree.
        export: also export the student to ``<run dir>/export`` after the fit.
    """

    name: str
    configs: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    seed: int = 0
    group: str = "runs"
    export: bool = False

    def __post_init__(self) -> None:  # lists and Paths welcome; stored as tuples of str
        object.__setattr__(self, "configs", tuple(map(str, self.configs)))
        object.__setattr__(self, "overrides", tuple(map(str, self.overrides)))

    @property
    def label(self) -> str:
        """``group/name/seedS``: how logs and errors name the run."""
        return f"{self.group}/{self.name}/seed{self.seed}"

    def directory(self, root: str | Path) -> Path:
        """``root/<group>/<name>/seed<S>`` with unsafe characters of the names replaced by ``_``."""
        def safe(text: str) -> str:
            return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_") or "_"

        return Path(root) / safe(self.group) / safe(self.name) / f"seed{self.seed}"


def expand(arms: Iterable[Run], seeds: Iterable[int]) -> list[Run]:
    """Every arm at every seed, seeds innermost: ``[a@s0, a@s1, b@s0, b@s1]``."""
    seeds = list(seeds)
    return [replace(arm, seed=seed) for arm in arms for seed in seeds]


@dataclass(frozen=True)
class Metrics:
    """What a run logged: ``trajectories[key]`` = ``[(step, value), ...]`` sorted by step."""

    trajectories: dict[str, list[tuple[int, float]]]

    @property
    def final(self) -> dict[str, float]:
        """The last logged value of every metric (``val/*`` and ``train/*``)."""
        return {key: points[-1][1] for key, points in self.trajectories.items() if points}


@dataclass(frozen=True)
class RunResult:
    """A finished run: where it lives, its fit (+ export) wall time, whether this call skipped it."""

    run: Run
    directory: Path
    seconds: float
    skipped: bool

    @property
    def export_dir(self) -> Path:
        """Where ``Run.export`` wrote the student (native format)."""
        return self.directory / "export"

    def metrics(self) -> Metrics:
        """The run's logged metrics (:func:`read_metrics`)."""
        return read_metrics(self.directory)


class RunFailed(RuntimeError):
    """One or more runs exited non-zero; the message names each with the tail of its log."""


def fit_arguments(run: Run, directory: Path) -> list[str]:
    """The ``python -m lit_distill fit`` arguments of ``run`` (without ``--ckpt_path``)."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
              "init_args": {"save_dir": str(directory), "flush_logs_every_n_steps": 1}}
    return ["fit", *(x for config in run.configs for x in ("--config", config)),
            f"--trainer.logger={json.dumps(logger)}", *(o.replace(SEED, str(run.seed)) for o in run.overrides),
            f"--trainer.default_root_dir={directory}", f"--seed_everything={run.seed}"]


def last_checkpoint(directory: Path) -> Path | None:
    """The newest ``last.ckpt`` under ``directory``, if any."""
    found = list(directory.rglob("last.ckpt"))
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def launch(runs: Sequence[Run], root: str | Path, workers: int | None = None,
           cwd: str | Path | None = None, threads: int | None = None) -> list[RunResult]:
    """Run every unfinished run (``workers`` at a time); results in the order of ``runs``.

    Args:
        runs: the runs; their directories under ``root`` must differ.
        root: experiment directory.
        workers: parallel runs (default ``os.cpu_count()``); each gets ``cores // workers``
            torch threads.
        cwd: working directory of the commands (config paths are relative to it); default:
            the current one. The subprocesses import this process's ``lit_distill``.
        threads: torch threads per run (default ``cores // workers``), e.g. 1 for one run at a
            time on a machine shared with other jobs.

    Raises:
        ConfigError: two runs share a directory, or a run directory was started with other
            fit arguments.
        RunFailed: after every other run has finished, if any run failed.
    """
    directories = [run.directory(Path(root).resolve()) for run in runs]
    if len(set(directories)) != len(directories):
        raise ConfigError(f"runs: two runs share a directory under '{root}'; give them distinct names/groups")
    for run, directory in zip(runs, directories, strict=True):
        recorded = directory / "run.json"
        if recorded.exists() and json.loads(recorded.read_text())["fit"] != fit_arguments(run, directory):
            raise ConfigError(f"{recorded}: this run directory holds a run with other fit arguments; "
                              "delete it or choose another experiment root")
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(runs) or 1))
    threads = threads or max(1, cores // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda r, d: _run_one(r, d, env, cwd), runs, directories))
    failures = [outcome for outcome in outcomes if isinstance(outcome, str)]
    if failures:
        raise RunFailed(f"{len(failures)} of {len(runs)} runs failed:\n" + "\n".join(failures))
    return outcomes


def _run_one(run: Run, directory: Path, env: dict[str, str], cwd: str | Path | None) -> RunResult | str:
    """Fit (and export) one run; on failure, a message naming it with its log's tail instead of raising."""
    done = directory / DONE
    if done.exists():
        return RunResult(run, directory, json.loads(done.read_text())["seconds"], skipped=True)
    args = fit_arguments(run, directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "run.json").write_text(json.dumps({"label": run.label, "fit": args}, indent=2) + "\n")
    resume = last_checkpoint(directory)
    commands = [[*args, f"--ckpt_path={resume}"] if resume else args]
    log_path, start = directory / "run.log", time.perf_counter()
    with open(log_path, "a") as log:
        code = _execute(commands[0], log, env, cwd)
        if code == 0 and run.export:
            commands.append(["export", "--ckpt", str(last_checkpoint(directory)), "--out", str(directory / "export")])
            code = _execute(commands[1], log, env, cwd)
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        return (f"run '{run.label}' failed ({commands[-1][0]} exit {code}); last lines of {log_path}:\n"
                + "\n".join(f"    {line}" for line in tail))
    seconds = round(time.perf_counter() - start, 1)
    done.with_suffix(".tmp").write_text(json.dumps({"seconds": seconds, "commands": commands}, indent=2) + "\n")
    os.replace(done.with_suffix(".tmp"), done)  # a marker is complete or absent
    print(f"finished {run.label} in {seconds:.0f} s", flush=True)
    return RunResult(run, directory, seconds, skipped=False)


def _execute(args: list[str], log, env: dict[str, str], cwd: str | Path | None) -> int:
    """``python -m lit_distill <args>`` with its output appended to ``log``; the exit status."""
    log.write(f"$ python -m lit_distill {shlex.join(args)}\n")
    log.flush()
    return subprocess.run([sys.executable, "-m", "lit_distill", *args], cwd=cwd, env=env, stdout=log,
                          stderr=subprocess.STDOUT, check=False).returncode


def read_metrics(directory: str | Path) -> Metrics:
    """Every value in ``directory``'s ``lightning_logs/version_*/metrics.csv`` by step.

    Steps are Lightning's logger steps: step k holds the training values of the batch of the
    (k+1)-th optimizer step and a validation run after it. A resumed run has one version per
    attempt; where two attempts logged a metric at the same step, the later attempt wins.
    """
    versions = Path(directory).glob("lightning_logs/version_*/metrics.csv")
    values: dict[str, dict[int, float]] = {}
    for path in sorted(versions, key=lambda p: int(p.parent.name.split("_")[-1])):
        with open(path, newline="") as file:
            for row in csv.DictReader(file):
                step = int(float(row["step"]))
                for key, value in row.items():
                    if key not in ("step", "epoch") and value not in ("", None):
                        values.setdefault(key, {})[step] = float(value)
    return Metrics({key: sorted(points.items()) for key, points in sorted(values.items())})


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (0 for one value) and count of a metric over seeds."""

    mean: float
    std: float
    n: int

    def cell(self, digits: int = 4) -> str:
        """``mean ± std``, e.g. ``4.9724 ± 0.0653``; ``–`` when not measured (NaN)."""
        if math.isnan(self.mean):
            return "–"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def mean_std(values: Iterable[float]) -> Stat:
    """:class:`Stat` of ``values`` (at least one); NaN mean and spread if any value is NaN (not measured)."""
    values = list(values)
    if any(math.isnan(v) for v in values):  # statistics.stdev raises on NaN in Python 3.11
        return Stat(math.nan, math.nan, len(values))
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def by_arm(results: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    """Results grouped by ``run.name``, arms in first-seen order."""
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        groups.setdefault(result.run.name, []).append(result)
    return groups


def summarise(rows_by_arm: Mapping[str, Sequence[Mapping[str, float]]],
              keys: Sequence[str] | None = None) -> dict[str, dict[str, Stat]]:
    """``{arm: {key: Stat}}`` over each arm's rows (one row of values per seed).

    Args:
        rows_by_arm: e.g. ``{arm: [r.metrics().final for r in runs] for arm, runs in by_arm(results).items()}``.
        keys: which values; default every key found in the rows. A row without a key is skipped for it.
    """
    summary = {}
    for arm, rows in rows_by_arm.items():
        arm_keys = keys if keys is not None else list(dict.fromkeys(k for row in rows for k in row))
        summary[arm] = {key: mean_std(row[key] for row in rows if key in row)
                        for key in arm_keys if any(key in row for row in rows)}
    return summary


READING = "\n## Reading"


def write_keeping_reading(path: str | Path, generated: str) -> None:
    """Write ``generated`` to ``path``, keeping the hand-written ``## Reading`` section already there.

    Reports are regenerated by rerunning their script; everything from the old file's first
    ``## Reading`` heading on (the discussion written by a person) is appended to the new tables.
    """
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    path.write_text(generated + (old[old.index(READING):] if READING in old else ""))


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (cells converted with ``str``)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(summary: Mapping[str, Mapping[str, Stat]], keys: Sequence[str], digits: int = 4) -> str:
    """One row per arm: ``arm | n | mean ± std of each key`` (``-`` where an arm lacks a key)."""
    rows = []
    for arm, stats in summary.items():
        n = max((stat.n for stat in stats.values()), default=0)
        rows.append([arm, n, *(stats[key].cell(digits) if key in stats else "-" for key in keys)])
    return markdown_table(["arm", "n", *keys], rows)


def plot_trajectories(curves_by_arm: Mapping[str, Sequence[Sequence[tuple[int, float]]]], key: str,
                      path: str | Path) -> None:
    """Save a PNG of ``key`` against step: per arm, the mean over seeds and a min–max band.

    Args:
        curves_by_arm: ``{arm: [trajectory of seed 1, ...]}``, each ``[(step, value), ...]``,
            e.g. ``{arm: [r.metrics().trajectories[key] for r in runs] for arm, runs in by_arm(results).items()}``.
            Only the steps every seed of an arm logged are drawn.
        key: the metric (the y-axis label).
        path: the PNG file (its directory is created).
    """
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend and figures alone

    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    for arm, curves in curves_by_arm.items():
        points = [dict(curve) for curve in curves if curve]
        steps = sorted(set.intersection(*(set(p) for p in points))) if points else []
        if not steps:
            continue
        columns = [[p[step] for p in points] for step in steps]
        line, = ax.plot(steps, [statistics.fmean(c) for c in columns], label=f"{arm} (n={len(points)})")
        ax.fill_between(steps, [min(c) for c in columns], [max(c) for c in columns],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.legend(fontsize="small")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
