#!/usr/bin/env bash
# Set up (if needed) and run the default demo: the vision-digits suite (oracle + every classifier method).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/unlearnkit bench vision-digits --seeds "${SEEDS:-3}" --out "${OUT:-bench-out/vision-digits}" "$@"
