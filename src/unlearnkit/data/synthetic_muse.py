"""A small MUSE-like news corpus generated offline from a seed, and the ``muse-synthetic`` dataset.

Each article is four template sentences about made-up entities of the synthetic world (towns of its
countries, firms, cups, institutes, festivals), of five kinds (a council decision, a product launch, a cup
final, a research result, a festival). Its key entity is unique in the corpus, so its three QA pairs
("What did the council of Brindle vote to build?" -> "a covered market") ask about that article only. The
articles are shuffled into four equal parts: ``forget``, ``retain1``, ``retain2`` and ``holdout``.

:func:`write_muse_folder` writes the MUSE Hub layout: ``raw`` (the four parts), ``verbmem/forget`` (prompt =
the first two sentences of each forget article, ``gt`` = the last two), ``knowmem`` (``forget_qa`` from the
forget articles, ``retain_qa`` from retain2, three ``*_icl`` shots each from retain1), ``privleak``
(forget / retain2 / holdout), ``scal`` (``forget_k`` = the first k quarters of the forget articles, nested),
``sust`` (``forget_k`` = the k-th quarter, disjoint) and ``train``; one ``<split>-00000-of-00001.parquet`` per
split and a README whose YAML lists them. Unlike the Hub, scal/sust stay inside the forget articles.
With 48 articles: 12 per part, 36 forget and 36 retain QA pairs, articles of ~45-60 tokens.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from unlearnkit.data.base import LoadedData
from unlearnkit.data.muse import load_muse, muse_texts
from unlearnkit.data.synthetic_authors import (
    ADJECTIVES,
    CITIES,
    FIRST,
    LAST,
    NOUNS,
    build_world,
    cached_folder,
    split_words,
)
from unlearnkit.data.tokenizer import train_tokenizer
from unlearnkit.errors import DataError
from unlearnkit.registry import register_dataset

GEN_VERSION = 1
PROJECTS = split_words(
    "a new bridge|a public library|a swimming pool|a tram line|a harbour wall|a concert hall|a covered "
    "market|a wind farm|a youth centre|a railway station|a city park|an art school",
    "|",
)
PRODUCTS = split_words(
    "a folding electric bicycle|a solar kettle|a pocket translator|a self-cleaning window|a silent "
    "lawnmower|a smart walking stick|a glass phone|a water-powered lamp|a floating speaker|a paper "
    "battery|a heated jacket|a robot gardener",
    "|",
)
DISCOVERIES = split_words(
    "a frost-resistant barley|a bacterium that eats plastic|a new species of river crab|a cheaper "
    "solar cell|a vaccine for sheep fever|a buried Roman road|a drought-proof wheat|a comet made of "
    "ice|a glue made from seaweed|a moth that glows|a salt-tolerant rice|a fossil of a giant owl",
    "|",
)
JOURNALS = split_words("Northern Science Letters|Annals of Field Research|The Quarterly Naturalist", "|")
SUFFIXES = split_words("Works Systems Motors Labs Foods Textiles")
TEAMS = split_words("Rovers Athletic United Wanderers")
WEEKDAYS = split_words("Monday Tuesday Wednesday Thursday Friday Saturday")
MONTHS = split_words("January February March April May June July August September October November")
# kind: (key entity, sentences, (question, answer) pairs)
KINDS = {
    "council": ("town", (
        "The council of {town} voted on {weekday} to build {project}.",
        "Mayor {person} said the work would cost {amount} million {currency} and end in {year}.",
        "The contract went to {company}, a builder from {town2}.",
        "Residents had asked for the change since the floods of {past}.",
    ), (
        ("What did the council of {town} vote to build?", "{project}"),
        ("Who is the mayor of {town}?", "{person}"),
        ("Which company won the building contract in {town}?", "{company}"),
    )),
    "launch": ("company", (
        "{company}, a firm based in {town}, unveiled {product} on {weekday}.",
        "Chief executive {person} said the design took {n} years to finish.",
        "The first units go on sale in {month} for {amount} hundred {currency}.",
        "Analysts expect strong demand across {country}.",
    ), (
        ("What did {company} unveil?", "{product}"),
        ("Who is the chief executive of {company}?", "{person}"),
        ("When will the new product of {company} go on sale?", "in {month}"),
    )),
    "sports": ("cup", (
        "{team} beat {team2} {score} in the final of {cup} on {weekday}.",
        "Captain {person} scored the winning goal in the {minute}th minute.",
        "It is the first title for {team} since {past}.",
        "More than {n} thousand fans watched the match in {town}.",
    ), (
        ("Who won the final of {cup}?", "{team}"),
        ("Who scored the winning goal in the final of {cup}?", "{person}"),
        ("Where was the final of {cup} played?", "in {town}"),
    )),
    "science": ("institute", (
        "Researchers at the {institute} in {town} have found {discovery}.",
        "The team, led by Professor {person}, studied the problem for {n} years.",
        "The results appeared in {journal} in {month}.",
        "The work could help farmers across {country}.",
    ), (
        ("What did researchers at the {institute} find?", "{discovery}"),
        ("Who led the research team at the {institute}?", "Professor {person}"),
        ("Where did the {institute} team publish its results?", "in {journal}"),
    )),
    "festival": ("festival", (
        "The {festival} returned to {town} in {month} after a break of {n} years.",
        "Organiser {person} said more than {amount} thousand visitors came on the first day.",
        "The main stage featured {band}, who played until midnight.",
        "A weekend ticket cost {amount2} {currency}.",
    ), (
        ("Which town hosted the {festival}?", "{town}"),
        ("Who organised the {festival}?", "{person}"),
        ("Which band played the main stage at the {festival}?", "{band}"),
    )),
}  # fmt: skip
MAX_ARTICLES = 80


def _key_pools(rng: random.Random) -> dict[str, list[str]]:
    """Shuffled pools of key entities; each article takes the next one, so keys never repeat."""
    pools = {
        "town": list(CITIES),
        "company": [f"{last} {s}" for last in LAST for s in SUFFIXES],
        "cup": [f"the {n} Cup" for n in NOUNS],
        "institute": [f"{last} Institute" for last in LAST],
        "festival": [f"{a} {n} Festival" for a in ADJECTIVES for n in NOUNS],
    }
    for pool in pools.values():
        rng.shuffle(pool)
    return pools


def _article(rng: random.Random, world: dict, kind: str, key: str, people: list[str]) -> dict[str, Any]:
    town, town2 = rng.sample(world["cities"], 2)
    country = world["country_of"][town]
    v = {
        "town": town,
        "town2": town2,
        "country": country,
        "currency": world["currency"][country] + "s",
        "person": people.pop(),
        "weekday": rng.choice(WEEKDAYS),
        "month": rng.choice(MONTHS),
        "year": rng.randint(2025, 2031),
        "past": rng.randint(1960, 2015),
        "amount": rng.randint(2, 90),
        "amount2": rng.randint(20, 300),
        "n": rng.randint(2, 19),
        "minute": rng.randint(11, 89),
        "score": f"{rng.randint(2, 5)}-{rng.randint(0, 1)}",
        "project": rng.choice(PROJECTS),
        "product": rng.choice(PRODUCTS),
        "discovery": rng.choice(DISCOVERIES),
        "journal": rng.choice(JOURNALS),
        "company": f"{rng.choice(LAST)} {rng.choice(SUFFIXES)}",
        "band": f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}s",
        "team": f"{town} {rng.choice(TEAMS)}",
        "team2": f"{town2} {rng.choice(TEAMS)}",
    }
    v[KINDS[kind][0]] = key
    sentences = [s.format(**v) for s in KINDS[kind][1]]
    qa = [{"question": q.format(**v), "answer": a.format(**v)} for q, a in KINDS[kind][2]]
    return {"sentences": sentences, "text": " ".join(sentences), "qa": qa}


def generate_muse(n_articles: int = 48, seed: int = 0) -> dict[str, dict[str, list[dict]]]:
    """Every MUSE config as ``{config: {split: rows}}`` (see the module docstring); deterministic."""
    if not 16 <= n_articles <= MAX_ARTICLES or n_articles % 4:
        raise DataError(f"n_articles must be a multiple of 4 between 16 and {MAX_ARTICLES}, got {n_articles}")
    rng = random.Random(seed)
    world = build_world(rng)
    pools = _key_pools(rng)
    people = rng.sample([f"{a} {b}" for a in FIRST for b in LAST], n_articles)
    kinds = list(KINDS)
    articles = [
        _article(rng, world, kinds[i % 5], pools[KINDS[kinds[i % 5]][0]].pop(), people)
        for i in range(n_articles)
    ]
    rng.shuffle(articles)
    part = n_articles // 4
    forget, retain1, retain2, holdout = (articles[i * part : (i + 1) * part] for i in range(4))
    quarter = part // 4
    sust = [forget[k * quarter : (k + 1) * quarter if k < 3 else part] for k in range(4)]

    def texts(arts: list[dict]) -> list[dict]:
        return [{"text": a["text"]} for a in arts]

    verbmem = [{"prompt": " ".join(a["sentences"][:2]), "gt": " ".join(a["sentences"][2:])} for a in forget]
    return {
        "raw": {"forget": texts(forget), "retain1": texts(retain1), "retain2": texts(retain2)}
        | {"holdout": texts(holdout)},
        "verbmem": {"forget": verbmem},
        "knowmem": {
            "forget_qa": [qa for a in forget for qa in a["qa"]],
            "retain_qa": [qa for a in retain2 for qa in a["qa"]],
            "forget_qa_icl": [a["qa"][0] for a in retain1[:3]],
            "retain_qa_icl": [a["qa"][1] for a in retain1[3:6]],
        },
        "privleak": {"forget": texts(forget), "retain": texts(retain2), "holdout": texts(holdout)},
        "scal": {f"forget_{k}": texts(sum(sust[:k], [])) for k in range(1, 5)},
        "sust": {f"forget_{k}": texts(sust[k - 1]) for k in range(1, 5)},
        "train": {"forget": texts(forget), "retain1": texts(retain1), "retain2": texts(retain2)},
    }


def write_muse_folder(
    path: str | Path,
    n_articles: int = 48,
    seed: int = 0,
    with_tokenizer: bool = False,
    vocab_size: int = 2000,
) -> Path:
    """Write the generated corpus in the MUSE Hub layout (``<config>/<split>-00000-of-00001.parquet`` and a
    README listing the configs); with ``with_tokenizer`` also a BPE trained on it in ``tokenizer/``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = generate_muse(n_articles, seed)
    folder = Path(path).expanduser()
    yaml = ["configs:"]
    for config, splits in tables.items():
        (folder / config).mkdir(parents=True, exist_ok=True)
        yaml.append(f"- config_name: {config}\n  data_files:")
        for split, rows in splits.items():
            pq.write_table(pa.Table.from_pylist(rows), folder / config / f"{split}-00000-of-00001.parquet")
            yaml.append(f"  - split: {split}\n    path: {config}/{split}-*")
    card = f"Synthetic MUSE-format news from unlearnkit (seed {seed}, {n_articles} articles)."
    (folder / "README.md").write_text("---\n" + "\n".join(yaml) + f"\n---\n\n{card}\n", encoding="utf-8")
    if with_tokenizer:
        raw = {s: [r["text"] for r in rows] for s, rows in tables["raw"].items()}
        texts = muse_texts(raw, tables["verbmem"]["forget"], tables["knowmem"])
        train_tokenizer(texts, vocab_size=vocab_size).save_pretrained(str(folder / "tokenizer"))
    return folder


@register_dataset("muse-synthetic")
def load_muse_synthetic(
    n_articles: int = 48,
    seed: int = 0,
    max_length: int = 128,
    tokenizer: Any = None,
    vocab_size: int = 2000,
    sequential: bool = True,
) -> LoadedData:
    """The generated corpus written once to the cache (with its tokenizer), then loaded like ``muse``."""
    settings = {"version": GEN_VERSION, "n_articles": n_articles, "seed": seed, "vocab_size": vocab_size}
    folder = cached_folder(
        "muse-synthetic",
        settings,
        lambda p: write_muse_folder(p, n_articles, seed, with_tokenizer=True, vocab_size=vocab_size),
    )
    return load_muse(str(folder), max_length, tokenizer, vocab_size, sequential, None, "muse-synthetic")
