#!/usr/bin/env bash
# Set up if needed, then run the test suite (Triton kernels run on the CPU under TRITON_INTERPRET=1
# where no GPU is present). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
cd "$root"
# the pytest entry point, not `python -m pytest`: -m puts the working directory (the repo root) on sys.path,
# where kernels/ would shadow Hugging Face's `kernels` package (tests/conftest.py also takes it back out)
exec .venv/bin/pytest -q "$@"
