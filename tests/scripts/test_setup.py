"""scripts/setup.sh: one line per step, tool output only on failure, a quick no-op when up to date.

Runs the real script in a scratch copy of the repository layout with fake ``dpkg``, ``apt-get``,
``sudo`` and ``.venv/bin/pip`` on the path, so nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHATTER = "Collecting torch\nDownloading something 100%\n"


def executable(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A scratch repository: the setup script, a pyproject.toml, an existing .venv, fake system tools."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    executable(tmp_path / ".venv" / "bin" / "python", "exit 0\n")
    executable(tmp_path / ".venv" / "bin" / "pip", f"printf '{CHATTER}'; printf 'pip: %s\\n' \"$*\" >&2\n"
                                                  "exit ${FAKE_PIP_STATUS:-0}\n")
    executable(tmp_path / "bin" / "dpkg", '[ -z "${FAKE_MISSING:-}" ] || [[ " $FAKE_MISSING " != *" $2 "* ]]\n')
    executable(tmp_path / "bin" / "apt-get", f"printf '{CHATTER}'\n"
                                             '[ "$1" != install ] || { echo "E: Unable to locate package"; '
                                             "exit ${FAKE_APT_STATUS:-0}; }\n")
    executable(tmp_path / "bin" / "sudo", 'exec "$@"\n')
    return tmp_path


def run_setup(repo: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PATH": f"{repo / 'bin'}:{os.environ['PATH']}", "TMPDIR": str(repo), **env}
    return subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], capture_output=True, text=True,
                          env=environment, timeout=60)


def test_up_to_date_is_a_one_line_no_op(repo):
    (repo / ".venv" / ".lit_distill-installed").touch()
    start = time.monotonic()
    result = run_setup(repo)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["setup: nothing to do (Debian packages present, .venv up to date)"]
    assert result.stderr == "" and time.monotonic() - start < 10


def test_each_step_prints_one_line_and_no_tool_output(repo):
    result = run_setup(repo, FAKE_MISSING="espeak-ng munge")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" ... ")[0] for line in lines] == [
        "updating the Debian package lists", "installing Debian packages: munge espeak-ng",
        "installing lit_distill (editable, with the dev extra) into .venv"]
    assert all(line.split(" ... ")[1].startswith("done (") for line in lines)
    assert "Collecting" not in result.stdout + result.stderr
    assert (repo / ".venv" / ".lit_distill-installed").exists()
    assert not list(repo.glob("lit_distill-setup.*")), "the step log is removed after a successful run"


def test_a_failing_step_shows_its_output_and_exits_non_zero(repo):
    result = run_setup(repo, FAKE_PIP_STATUS="3")
    assert result.returncode == 3
    assert result.stdout.splitlines()[-1].endswith("... failed (exit 3)")
    assert "Collecting torch" in result.stderr and "pip: install -e .[dev]" in result.stderr
    kept = list(repo.glob("lit_distill-setup.*"))
    assert len(kept) == 1 and f"full output kept in {kept[0]}" in result.stderr
    assert not (repo / ".venv" / ".lit_distill-installed").exists(), "a failed install must not be stamped"


def test_a_failing_apt_install_stops_before_pip(repo):
    result = run_setup(repo, FAKE_MISSING="espeak-ng", FAKE_APT_STATUS="100")
    assert result.returncode == 100
    assert "E: Unable to locate package" in result.stderr
    assert "installing lit_distill" not in result.stdout
