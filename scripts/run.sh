#!/usr/bin/env bash
# Quick start: set up if needed, then generate for the example prompts with the default model
# (SmolLM2-135M-Instruct) and its shipped acceleration pack. Extra arguments go to `accel generate`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
exec "$root/.venv/bin/accel" generate --prompt-file "$root/examples/prompts.jsonl" --stats "$@"
