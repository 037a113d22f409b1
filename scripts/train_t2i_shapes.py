"""The shapes world's training command (kept for the commands recorded with earlier results): the same as
``python scripts/train_t2i_world.py --world shapes [options]``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_t2i_world import main  # noqa: E402

if __name__ == "__main__":
    main(default_world="shapes")
