#!/usr/bin/env bash
# Set up if needed, then run the test suite (Triton kernels run on the CPU under TRITON_INTERPRET=1
# where no GPU is present). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
cd "$root"
exec .venv/bin/python -m pytest -q "$@"
