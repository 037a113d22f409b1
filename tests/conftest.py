"""Test set-up: offline hub flags, one CPU thread, and a private cache for trained originals."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# the tiny-Llama fixtures of the LM tests (tokenizer, forget/retain/test split, the fine-tuned original),
# one definition for every test module that asks for them; a module may still define its own
from test_lm_methods import original, split, tokenizer  # noqa: E402, F401

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Trained originals are cached per test session, never in the user's ~/.cache."""
    path = tmp_path_factory.mktemp("unlearnkit-cache")
    old = os.environ.get("UNLEARNKIT_CACHE")
    os.environ["UNLEARNKIT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("UNLEARNKIT_CACHE", None)
    else:
        os.environ["UNLEARNKIT_CACHE"] = old
