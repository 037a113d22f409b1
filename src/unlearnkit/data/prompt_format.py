"""The one prompt formatter of the text family: training, evaluation, generation and attacks all call it.

A question becomes prompt token ids in one of two ways:

- a **plain template** (``data.template``, default TOFU/MUSE's ``"Question: {question}\\nAnswer:"``): BOS +
  the formatted text, and the answer is ``" " + answer`` + EOS, tokenised separately so the answer
  boundary is exact;
- the tokenizer's **chat template** (used when ``data.template`` is unset and the tokenizer has one), via
  ``tokenizer.apply_chat_template``: the prompt is the user turn with the generation prompt
  (``add_generation_prompt=True``), and the answer is the rest of the whole conversation (user turn +
  assistant turn), plus EOS when the template does not end with it. This is how open-unlearning builds
  TOFU items (``preprocess_chat_instance``); when a template renders the prompt differently inside the
  conversation (so the prompt is not a prefix of it), the answer falls back to the plain answer tokens.

In transformers 5 ``apply_chat_template(tokenize=True)`` returns a ``BatchEncoding`` (a Mapping, not a
dict); it is called with ``return_dict=False`` where the tokenizer supports it, and any Mapping, tensor or
one-row batch it returns is reduced to a list of ids.

A plain template is validated before any data is read (:func:`check_template`): the only field is
``{question}``; a broken chat template is caught on a probe conversation (:func:`check_prompt_format`).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from unlearnkit.errors import ConfigError, DataError

PLAIN_PROMPT = "Question: {question}\nAnswer:"
TEMPLATE_FIELDS = ("question",)
_PROBE = ("What is the capital of France?", "Paris.")


def check_template(template: str | None) -> None:
    """Raise a one-line ConfigError unless ``template`` is None or a format string whose only field is
    ``{question}`` (used exactly as ``template.format(question=...)``)."""
    if template is None:
        return
    allowed = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
    if not isinstance(template, str):
        raise ConfigError(f"data.template must be a string with the field {allowed}, got {template!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ConfigError(
            f"data.template={template!r} is not a valid format string ({exc}); write literal braces as "
            f"{{{{ and }}}}, and use the field {allowed}"
        ) from exc
    unknown = sorted({f for f in fields if f not in TEMPLATE_FIELDS})
    if unknown:
        raise ConfigError(
            f"data.template={template!r} uses unknown field(s) {unknown}: the allowed field is {allowed} "
            "(e.g. data.template='Q: {question} A:')"
        )
    if "question" not in fields:
        raise ConfigError(f"data.template={template!r} has no {allowed} field: the question would be lost")


def _as_ids(out: Any) -> list[int]:
    """Token ids from whatever ``apply_chat_template(tokenize=True)`` returned."""
    if isinstance(out, Mapping):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    out = list(out)
    if out and isinstance(out[0], (list, tuple)):  # a batch of one conversation
        out = list(out[0])
    return [int(t) for t in out]


def chat_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """``tokenizer.apply_chat_template(messages, tokenize=True)`` as a list of ids; a template that fails
    is a one-line DataError."""
    kwargs = {"add_generation_prompt": add_generation_prompt, "tokenize": True}
    try:
        try:
            out = tokenizer.apply_chat_template(messages, return_dict=False, **kwargs)
        except TypeError:  # an older or custom tokenizer without return_dict
            out = tokenizer.apply_chat_template(messages, **kwargs)
        return _as_ids(out)
    except (DataError, ConfigError):
        raise
    except Exception as exc:  # jinja2 errors, a template that raises, a bad return value
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"the tokenizer's chat template fails ({type(exc).__name__}: {first}): fix chat_template in "
            "the tokenizer's tokenizer_config.json (or chat_template.jinja), or set data.template="
            "'Question: {question}\\nAnswer:' to use a plain prompt instead"
        ) from exc


def uses_chat(tokenizer: Any, template: str | None) -> bool:
    """The chat template is used when no plain template is given and the tokenizer has one."""
    return template is None and bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer: Any, question: str, template: str | None = None) -> list[int]:
    """Token ids of the prompt that precedes an answer (also the generation prompt)."""
    if uses_chat(tokenizer, template):
        return chat_ids(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)
    check_template(template)
    text = (template or PLAIN_PROMPT).format(question=question)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    return ([int(bos)] if bos is not None else []) + ids


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """The plain answer: ``" " + answer`` (stripped) tokenised without special tokens, then EOS."""
    ids = list(tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    return ids + ([int(eos)] if eos is not None else [])


def qa_ids(
    tokenizer: Any, question: str, answer: str, template: str | None = None
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one pair; the loss is on the answer ids only (see the module docstring)."""
    prompt = prompt_ids(tokenizer, question, template)
    if not uses_chat(tokenizer, template):
        return prompt, answer_ids(tokenizer, answer)
    turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer.strip()}]
    full = chat_ids(tokenizer, turns, add_generation_prompt=False)
    if full[: len(prompt)] != prompt or len(full) <= len(prompt):
        return prompt, answer_ids(tokenizer, answer)
    rest = full[len(prompt) :]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and rest[-1] != int(eos):
        rest.append(int(eos))
    return prompt, rest


def check_prompt_format(tokenizer: Any, template: str | None = None) -> None:
    """Format a probe pair the way the data will be: a bad template or a failing chat template is a
    one-line error before any data is tokenised."""
    check_template(template)
    prompt, answer = qa_ids(tokenizer, *_PROBE, template=template)
    if not prompt:
        raise DataError(
            "the prompt format gives an empty prompt (no BOS, no tokens): set data.template or give the "
            "tokenizer a BOS token"
        )
    if not answer:
        raise DataError("the prompt format gives no answer tokens: check the tokenizer's chat template")
