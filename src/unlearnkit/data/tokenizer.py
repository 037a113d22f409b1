"""Tokenizers for the text family: a byte-level BPE trained locally, or one loaded from a folder.

:func:`train_tokenizer` trains a byte-level BPE with the ``tokenizers`` library on the given texts (no
download, ~0.05 s for the 1,000 synthetic TOFU pairs) and wraps it as a ``transformers`` fast tokenizer
with ``<pad>`` (id 0), ``<s>`` (bos, 1), ``</s>`` (eos, 2) and ``<unk>`` (3). Like Llama's tokenizer it
prepends ``<s>`` when called with ``add_special_tokens=True``; it has no chat template, so
:mod:`unlearnkit.data.text` uses the plain ``"Question: ...\\nAnswer:"`` template. Decoding is lossless
(``decode(encode(t)) == t``), training is deterministic for the same texts and settings, and
``save_pretrained`` + ``AutoTokenizer.from_pretrained`` give back identical ids.

:func:`resolve_tokenizer` turns a data config's ``tokenizer`` option (None, a folder or an object) into a
checked tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearnkit.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus the special tokens


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    min_frequency: int = 2,
    model_max_length: int = 2048,
    add_bos: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and return it as a ``PreTrainedTokenizerFast``.

    ``vocab_size`` counts the 256 byte tokens and the 4 special tokens; the result may be smaller when
    the texts do not support that many merges. ``add_bos`` prepends ``<s>`` on ``add_special_tokens=True``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [t for t in texts if t]
    if not corpus:
        raise DataError("cannot train a tokenizer on no text: pass a non-empty list of strings")
    if vocab_size < _MIN_VOCAB:
        raise DataError(
            f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs at least {_MIN_VOCAB} "
            "(256 bytes + 4 special tokens)"
        )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    if add_bos:
        bos_id = bpe.token_to_id(BOS)
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def load_tokenizer(path: str | Path) -> Any:
    """``AutoTokenizer.from_pretrained(path)`` with a clear error; a missing pad token becomes EOS."""
    from transformers import AutoTokenizer

    local = Path(path).expanduser()
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else str(path))
    except Exception as exc:
        raise DataError(
            f"could not load a tokenizer from {str(path)!r} ({type(exc).__name__}: {exc}); pass a folder "
            "written by tokenizer.save_pretrained (or a model folder that has one), or leave "
            "data.tokenizer unset to train one on the dataset"
        ) from exc
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # what the TOFU and MUSE reference code do for Llama tokenizers
    check_tokenizer(tok)
    return tok


def check_tokenizer(tok: Any) -> None:
    """Raise a DataError unless ``tok`` can encode text and has a pad token."""
    if not callable(tok) or not hasattr(tok, "decode"):
        raise DataError(
            f"tokenizer must be a Hugging Face tokenizer (callable, with decode), got {type(tok).__name__}"
        )
    if getattr(tok, "pad_token_id", None) is None:
        raise DataError(
            "the tokenizer has no pad token, so batches cannot be padded: set tokenizer.pad_token = "
            "tokenizer.eos_token (as the TOFU reference code does) or add a pad token"
        )


def resolve_tokenizer(
    spec: Any, texts: Iterable[str] | None = None, vocab_size: int = 1000, folder: Path | None = None
) -> Any:
    """The tokenizer a data config asks for.

    ``spec`` None: ``folder/tokenizer`` if a dataset folder ships one, else a BPE trained on ``texts``;
    a string or path: :func:`load_tokenizer`; a tokenizer object: checked and used as is.
    """
    if spec is None:
        if folder is not None and (folder / "tokenizer" / "tokenizer.json").is_file():
            return load_tokenizer(folder / "tokenizer")
        if texts is None:
            raise DataError("no tokenizer given and no text to train one on: pass data.tokenizer=FOLDER")
        return train_tokenizer(texts, vocab_size=vocab_size)
    if isinstance(spec, (str, Path)):
        return load_tokenizer(spec)
    check_tokenizer(spec)
    return spec
