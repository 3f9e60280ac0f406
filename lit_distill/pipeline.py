"""Teacher-then-student pipelines: train a teacher with the framework, export it, distil from it.

Several methods train their own teacher first (DeiT-LT's SAM-trained CNN, LAD's
label-assisted teacher). :func:`teacher_then_student` runs the two ``fit`` commands and the
two ``export`` commands a user would type, and hands the exported teacher to the student
config, so one command reproduces a method end to end.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from lit_distill.build import fit
from lit_distill.export import export_checkpoint

TEACHER_CHECKPOINT_ARG = "--model.init_args.teacher.init_args.model.init_args.checkpoint"


def teacher_then_student(teacher_config: Sequence[str] | str, student_config: Sequence[str] | str, workdir: str,
                         extra_args: Sequence[str] = (), teacher_args: Sequence[str] = (),
                         student_args: Sequence[str] = (),
                         teacher_checkpoint_arg: str = TEACHER_CHECKPOINT_ARG) -> dict[str, Any]:
    """Fit and export the teacher, then fit and export the student distilled from it.

    Args:
        teacher_config: config file(s) of the teacher run (a ``teacher: null`` config).
        student_config: config file(s) of the student run; its teacher's weights file is set
            with ``teacher_checkpoint_arg`` to the exported teacher.
        workdir: runs go to ``workdir/teacher_run`` and ``workdir/student_run``, exports to
            ``workdir/teacher`` and ``workdir/student``.
        extra_args: CLI arguments for both runs (e.g. ``--trainer.max_epochs=1``).
        teacher_args: CLI arguments for the teacher run only.
        student_args: CLI arguments for the student run only.
        teacher_checkpoint_arg: the student-config flag that receives the exported
            ``model_state_dict.pt`` (a state-dict file, as image adapters' ``checkpoint`` take).

    Returns:
        ``{"teacher": dir, "student": dir, "teacher_metrics": {...}, "student_metrics": {...}}``
        with the last validation's ``val/*`` values as floats.
    """
    def configs(paths: Sequence[str] | str) -> list[str]:
        return [x for path in ([paths] if isinstance(paths, str) else paths) for x in ("--config", str(path))]

    teacher = fit_and_export([*configs(teacher_config), *extra_args, *teacher_args],
                             os.path.join(workdir, "teacher_run"), os.path.join(workdir, "teacher"))
    student = fit_and_export([*configs(student_config), *extra_args, *student_args,
                              f"{teacher_checkpoint_arg}={os.path.join(teacher['export'], 'model_state_dict.pt')}"],
                             os.path.join(workdir, "student_run"), os.path.join(workdir, "student"))
    return {"teacher": teacher["export"], "student": student["export"],
            "teacher_metrics": teacher["metrics"], "student_metrics": student["metrics"]}


def fit_and_export(args: Sequence[str], run_dir: str, export_dir: str) -> dict[str, Any]:
    """``fit`` with the given CLI arguments into ``run_dir``, then ``export`` its ``last.ckpt``.

    Args:
        args: ``python -m lit_distill fit`` arguments (``--config FILE`` and flags).
        run_dir: the run's ``trainer.default_root_dir``.
        export_dir: where the student is exported in its native format.

    Returns:
        ``{"export": export_dir, "metrics": {val/...: float}}`` (the last validation's values).
    """
    run = fit((), [*args, f"--trainer.default_root_dir={run_dir}"])
    export = export_checkpoint(run.trainer.checkpoint_callback.last_model_path, export_dir)
    return {"export": export, "metrics": run.metrics()}
