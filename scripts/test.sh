#!/usr/bin/env bash
# Set up (if needed), lint, and run the test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest tests "$@"
