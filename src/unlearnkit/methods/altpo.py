"""AltPO, alternate preference optimization (Mekala et al., COLING 2025, arXiv 2409.13474).

DPO on the forget set where the preferred answers are *in-domain alternates* the starting model writes
itself: for every forget question x with forget answer y, K alternate answers ỹ_1..ỹ_K are sampled from
π_ref (the model unlearning starts from), and each is preferred over y:

    L_f = −(2/β)·E_{(x,y)∈D_f} (1/K)·Σ_k log σ(β·[(log π_θ − log π_ref)(ỹ_k|x) − (log π_θ − log π_ref)(y|x)])
    L   = γ·L_f + α·E_{D_r}[NLL_θ(y|x)]

with log π = −(summed answer NLL). The 2/β scale, β = 0.1 and the retain NLL weighted 1 are the authors'
``dataloader.py`` (``DPO``, ``retain_wt``) and open-unlearning's DPO trainer, which AltPO reuses
(llm.md §1, §7). The paper's own text was not available offline here, so the form above is the authors'
code with the K alternates of a question averaged in each step (``pairing="question"``). The authors' data
holds one row per (question, alternate) pair instead, so an epoch averages the same pairs in K times as
many steps, each row drawn on its own: ``pairing="row"`` trains that way.

Alternates (``prepare``): the prompt is the forget pair's own prompt ids (its ``labels == -100`` prefix),
K continuations are sampled at ``temperature`` (plain temperature sampling: no top-k / top-p), up to
``max_new_tokens`` or EOS, seeded from the task seed (the global RNG is forked, so nothing else moves).
The authors instead prompt the model with the question, the original answer and an instruction to change
its facts (``prompts.py``; T = 1, 5 samples, 200 new tokens, ``generate.py``); that needs the question
text and an instruction-following model, neither of which a forget set of token ids on a tiny model has,
so it is not offered. An alternate that is empty or equal to the forget answer (decoded, stripped) is
dropped and resampled, each further round at twice the temperature (T, 2T, 4T, ...; ``resample_rounds``),
so a memorised answer is eventually left; a question that still has fewer than K valid alternates repeats
the ones it has, and one with none is a DataError. ``alternates_info`` reports how many were redrawn.

Each alternate is tokenised as a (question, alternate) pair the way the forget pairs are
(:mod:`unlearnkit.data.prompt_format`): the forget pair's prompt ids, then the answer tokens of the text
(" " + answer + EOS for a plain template; for a chat template, the assistant turn rendered by the
tokenizer, checked against the forget answer's own tokens, else the sampled tokens + EOS). π_ref's NLLs of
the forget answer and of every alternate are computed once and cached by example id (no reference model
is held), and each step runs one forward pass over the B forget rows and their B·K alternates. Under several
processes every rank samples and scores all alternates itself (same seed, same model: the same alternates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from unlearnkit.data.examples import Batch, ExampleSet
from unlearnkit.data.prompt_format import answer_ids, qa_ids, uses_chat
from unlearnkit.data.text import trim_padding
from unlearnkit.engine.loop import StepContext
from unlearnkit.errors import ConfigError, DataError
from unlearnkit.families.text import TEXT_COLUMNS
from unlearnkit.methods.base import Task
from unlearnkit.methods.dpo import DPOConfig
from unlearnkit.methods.graddiff import GradDiff
from unlearnkit.methods.reference import ReferenceCache, compute_reference
from unlearnkit.metrics.generation import cut_at_eos, eval_mode, left_pad, pad_token_id, position_limit
from unlearnkit.registry import register_method

_PROBE_QUESTION = "What is the capital of France?"
PAIRINGS = ("question", "row")


@dataclass
class AltPOConfig(DPOConfig):
    """The authors' ``config/unlearn_llama2.yaml`` and ``generate.yaml``: β = 0.1, retain NLL weight
    ``alpha`` 1, AdamW lr 5e-5, weight decay 0.01, 10 epochs, effective batch 35; K = 5 alternates per
    question sampled at T = 1 with up to 200 new tokens (open-unlearning's sweep: β ∈ {0.05, 0.1, 0.5},
    lr ∈ {1, 2, 5}e-5, α ∈ {1, 2, 5}; llm.md §7). ``gen_batch_size``: rows per ``generate`` call;
    ``pairing``: ``"question"`` (a step takes a question with all K alternates) or ``"row"`` (the authors'
    data: one (question, alternate) pair per row, K rows per question)."""

    lr: float = 5e-5
    alternates: int = 5
    temperature: float = 1.0
    max_new_tokens: int = 200
    resample_rounds: int = 4
    gen_batch_size: int = 64
    pairing: str = "question"

    def check(self) -> None:
        super().check()
        if self.alternates < 1:
            raise ConfigError(f"method.alternates (K) must be >= 1, got {self.alternates}")
        if not self.temperature > 0:
            raise ConfigError(f"method.temperature must be > 0, got {self.temperature}")
        for name in ("max_new_tokens", "gen_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"method.{name} must be >= 1, got {getattr(self, name)}")
        if self.pairing not in PAIRINGS:
            raise ConfigError(f"method.pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        if self.resample_rounds < 0:
            raise ConfigError(f"method.resample_rounds must be >= 0, got {self.resample_rounds}")


def altpo_loss(
    nll_alt: torch.Tensor,
    nll_forget: torch.Tensor,
    ref_alt: torch.Tensor,
    ref_forget: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """−(2/β)·mean over questions and their K alternates of log σ(β·[log-ratio(ỹ_k) − log-ratio(y)]),
    log-ratio = log π_θ − log π_ref = ref NLL − NLL; ``*_alt`` are ``[B, K]``, ``*_forget`` ``[B]``."""
    win = ref_alt - nll_alt
    lose = (ref_forget - nll_forget).unsqueeze(1)
    return -(2.0 / beta) * F.logsigmoid(beta * (win - lose)).mean()


# -- alternates ---------------------------------------------------------------------------------------
def qa_parts(forget: ExampleSet) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) of every forget row: the ``labels == -100`` prefix and the labelled tokens."""
    parts = []
    for ids, lab, am in zip(
        forget.columns["input_ids"], forget.columns["labels"], forget.columns["attention_mask"], strict=True
    ):
        n = int(am.sum())
        labelled = (lab[:n] != -100).nonzero()
        start = int(labelled[0]) if len(labelled) else n
        parts.append((ids[:start].tolist(), ids[start:n].tolist()))
    if all(len(p) <= 1 for p, _ in parts):
        raise ConfigError(
            "altpo samples alternate answers to the forget questions, but the forget examples have no "
            "question prompt (raw text, as MUSE's corpora): use a question/answer dataset (tofu, "
            "tofu-synthetic)"
        )
    return parts


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = {int(tokenizer.eos_token_id)} if getattr(tokenizer, "eos_token_id", None) is not None else set()
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([gen] if isinstance(gen, int) else list(gen or []))
    return sorted(ids)


def sample_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
) -> list[list[int]]:
    """One sampled continuation (token ids before the first EOS) per prompt, in input order. Sampling uses
    the global RNG: the caller seeds it."""
    pad, stops = pad_token_id(tokenizer), _stop_ids(model, tokenizer)
    limit = position_limit(model)
    dev = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in prompts]
    with eval_mode(model):
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s : s + batch_size]
            budget = max_new_tokens if limit is None else min(max_new_tokens, limit - max(map(len, chunk)))
            if budget < 1:
                continue
            ids, mask = left_pad(chunk, pad)
            gen = model.generate(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=budget,
                pad_token_id=pad,
                eos_token_id=stops or None,
            )
            for i, row in enumerate(gen[:, ids.shape[1] :].tolist()):
                out[s + i] = cut_at_eos(row, set(stops))
    return out


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def collect_alternates(
    model: Any,
    tokenizer: Any,
    parts: list[tuple[list[int], list[int]]],
    cfg: AltPOConfig,
    seed: int,
    progress: bool = False,
) -> tuple[list[list[tuple[str, list[int]]]], dict[str, int]]:
    """K (text, sampled token ids) alternates per forget row, none empty or equal to the forget answer
    (the resampling rounds and the fallback are in the module docstring), and counts of what was drawn."""
    stops = set(_stop_ids(model, tokenizer))
    forget_texts = [
        tokenizer.decode(cut_at_eos(a, stops), skip_special_tokens=True).strip() for _, a in parts
    ]
    k = cfg.alternates
    chosen: list[list[tuple[str, list[int]]]] = [[] for _ in parts]
    info = {"alternates": k, "sampled": 0, "rejected": 0, "resampled_hotter": 0, "repeated": 0}
    dev = _model_device(model)
    bar = _bar(len(parts) * k, progress)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for r in range(cfg.resample_rounds + 1):
            need = [i for i, c in enumerate(chosen) for _ in range(k - len(c))]
            if not need:
                break
            temp = cfg.temperature * 2**r
            samples = sample_answers(
                model, tokenizer, [parts[i][0] for i in need], temp, cfg.max_new_tokens, cfg.gen_batch_size
            )
            for i, toks in zip(need, samples, strict=True):
                text = tokenizer.decode(toks, skip_special_tokens=True).strip()
                if text and text != forget_texts[i]:
                    chosen[i].append((text, toks))
                    info["resampled_hotter"] += r > 0
                    bar.update(1)
                else:
                    info["rejected"] += 1
            info["sampled"] += len(need)
    bar.close()
    empty = [i for i, c in enumerate(chosen) if not c]
    if empty:
        raise DataError(
            f"{len(empty)} forget question(s) got no alternate answer different from the forget answer in "
            f"{cfg.resample_rounds + 1} sampling rounds: raise method.temperature or method.resample_rounds"
        )
    for c in chosen:  # fewer than K valid: repeat the ones there are
        info["repeated"] += k - len(c)
        c.extend(c[j % len(c)] for j in range(k - len(c)))
    return chosen, info


def _bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="altpo alternates", leave=False, mininterval=0.5, disable=not enabled)


def alternate_columns(
    tokenizer: Any,
    chat: bool,
    parts: list[tuple[list[int], list[int]]],
    chosen: list[list[tuple[str, list[int]]]],
    width: int,
) -> dict[str, torch.Tensor]:
    """``input_ids / attention_mask / labels`` ``[N, K, width]`` of the (question, alternate) pairs: each
    forget row's prompt ids, then the alternate's answer tokens as the forget pairs are tokenised."""
    eos = getattr(tokenizer, "eos_token_id", None)
    n, k = len(parts), len(chosen[0])
    ids = torch.full((n, k, width), pad_token_id(tokenizer), dtype=torch.long)
    labels = torch.full((n, k, width), -100, dtype=torch.long)
    mask = torch.zeros((n, k, width), dtype=torch.long)
    for i, ((prompt, forget_answer), alts) in enumerate(zip(parts, chosen, strict=True)):
        render = _chat_renders_alone(tokenizer, forget_answer) if chat else True
        for j, (text, toks) in enumerate(alts):
            if not chat:
                answer = answer_ids(tokenizer, text)
            elif render:
                answer = qa_ids(tokenizer, _PROBE_QUESTION, text)[1]
            else:
                answer = toks + ([int(eos)] if eos is not None else [])
            row = (prompt + answer)[:width]
            ids[i, j, : len(row)] = torch.as_tensor(row)
            labels[i, j, len(prompt) : len(row)] = torch.as_tensor(row[len(prompt) :], dtype=torch.long)
            mask[i, j, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _chat_renders_alone(tokenizer: Any, forget_answer: list[int]) -> bool:
    """Whether the chat template renders this forget answer's assistant turn to the same tokens after another
    user turn (then an alternate's turn can be rendered without the question text)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    text = tokenizer.decode(
        cut_at_eos(forget_answer, {eos} if eos is not None else set()), skip_special_tokens=True
    )
    return qa_ids(tokenizer, _PROBE_QUESTION, text.strip())[1] == forget_answer


def _pad_width(cols: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    fill = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    return {c: F.pad(v, (0, width - v.shape[-1]), value=fill[c]) for c, v in cols.items()}


def stack_rows(first: Batch, second: dict[str, torch.Tensor]) -> Batch:
    """The text columns of two sets of rows in one right-padded batch (shared padding trimmed)."""
    width = max(first["input_ids"].shape[1], second["input_ids"].shape[1])
    a = _pad_width({c: first[c] for c in TEXT_COLUMNS}, width)
    b = _pad_width({c: second[c] for c in TEXT_COLUMNS}, width)
    return trim_padding({c: torch.cat([a[c], b[c].to(a[c].device)]) for c in TEXT_COLUMNS})


@torch.no_grad()
def score_rows(family: Any, model: Any, cols: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
    """Summed answer NLL of each row of ``[N, K, W]`` columns, as ``[N, K]`` (eval mode, no grad)."""
    n, k, w = cols["input_ids"].shape
    flat = {c: v.reshape(n * k, w) for c, v in cols.items()}
    dev = _model_device(model)
    out = []
    with eval_mode(model):
        for s in range(0, n * k, batch_size):
            batch = trim_padding({c: v[s : s + batch_size].to(dev) for c, v in flat.items()})
            out.append(family.per_example_loss(model, batch).float())
    return torch.cat(out).view(n, k)


@register_method("altpo")
class AltPO(GradDiff):
    """AltPO: DPO on D_f preferring K self-generated alternate answers to the forget answer, + retain NLL."""

    paper = (
        "Mekala et al., 'Alternate Preference Optimization for Unlearning Factual Knowledge in LLMs', "
        "COLING 2025: L = −(2/β)·E_{D_f} (1/K)Σ_k log σ(β·[log π_θ(ỹ_k|x)/π_ref(ỹ_k|x) − log "
        "π_θ(y|x)/π_ref(y|x)]) + α·E_{D_r} NLL, ỹ_k ~ π_ref(·|x)"
    )
    families = ("text",)
    Config = AltPOConfig

    def __init__(self, cfg: AltPOConfig | None = None) -> None:
        super().__init__(cfg)
        self.reference: ReferenceCache | None = None
        self.alt: dict[str, torch.Tensor] | None = None
        self.alternates: list[list[str]] = []
        self.alternates_info: dict[str, int] = {}
        self.pair_rows: ExampleSet | None = None

    def streams(self, task: Task) -> dict[str, ExampleSet]:
        out = super().streams(task)
        if self.pair_rows is not None:  # pairing="row": K rows per forget question
            out["forget"] = self.pair_rows
        return out

    def prepare(self, task: Task) -> None:
        super().prepare(task)
        tok = getattr(task.family, "tokenizer", None)
        if tok is None:
            raise ConfigError(
                "altpo writes alternate answers with the data's tokenizer, but the text family has none "
                "loaded: build the forget set through the text family's data loaders (or pass its tokenizer)"
            )
        forget = task.split.forget
        parts = qa_parts(forget)
        progress = bool(getattr(task.engine.cfg, "progress", False))
        chosen, self.alternates_info = collect_alternates(
            task.model, tok, parts, self.cfg, task.seed, progress
        )
        self.alternates = [[text for text, _ in alts] for alts in chosen]
        chat = uses_chat(tok, getattr(task.family, "template", None))
        cols = alternate_columns(tok, chat, parts, chosen, forget.columns["input_ids"].shape[1])
        bs = self.batch_sizes(task)["forget"]
        ref_alt = score_rows(task.family, task.model, cols, bs * self.cfg.alternates)
        ref_forget = compute_reference(task.model, forget, task.family.per_example_loss, bs)
        assert ref_forget is not None
        dev = _model_device(task.model)
        ids, values = forget.ids, {"forget": ref_forget.get(forget.ids.to(ref_forget.ids.device)).to(dev)}
        self.pair_rows = None
        if self.cfg.pairing == "row":  # row i·K + k pairs forget row i with its alternate k
            k = self.cfg.alternates
            cols = {c: v.flatten(0, 1).unsqueeze(1) for c, v in cols.items()}
            ref_alt, values["forget"] = ref_alt.reshape(-1, 1), values["forget"].repeat_interleave(k)
            rows = {c: v.repeat_interleave(k, 0) for c, v in forget.columns.items()}
            self.pair_rows = ExampleSet(rows, transform=forget.transform)
            ids = self.pair_rows.ids
        values |= {"row": torch.arange(len(ids)), "alt": ref_alt}
        self.reference = ReferenceCache(ids.to(dev), values)
        self.alt = {c: v.to(dev) for c, v in cols.items()}

    def finalize(self, task: Task) -> None:
        super().finalize(task)
        self.reference, self.alt, self.pair_rows = None, None, None

    def forget_term(self, batch: Batch, ctx: StepContext | None) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.reference is not None and self.alt is not None, "prepare() was not called"
        rows = self.reference.get(batch["id"], "row").long()
        b, k = len(rows), self.alt["input_ids"].shape[1]
        alt = {c: v[rows.to(v.device)].flatten(0, 1) for c, v in self.alt.items()}
        nll = self.family.per_example_loss(self.model, stack_rows(batch, alt))
        nll_f, nll_a = nll[:b], nll[b:].view(b, k)
        ref_f = self.reference.get(batch["id"], "forget").to(nll_f)
        ref_a = self.reference.get(batch["id"], "alt").to(nll_a)
        loss = altpo_loss(nll_a, nll_f, ref_a, ref_f, self.cfg.beta)
        return loss, {"forget_nll": float(nll_f.detach().mean()), "alt_nll": float(nll_a.detach().mean())}
