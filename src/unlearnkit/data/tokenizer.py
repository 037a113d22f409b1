"""Tokenizers for the text family: a byte-level BPE trained locally, or one loaded from a folder.

:func:`train_tokenizer` trains a byte-level BPE with the ``tokenizers`` library on the given texts (no
download, ~0.05 s for the 1,000 synthetic TOFU pairs) and wraps it as a ``transformers`` fast tokenizer
with ``<pad>`` (id 0), ``<s>`` (bos, 1), ``</s>`` (eos, 2) and ``<unk>`` (3). Like Llama's tokenizer it
prepends ``<s>`` when called with ``add_special_tokens=True``; it has no chat template, so
:mod:`unlearnkit.data.text` uses the plain ``"Question: ...\\nAnswer:"`` template. Decoding is lossless
(``decode(encode(t)) == t``), training is deterministic for the same texts and settings, and
``save_pretrained`` + ``AutoTokenizer.from_pretrained`` give back identical ids.

:func:`resolve_tokenizer` turns a data config's ``tokenizer`` option (None, ``"bpe"``, a folder or an object)
into a checked tokenizer; a BPE is trained only when asked for by name (the synthetic worlds ship theirs).
:func:`check_vocab_fit` refuses a tokenizer that is not the model's.
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
            "written by tokenizer.save_pretrained (or a model folder that has one), or data.tokenizer=bpe "
            "to train one on the dataset for a model trained from scratch"
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


TRAIN_BPE = "bpe"


def resolve_tokenizer(
    spec: Any, texts: Iterable[str] | None = None, vocab_size: int = 1000, folder: Path | None = None
) -> Any:
    """The tokenizer a data config asks for.

    ``spec`` None: the dataset folder's ``tokenizer/`` (the synthetic worlds ship the BPE they were
    generated with), else an error (the text family fills ``data.tokenizer`` with the model folder of
    ``model.name=hf``, so a pretrained model brings its own); ``"bpe"``: a byte-level BPE trained on
    ``texts`` (for models trained from scratch, by name only); any other string or path:
    :func:`load_tokenizer`; a tokenizer object: checked and used as is.
    """
    if spec is None:
        if folder is not None and (folder / "tokenizer" / "tokenizer.json").is_file():
            return load_tokenizer(folder / "tokenizer")
        raise DataError(
            "no tokenizer for this dataset: use a model folder (model.name=hf model.path=FOLDER; its "
            "tokenizer is the default), pass data.tokenizer=FOLDER, or data.tokenizer=bpe to train a "
            "byte-level BPE on the dataset for a model trained from scratch"
        )
    if spec == TRAIN_BPE:
        if texts is None:
            raise DataError("data.tokenizer=bpe needs text to train on, and this dataset gave none")
        return train_tokenizer(texts, vocab_size=vocab_size)
    if isinstance(spec, (str, Path)):
        return load_tokenizer(spec)
    check_tokenizer(spec)
    return spec


def has_tokenizer_files(path: str | Path) -> bool:
    """Whether a local folder holds a saved tokenizer (fast, SentencePiece or GPT-2 style files)."""
    folder = Path(path).expanduser()
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    return folder.is_dir() and any((folder / n).is_file() for n in names)


def _embedding_rows(model: Any) -> int | None:
    try:
        return int(model.get_input_embeddings().weight.shape[0])
    except Exception:  # not a Hugging Face model, or no embedding matrix
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        return int(vocab) if vocab is not None else None


def _special_ids(obj: Any) -> dict[str, int]:
    out = {}
    for name in ("bos_token_id", "eos_token_id"):
        v = getattr(obj, name, None)
        if isinstance(v, int):
            out[name] = v
    return out


def check_vocab_fit(model: Any, tok: Any, model_tokenizer: Any = None, own: bool = False) -> None:
    """Refuse, in one line, a tokenizer whose vocabulary does not fit ``model``.

    Refused: more tokens than the model has embedding rows (ids would index past them; fewer is fine,
    as real checkpoints pad their embeddings, e.g. Qwen2 and Phi-3); unless ``own`` (the tokenizer came
    from the model's folder, whose config may list other end-of-turn ids), BOS/EOS ids other than the
    model config's; and, when the model folder ships its own tokenizer (``model_tokenizer``), a
    different vocabulary.
    """
    rows = _embedding_rows(model)
    n = len(tok)
    if rows is not None and n > rows:
        raise DataError(
            f"the tokenizer has {n} tokens but the model has only {rows} embedding rows: it is not this "
            "model's tokenizer; leave data.tokenizer unset to use the model folder's own"
        )
    cfg = getattr(model, "config", None)
    mine = {} if own else _special_ids(tok)
    for name, want in _special_ids(cfg).items():
        if name in mine and mine[name] != want:
            raise DataError(
                f"the tokenizer's {name} is {mine[name]} but the model's config says {want}: it is not "
                "this model's tokenizer; leave data.tokenizer unset to use the model folder's own"
            )
    differs = model_tokenizer is not None and model_tokenizer is not tok
    if differs and model_tokenizer.get_vocab() != tok.get_vocab():
        raise DataError(
            "data.tokenizer is not the tokenizer of the model folder (their vocabularies differ): "
            "leave data.tokenizer unset to use the model's own"
        )
