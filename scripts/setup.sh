#!/usr/bin/env bash
# Create .venv with the CPU build of PyTorch and unlearnkit (editable, with test extras). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # torch==2.13.0 resolves to a local CPU wheel on our machines; an unpinned torch pulls a CUDA build.
  .venv/bin/pip install -q "torch==2.13.0"
fi
# The dependencies at the versions the suite last passed with (scripts/constraints.txt).
.venv/bin/pip install -q -c scripts/constraints.txt -e ".[dev]"
