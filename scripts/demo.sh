#!/usr/bin/env bash
# Set up (if needed) and run the default demo: `unlearnkit bench quick`, a short pass over every family
# (classifier suite, worst-case selection, TOFU-style LM with a relearning attack, text-to-image erasure
# with a prompt attack), then the report: bench-out/quick/report.html (self-contained) and report.md.
# Rerunning resumes: rows already stored in bench-out/quick/*/runs.sqlite are reused (--fresh recomputes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/unlearnkit bench quick --out "${OUT:-bench-out/quick}" "$@"
