"""The experiments rule (README, "Experiments"): no hand-written training under scripts/ or recipes/.

Every run goes through ``python -m lit_distill fit`` via ``lit_distill.experiment``, and no
script is longer than ~400 lines. The scan is syntactic (AST):

- ``loop``: a ``.backward(`` call, or a ``.step(`` call on an optimizer or scheduler (a
  receiver whose name contains ``opt`` or ``sched``) in a function that does not call
  ``manual_backward`` (Lightning's manual optimisation inside ``fit`` is the framework's path);
- ``in-process``: a ``Trainer(`` construction (``L.Trainer``, ``lightning.Trainer``, ...), a
  ``run_cli(`` call, or ``.fit(`` on a trainer;
- ``long``: more than ``MAX_LINES`` lines.

Every offence fails; the last offenders (issue 15's speech loops and LLaVA-MoD's vision
pretraining) were ported to ``fit`` on 2026-12-04.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 400


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _receiver(call: ast.Call) -> str:
    return ast.unparse(call.func.value) if isinstance(call.func, ast.Attribute) else ""


def _manual_optimisation(function: ast.AST) -> bool:
    return any(isinstance(node, ast.Call) and _called_name(node) == "manual_backward" for node in ast.walk(function))


def offences(path: Path) -> set[str]:
    """The kinds of offence (``loop``, ``in-process``, ``long``) in one Python file."""
    source = path.read_text()
    found = {"long"} if len(source.splitlines()) > MAX_LINES else set()
    tree = ast.parse(source)
    manual = {id(node) for function in ast.walk(tree) if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
              and _manual_optimisation(function) for node in ast.walk(function)}
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        name, receiver = _called_name(call), _receiver(call)
        if name == "backward" and isinstance(call.func, ast.Attribute):
            found.add("loop")
        elif name == "step" and re.search(r"opt|sched", receiver, re.IGNORECASE) and id(call) not in manual:
            found.add("loop")
        elif name in ("Trainer", "run_cli") or (name == "fit" and "trainer" in receiver.lower()):
            found.add("in-process")
    return found


def scanned_files() -> dict[str, Path]:
    return {str(p.relative_to(REPO)): p for folder in ("scripts", "recipes") for p in sorted((REPO / folder).rglob("*.py"))}


def test_no_training_outside_fit():
    found = {name: sorted(kinds) for name, path in scanned_files().items() if (kinds := offences(path))}
    assert not found, (f"hand-written training or over-long scripts {found}: launch runs with lit_distill.experiment "
                     "(python -m lit_distill fit) and split scripts over 400 lines (README, Experiments)")


@pytest.mark.parametrize("snippet, expected", [
    ("loss.backward()", {"loop"}),
    ("optimizer.step()", {"loop"}),
    ("sched.step()", {"loop"}),
    ("def step(self, opt, loss):\n    self.manual_backward(loss)\n    opt.step()", set()),
    ("env.step(action)", set()),
    ("trainer = L.Trainer(max_steps=1)", {"in-process"}),
    ("Trainer(max_steps=1).fit(model)", {"in-process"}),
    ("cli.trainer.fit(cli.model, cli.datamodule)", {"in-process"}),
    ("run_cli(['fit'])", {"in-process"}),
    ("probe.fit(x, y)", set()),
    ("x = 1\n" * (MAX_LINES + 1), {"long"}),
])
def test_the_scan_finds_each_offence(tmp_path, snippet, expected):
    path = tmp_path / "script.py"
    path.write_text(snippet + "\n")
    assert offences(path) == expected
