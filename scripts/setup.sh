#!/usr/bin/env bash
# Create (or reuse) .venv in the repo root and install lit_distill editable with
# its dev extra, plus the Debian packages listed below. Idempotent: a second run
# only re-checks (the pip step is skipped until pyproject.toml changes).
# Each step prints one line; apt's and pip's own output goes to a log that is
# shown (its last lines) only when the step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp "${TMPDIR:-/tmp}/lit_distill-setup.XXXXXX")
trap 'rm -f "$log"' EXIT
did_something=false

# step "what is being done" command...: run it with its output in $log and print one line;
# on failure print the log's last lines, keep the log, and exit with the command's status.
step() {
  local what=$1 start=$SECONDS
  shift
  did_something=true
  printf '%s ... ' "$what"
  local status=0
  "$@" >"$log" 2>&1 || status=$?
  if [ "$status" -eq 0 ]; then
    echo "done ($((SECONDS - start)) s)"
    return
  fi
  echo "failed (exit $status)"
  echo "--- last 40 lines of: $* ---" >&2
  tail -n 40 "$log" >&2
  echo "--- full output kept in $log ---" >&2
  trap - EXIT
  exit "$status"
}

APT_PACKAGES=(slurm-wlm munge espeak-ng)  # Debian packages the project needs (slurm-wlm, munge: the real SLURM test; espeak-ng: synthesised speech data)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  step "updating the Debian package lists" $SUDO apt-get update -q
  step "installing Debian packages: ${missing[*]}" \
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $PY" "$PY" -m venv .venv
  step "upgrading pip in .venv" .venv/bin/pip install --upgrade pip
fi
stamp=.venv/.lit_distill-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  step "installing lit_distill (editable, with the dev extra) into .venv" .venv/bin/pip install -e ".[dev]"
  touch "$stamp"
fi
$did_something || echo "setup: nothing to do (Debian packages present, .venv up to date)"
