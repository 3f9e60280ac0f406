"""``python -m lit_distill``: LightningCLI plus the project's own subcommands.

Lightning subcommands (``fit``, ``validate``, ``test``, ``predict``) take a
``--config`` (stackable) naming the model, the data and the trainer; extra
subcommands: ``export`` (student to its native format), ``quickstart``, ``slurm`` (render an
sbatch script), ``cache-teacher`` (write the teacher's sparse outputs once), ``generate``
(a model answers the data's prompts, as JSONL), ``speculate`` (a draft's acceptance rate
against its target), ``init-student`` and ``tokenize``/``decode`` (audio to a speech codec's token ids and back).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence

from lit_distill.distillation_cli import DistillationCLI, make_cli
from lit_distill.errors import ConfigError


def run_cli(args: Sequence[str] | None = None, run: bool = True) -> DistillationCLI:
    """Build (and by default run) the command line on ``args`` (None: ``sys.argv``); returns it.

    Library code uses :mod:`lit_distill.build` instead; this is the command line itself.
    """
    return make_cli(args, run=run)


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
    from lit_distill.cache_teacher import main as cache_main

    cache_main(args)


def _tokenize(args: Sequence[str]) -> None:
    from lit_distill.codec_cli import tokenize_main

    tokenize_main(args)


def _decode(args: Sequence[str]) -> None:
    from lit_distill.codec_cli import decode_main

    decode_main(args)


def _generate(args: Sequence[str]) -> None:
    from lit_distill.generate import main as generate_main

    generate_main(args)


def _speculate(args: Sequence[str]) -> None:
    from lit_distill.speculate import main as speculate_main

    speculate_main(args)


def _init_student(args: Sequence[str]) -> None:
    from lit_distill.models.init_from_teacher import main as init_student_main

    init_student_main(args)


COMMANDS: dict[str, Callable[[Sequence[str]], None]] = {
    "export": _export, "quickstart": _quickstart, "slurm": _slurm, "cache-teacher": _cache_teacher,
    "init-student": _init_student, "generate": _generate, "speculate": _speculate,
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
    # Lightning's own pytree helper still builds torch's deprecated LeafSpec; nothing a user can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in COMMANDS:
            COMMANDS[args[0]](args[1:])
        else:
            run_cli(None if argv is None else args)
    except argparse.ArgumentError as err:  # the config does not parse: one line, not the usage
        yaml_error = find_yaml_error(err, args)
        if yaml_error is not None:
            print(f"error: {yaml_error}", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"error: {condense_parse_error(str(err))} "
              f"(python -m lit_distill {args[0] if args else 'fit'} --help lists every option)", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:  # noqa: BLE001 - only input errors are turned into messages
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


def find_yaml_error(err: BaseException, args: Sequence[str]) -> str | None:
    """``<file>:<line>: <reason>`` when ``err`` comes from a config file in ``args`` that is not valid YAML.

    jsonargparse's YAML errors carry the line and the reason but not the file; the file is
    the first existing ``.yaml``/``.yml``/``.json`` named in ``args`` (``--config FILE`` or
    ``--flag=FILE``) that does not load. None when ``err`` is no YAML error.
    """
    import yaml

    seen: set[int] = set()
    while err is not None and not isinstance(err, yaml.MarkedYAMLError) and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    if not isinstance(err, yaml.MarkedYAMLError):
        return None
    mark = err.problem_mark or err.context_mark
    reason = err.problem or err.context or "not valid YAML"
    if err.context and err.context_mark and mark and err.context_mark.line != mark.line:
        reason += f" ({err.context} started on line {err.context_mark.line + 1})"
    where = "config"
    for arg in args:
        path = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if path.endswith((".yaml", ".yml", ".json")) and os.path.isfile(path) and not _loads(path):
            where = path
            break
    return f"{where}:{mark.line + 1 if mark else '?'}: {reason}"


def _loads(path: str) -> bool:
    import yaml

    try:
        with open(path, encoding="utf-8") as file:
            yaml.safe_load(file)
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    return True


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
