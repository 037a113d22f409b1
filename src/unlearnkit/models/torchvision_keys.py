"""torchvision's ResNet key names, read into our :class:`~unlearnkit.models.resnet.ResNet`.

torchvision's ``resnet18`` names its stages ``layer1`` .. ``layer4`` and a block's projection shortcut
``downsample.0`` (1×1 conv) / ``downsample.1`` (BatchNorm); ours are ``layers.0`` .. ``layers.3`` and
``shortcut.0`` / ``shortcut.1``. The stem (``conv1``, ``bn1``), the blocks' ``conv1/bn1/conv2/bn2`` and the
head ``fc`` share their names. :func:`rename_torchvision_keys` is a load-state-dict pre-hook, so a state dict
with torchvision's names loads into our model by any path (``model.path=FILE.safetensors``,
``unlearnkit.io.load_weights``, ``model.load_state_dict``); every shape is checked first, and the first
tensor that does not fit is named in one line.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from unlearnkit.errors import UnlearnkitError

_STAGE = re.compile(r"^layer(\d+)\.")


def torchvision_to_ours(key: str) -> str:
    """``layer2.0.downsample.1.weight`` -> ``layers.1.0.shortcut.1.weight``; other keys unchanged."""
    m = _STAGE.match(key)
    if m is None:
        return key
    rest = key[m.end() :].replace(".downsample.", ".shortcut.")
    return f"layers.{int(m.group(1)) - 1}.{rest}"


def _hint(key: str, have: tuple[int, ...], want: tuple[int, ...]) -> str:
    if key == "conv1.weight" and len(have) == 4 and have[-1] != want[-1]:
        stem = "imagenet" if have[-1] == 7 else "cifar"
        return f"; the file has a {have[-1]}x{have[-1]} stem: set model.stem={stem}"
    if key.startswith("fc."):
        return f"; the file's head has {have[0]} classes: fine-tune a head for the data's classes first"
    return ""


def rename_torchvision_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Pre-hook: rename torchvision keys under ``prefix`` in place, then check every shape (one line)."""
    if not any(k.startswith(prefix + "layer1.") for k in state_dict):
        return
    theirs: dict[str, str] = {}  # our name -> the file's
    for key in [k for k in state_dict if k.startswith(prefix)]:
        ours = torchvision_to_ours(key[len(prefix) :])
        theirs[ours] = key[len(prefix) :]
        if prefix + ours != key:
            state_dict[prefix + ours] = state_dict.pop(key)
    for name, want in module.state_dict().items():
        have = state_dict.get(prefix + name)
        if have is not None and tuple(have.shape) != tuple(want.shape):
            hs, ws = tuple(have.shape), tuple(want.shape)
            raise UnlearnkitError(
                f"the torchvision-style weights do not fit this ResNet: {theirs[name]} is {hs} in the file, "
                f"{ws} in the model{_hint(name, hs, ws)}"
            )
