#!/usr/bin/env bash
# Set up (if needed), lint, and run the test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report's browser test needs headless Chromium (Debian's package). Install it when we can; when it
# was installed (or already there) the test is required, otherwise it is skipped with its reason.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "warning: could not install chromium; the report's browser test will be skipped" >&2
fi
if command -v chromium >/dev/null 2>&1; then
  export UNLEARNKIT_REQUIRE_BROWSER=1
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest tests "$@"
