#!/usr/bin/env bash
# Create (or reuse) .venv in the repo root and install lit_distill editable with
# its dev extra, plus the Debian packages listed below. Idempotent: a second run
# only re-checks (the pip step is skipped until pyproject.toml changes).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(slurm-wlm munge espeak-ng)  # Debian packages the project needs (slurm-wlm, munge: the real SLURM test; espeak-ng: synthesised speech data)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
fi
stamp=.venv/.lit_distill-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install --quiet -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2)
  touch "$stamp"
fi
