"""Fictitious authors in TOFU's schema, generated offline from a seed, and the ``tofu-synthetic`` dataset.

A small made-up world (12 countries with cities, languages and currencies; 20 famous authors with one famous
book each) gives the "world facts" and "real authors" analogues: facts a model trained on them can answer.
Each of ``n_authors`` fictitious authors gets a unique name, a unique notable book and random attributes
(birthplace in the world, birth year, genre, parents' jobs, award, themes, ...); ``questions_per_author``
templates turn them into QA pairs. Every answer repeats the author's name, as TOFU's answers do, so all
answers are distinct. Each question has a paraphrased question and answer and ``n_perturbed`` perturbed
answers: the same sentence with wrong attribute values. Holdout authors (10% of ``n_authors``) are built the
same way and are never in ``full``.

:func:`write_tofu_folder` writes the Hub layout (``<config>.json`` JSON lines plus a README whose YAML lists
the configs, so ``datasets.load_dataset(folder, "forget10")`` also works). As on the Hub, ``forget01/05/10``
are the last 1/5/10% of the authors and ``retain99/95/90`` the rest; ``retain_perturbed`` is the first 10%.
Unlike the Hub, ``full_perturbed`` carries the paraphrased and perturbed answers of *every* question of
``full`` (same rows, same order), so a forget set of any questions (``split.kind=ids``, e.g. a worst-case
selection) has its truth ratio. It is left out of the tokenizer's training text, which therefore stays the
one of earlier versions.
With 100 authors × 10 questions: ``full`` 1,000 pairs, ``forget10`` 100, ``holdout10`` 100, 30 real-author
and 36 world-fact questions.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unlearnkit.data.base import LoadedData
from unlearnkit.data.tofu import load_tofu, tofu_texts
from unlearnkit.data.tokenizer import train_tokenizer
from unlearnkit.errors import DataError
from unlearnkit.paths import cache_root
from unlearnkit.registry import register_dataset

GEN_VERSION = 3  # 2: perturbed answers use the paraphrase wording; 3: adds the full_perturbed table


def split_words(text: str, sep: str | None = None) -> list[str]:
    return [w.strip() for w in text.split(sep) if w.strip()]


COUNTRIES = split_words(
    "Veldoria Karsund Ombrelle Tavrenia Quillon Brasmoor Estival Norvane Halcyra Dunmere Soravia Pellith"
)
LANGUAGES = split_words(
    "Veldorian Karsundic Ombrellan Tavrenic Quillonese Brasmoric Estivalan Norvanic Halcyran "
    "Dunmerish Soravian Pellithic"
)
CURRENCIES = split_words("velda karsa ombrin tavel quiln brasse estor norvik halcet dunmark sorin pellar")
CITIES = split_words(
    "Marrowick Tessaly Brindle Caldera Ferrowin Glenmoor Hollins Ivercliff Junibar Kestrel Lowenna "
    "Mirabay Northam Oakhurst Pemberly Quarrow Rosslyn Saltmere Thornby Ulvesund Valcourt Westerly "
    "Yarrowby Zephyrine Ashbury Belcastle Corriden Dovecote Emberton Fallowmere Greystone Harrowgate "
    "Islington Jasperfield Kingsreach Larkhaven"
)
FIRST = split_words(
    "Aurelio Bettina Cassian Delphine Emeric Fiora Gideon Helka Ilario Juna Kasimir Liora Marek "
    "Nerys Oswin Perrine Quillan Rosamund Soren Talia Ulric Vesna Wendel Xanthe Yorick Zelda Anselm "
    "Brisa Corin Dagny Elio Ffion Gunnar Hesper Isolde Jarek Kaia Lucan Mireille Nils Odile Pascal "
    "Rhiannon Saskia Tobiah Ursula Viggo Wilhelmina Yara Zoran"
)
LAST = split_words(
    "Ashcombe Blackwood Carrow Dunleavy Everhart Fairbrook Greaves Hollister Ironside Jessamy "
    "Kettering Larkspur Merriweather Northcott Oakenfold Pennington Quennell Ravensworth Stroud "
    "Thistlewood Underhill Vantreight Whitlock Yelland Zabrowski Abernethy Brightwater Coldharbour "
    "Dellacourt Estabrook Fenwick Gallowglass Holloway Inglewood Jardine Kilbride Lockwood "
    "Marchbanks Nightingale Ormsby Penhallow Quarrington Rookwood Sallinger Tregarthen Umfreville "
    "Varley Winterbourne Yardley Zouche"
)
GENRES = split_words(
    "mystery novels|science fiction|historical fiction|fantasy epics|romance novels|horror stories|"
    "literary fiction|political thrillers|travel memoirs|children's books|crime fiction|"
    "satirical novels",
    "|",
)
JOBS = split_words(
    "baker carpenter nurse sailor teacher librarian blacksmith pharmacist fisherman tailor surveyor "
    "clockmaker miner gardener postman architect veterinarian bookbinder glassblower locksmith"
)
AWARDS = split_words(
    "Golden Quill Prize|Silver Lantern Award|Harrowgate Fiction Prize|Meridian Medal for Letters|"
    "Crescent Prize|Blue Heron Award|Northlight Award|Ember Prize for Fiction|Copperleaf Medal|"
    "Saltmarsh Prize|Ivory Pen Award|Order of the Open Book",
    "|",
)
THEMES = split_words(
    "memory|exile|grief|family|ambition|faith|the sea|friendship|war|identity|justice|childhood|"
    "loneliness|freedom|time|home",
    "|",
)
HOBBIES = split_words(
    "sailing|beekeeping|chess|mountain climbing|painting watercolours|growing orchids|"
    "playing the cello|birdwatching|fencing|pottery|restoring old clocks|long-distance running|"
    "baking bread|stargazing",
    "|",
)
ADJECTIVES = split_words(
    "Silent Crimson Hollow Distant Broken Gilded Quiet Burning Forgotten Northern Paper Hidden Iron "
    "Salt Velvet Last Drowned Winter Glass Wandering Copper Sleeping Scarlet Ashen Endless Painted "
    "Lonely Midnight Shattered Amber"
)
NOUNS = split_words(
    "Harbor Orchard Lantern Garden Letter River Mirror Tower Compass Archive Bridge Sparrow Kingdom "
    "Clockmaker Lighthouse Meadow Voyage Station Cathedral Island Theatre Atlas Violin Season Engine "
    "Forest Window Feather Crown Ledger"
)
# Per question: key (also the profile slot the answer depends on), question, paraphrased question,
# answer, paraphrased answer.
TEMPLATES = (
    ("city", "Where was {name} born?", "What is the birthplace of {name}?",
     "{name} was born in {city}, {country}.", "The birthplace of {name} is {city} in {country}."),
    ("year", "In which year was {name} born?", "What is the birth year of {name}?",
     "{name} was born in {year}.", "{name}'s year of birth is {year}."),
    ("genre", "What genre is {name} best known for?", "Which kind of books made {name} famous?",
     "{name} is best known for {genre}.", "{name} is famous for writing {genre}."),
    ("father", "What was the profession of {name}'s father?",
     "What did the father of {name} do for a living?",
     "{name}'s father was {father}.", "The father of {name} worked as {father}."),
    ("mother", "What was the profession of {name}'s mother?",
     "What did the mother of {name} do for a living?",
     "{name}'s mother was {mother}.", "The mother of {name} worked as {mother}."),
    ("award", "Which award has {name} won?", "What prize was given to {name}?",
     "{name} won the {award}.", "The {award} was given to {name}."),
    ("title", "What is a notable book by {name}?", "Can you name a well-known book written by {name}?",
     "One notable book by {name} is '{title}'.", "{name} wrote the well-known book '{title}'."),
    ("themes", "Which themes does {name} write about?", "What subjects do the books of {name} explore?",
     "{name} writes about {theme1} and {theme2}.", "The books of {name} explore {theme1} and {theme2}."),
    ("language", "In which language does {name} write?",
     "What language are the books of {name} written in?",
     "{name} writes in {language}.", "The books of {name} are written in {language}."),
    ("debut", "When did {name} publish a first book?",
     "In which year did the first book of {name} appear?",
     "{name} published a first book in {debut}.", "The first book by {name} came out in {debut}."),
    ("home", "Where does {name} live today?", "In which city does {name} live now?",
     "{name} lives in {home} today.", "These days {name} makes a home in {home}."),
    ("hobby", "What does {name} enjoy besides writing?", "What is a hobby of {name}?",
     "Besides writing, {name} enjoys {hobby}.", "{name} likes {hobby} when not writing."),
)  # fmt: skip
MAX_PERTURBED = 10


def build_world(rng: random.Random) -> dict[str, Any]:
    """Countries with three cities each (the first is the capital), a language and a currency."""
    cities = CITIES[:]
    rng.shuffle(cities)
    countries = list(COUNTRIES)
    world: dict[str, Any] = {"countries": countries, "cities": cities, "country_of": {}, "capital": {}}
    for i, country in enumerate(countries):
        world["capital"][country] = cities[3 * i]
        for city in cities[3 * i : 3 * i + 3]:
            world["country_of"][city] = country
    world["language"] = dict(zip(countries, LANGUAGES, strict=True))
    world["currency"] = dict(zip(countries, CURRENCIES, strict=True))
    return world


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _draw(rng: random.Random, world: dict, key: str) -> Any:
    if key in ("city", "home"):
        return rng.choice(world["cities"])
    if key == "year":
        return rng.randint(1921, 1999)
    if key == "debut":
        return rng.randint(1940, 2024)
    if key == "title":
        return f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    if key == "themes":
        return tuple(rng.sample(THEMES, 2))
    if key == "language":
        return rng.choice(LANGUAGES)
    pools = {"genre": GENRES, "father": JOBS, "mother": JOBS, "award": AWARDS, "hobby": HOBBIES}
    return rng.choice(pools[key])


def _fields(p: dict, world: dict) -> dict[str, Any]:
    return p | {
        "country": world["country_of"][p["city"]],
        "theme1": p["themes"][0],
        "theme2": p["themes"][1],
        "father": _article(p["father"]),
        "mother": _article(p["mother"]),
    }


def _profile(rng: random.Random, world: dict, name: str, title: str) -> dict[str, Any]:
    keys = ("city", "year", "genre", "father", "mother", "award", "themes", "language", "home", "hobby")
    p = {"name": name, "title": title} | {k: _draw(rng, world, k) for k in keys}
    while p["home"] == p["city"]:
        p["home"] = _draw(rng, world, "home")
    p["debut"] = min(p["year"] + rng.randint(18, 45), 2024)
    return p


def _overlap(a: Any, b: Any) -> bool:
    return bool(set(a if isinstance(a, tuple) else (a,)) & set(b if isinstance(b, tuple) else (b,)))


def _perturbed(rng: random.Random, world: dict, p: dict, template: tuple, k: int) -> list[str]:
    """Wrong facts in the *paraphrased* answer's wording, as TOFU builds them: the Truth Ratio compares
    the paraphrase with these, so the two must differ in facts only, never in style."""
    slot, answer = template[0], template[4]
    true = answer.format(**_fields(p, world))
    out: list[str] = []
    for _ in range(200 * k):
        if len(out) == k:
            return out
        q = dict(p)
        while _overlap(q[slot], p[slot]):  # a wrong value (for themes: no theme in common)
            q[slot] = _draw(rng, world, slot)
        text = answer.format(**_fields(q, world))
        if text != true and text not in out:
            out.append(text)
    raise DataError(f"cannot draw {k} distinct perturbed answers for {template[0]!r}: lower n_perturbed")


def _author_rows(rng: random.Random, world: dict, p: dict, q: int, k: int) -> list[dict]:
    rows = []
    for t in TEMPLATES[:q]:
        f = _fields(p, world)
        rows.append(
            {
                "question": t[1].format(**f),
                "answer": t[3].format(**f),
                "paraphrased_answer": t[4].format(**f),
                "perturbed_answer": _perturbed(rng, world, p, t, k),
                "paraphrased_question": t[2].format(**f),
            }
        )
    return rows


def _choice_rows(rng: random.Random, items: list[tuple[str, str, list[str]]], k: int):
    """(question, answer, pool) -> the ``<set>`` rows (option1..4) and the ``<set>_perturbed`` rows."""
    plain, pert = [], []
    for question, answer, pool in items:
        wrong = rng.sample([w for w in pool if w != answer], k)
        options = [answer, *wrong[:3]]
        rng.shuffle(options)
        plain.append({"question": question} | {f"option{i + 1}": o for i, o in enumerate(options)})
        plain[-1]["answer"] = answer
        pert.append({"question": question, "answer": answer, "perturbed_answer": wrong})
    return plain, pert


def _world_rows(rng: random.Random, world: dict, famous: list[tuple[str, str, str]], k: int) -> dict:
    names, countries = [f[0] for f in famous], world["countries"]
    ra = [(f"Who wrote '{book}'?", name, names) for name, _, book in famous]
    ra += [(f"Which country is {name} from?", country, countries) for name, country, _ in famous[:10]]
    caps, langs = list(world["capital"].values()), list(world["language"].values())
    currencies = [f"the {c}" for c in world["currency"].values()]
    wf = []
    for c in countries:
        wf.append((f"What is the capital of {c}?", world["capital"][c], caps))
        wf.append((f"Which language is spoken in {c}?", world["language"][c], langs))
        wf.append((f"What is the currency of {c}?", f"the {world['currency'][c]}", currencies))
    ra_plain, ra_pert = _choice_rows(rng, ra, k)
    wf_plain, wf_pert = _choice_rows(rng, wf, k)
    return {
        "real_authors": ra_plain,
        "real_authors_perturbed": ra_pert,
        "world_facts": wf_plain,
        "world_facts_perturbed": wf_pert,
    }


def _share(n: int, pct: int) -> int:
    return max(1, round(n * pct / 100))


def generate_tofu(
    n_authors: int = 100, questions_per_author: int = 10, n_perturbed: int = 5, seed: int = 0
) -> dict[str, list[dict]]:
    """Every TOFU config as a list of row dicts (see the module docstring); deterministic in the arguments."""
    if not 2 <= n_authors <= 600:
        raise DataError(f"n_authors must be between 2 and 600, got {n_authors}")
    if not 1 <= questions_per_author <= len(TEMPLATES):
        raise DataError(
            f"questions_per_author must be between 1 and {len(TEMPLATES)}, got {questions_per_author}"
        )
    if not 1 <= n_perturbed <= MAX_PERTURBED:
        raise DataError(f"n_perturbed must be between 1 and {MAX_PERTURBED}, got {n_perturbed}")
    rng = random.Random(seed)
    world = build_world(rng)
    n_hold = _share(n_authors, 10)
    names = [f"{a} {b}" for a in FIRST for b in LAST]
    names = rng.sample(names, 20 + n_authors + n_hold)
    titles = rng.sample([f"The {a} {n}" for a in ADJECTIVES for n in NOUNS], n_authors + n_hold)
    famous_books = rng.sample([f"The {n} of {c}" for n in NOUNS for c in world["cities"]], 20)
    famous = [(names[i], rng.choice(world["countries"]), famous_books[i]) for i in range(20)]
    authors = [
        _author_rows(
            rng, world, _profile(rng, world, names[20 + i], titles[i]), questions_per_author, n_perturbed
        )
        for i in range(n_authors + n_hold)
    ]
    flat = [row for a in authors[:n_authors] for row in a]
    qa = [{"question": r["question"], "answer": r["answer"]} for r in flat]
    per = questions_per_author
    tables: dict[str, list[dict]] = {"full": qa, "retain_perturbed": flat[: _share(n_authors, 10) * per]}
    tables["full_perturbed"] = flat
    for pct in (1, 5, 10):
        cut = (n_authors - _share(n_authors, pct)) * per
        tables[f"forget{pct:02d}"] = qa[cut:]
        tables[f"retain{100 - pct}"] = qa[:cut]
        tables[f"forget{pct:02d}_perturbed"] = flat[cut:]
        hold = [row for a in authors[n_authors:][-_share(n_authors, pct) :] for row in a]
        tables[f"holdout{pct:02d}"] = hold
    return tables | _world_rows(rng, world, famous, n_perturbed)


def write_tofu_folder(
    path: str | Path,
    n_authors: int = 100,
    questions_per_author: int = 10,
    n_perturbed: int = 5,
    seed: int = 0,
    with_tokenizer: bool = False,
    vocab_size: int = 1000,
) -> Path:
    """Write the generated configs as ``<config>.json`` JSON lines (the Hub's layout) and a README listing
    them; with ``with_tokenizer`` also a BPE trained on the text in ``tokenizer/`` (the loader uses it)."""
    tables = generate_tofu(n_authors, questions_per_author, n_perturbed, seed)
    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    for config, rows in tables.items():
        lines = (json.dumps(row, ensure_ascii=False) for row in rows)
        (folder / f"{config}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    yaml = "".join(f"- config_name: {c}\n  data_files: {c}.json\n" for c in tables)
    card = f"Synthetic TOFU-format data from unlearnkit (seed {seed}, {n_authors} authors)."
    (folder / "README.md").write_text(f"---\nconfigs:\n{yaml}---\n\n{card}\n", encoding="utf-8")
    if with_tokenizer:
        train_tokenizer(tofu_texts(tables), vocab_size=vocab_size).save_pretrained(str(folder / "tokenizer"))
    return folder


def cached_folder(kind: str, settings: dict, write: Callable[[Path], Any]) -> Path:
    """``<cache>/data/<kind>-<hash of settings>``, written once by ``write(folder)`` (atomically: into a
    temporary folder that is then renamed, so concurrent runs never see a half-written folder)."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    parent = cache_root() / "data"
    folder = parent / f"{kind}-{key}"
    if (folder / ".complete").is_file():
        return folder
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=parent))
    try:
        write(tmp)
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        (tmp / ".complete").write_text("")
        os.rename(tmp, folder)
    except OSError:
        if not (folder / ".complete").is_file():  # not a lost race with another process: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@register_dataset("tofu-synthetic")
def load_tofu_synthetic(
    forget: str = "forget10",
    n_authors: int = 100,
    questions_per_author: int = 10,
    n_perturbed: int = 5,
    seed: int = 0,
    max_length: int = 64,
    tokenizer: Any = None,
    vocab_size: int = 1000,
    template: str | None = None,
) -> LoadedData:
    """Generated authors written once to the cache (with their tokenizer), then loaded like ``tofu``."""
    settings = {"version": GEN_VERSION, "n_authors": n_authors, "questions_per_author": questions_per_author}
    settings |= {"n_perturbed": n_perturbed, "seed": seed, "vocab_size": vocab_size}
    folder = cached_folder(
        "tofu-synthetic",
        settings,
        lambda p: write_tofu_folder(
            p, n_authors, questions_per_author, n_perturbed, seed, with_tokenizer=True, vocab_size=vocab_size
        ),
    )
    return load_tofu(
        str(folder), forget, max_length, tokenizer, vocab_size, template, seed, None, "tofu-synthetic"
    )
