"""What a person sees of a suite: terminal tables that never cut a method name or a number (at 80 and 100
columns, headline columns first, no '± 0.00' for one seed), progress lines when stdout is not a terminal,
and the bench/report modules kept readable (no function over 100 lines, no imports inside functions)."""

from __future__ import annotations

import ast
import io
import random
import re
from pathlib import Path

import pytest
from rich.console import Console

from unlearnkit.bench.loop import Outcome, SuiteRunner
from unlearnkit.bench.progress import RowProgress, duration
from unlearnkit.bench.results import cell, fmt, markdown_table, summarize_n
from unlearnkit.bench.tables import ordered_keys, print_table, terminal_tables, wrap_header
from unlearnkit.registry import get_protocol

SUITES = {  # protocol -> (suite, methods, keys), as the shipped presets list them
    "classification": (
        "vision-digits",
        [
            "retrain",
            "ft",
            "ga",
            "rl",
            "iu",
            "l1_sparse",
            "boundary_shrink",
            "boundary_expand",
            "scrub",
            "salun",
        ],
        ["UA", "RA", "TA", "MIA", "RTE", "gap"],
    ),
    "tofu": (
        "tofu-synthetic",
        ["retrain", "ga", "graddiff", "npo", "simnpo", "idkpo", "rmu"],
        [
            "forget_quality",
            "model_utility",
            "forget_truth_ratio",
            "forget_rouge",
            "forget_prob",
            "RTE",
            "forget_quality_relearned",
            "forget_truth_ratio_relearned",
            "forget_rouge_relearned",
            "forget_prob_relearned",
        ],
    ),  # fmt: skip
    "muse": (
        "muse-synthetic",
        ["retrain", "ga", "graddiff", "npo", "simnpo", "rmu"],
        [
            "verbmem_f",
            "knowmem_f",
            "knowmem_r",
            "privleak",
            "RTE",
            "verbmem_f_relearned",
            "knowmem_f_relearned",
            "privleak_relearned",
        ],
    ),  # fmt: skip
    "erasure": (
        "t2i-shapes",
        ["original", "retrain", "esd", "salun", "advunlearn_fast_attack_everything"],
        ["UA", "pre_ASR", "ASR", "utility", "fid", "kid", "RTE"],
    ),
}


def fake_result(protocol: str, seeds: int, seed: int = 0) -> dict:
    """A results.json of the protocol's suite with values of every magnitude (p-values down to 1e-9,
    PrivLeak down to -100, RTE in the thousands)."""
    suite, methods, keys = SUITES[protocol]
    rng = random.Random(seed)
    rows = []
    for s in range(seeds):
        for m in methods:
            metrics = {k: rng.choice([rng.uniform(-100, 100), rng.uniform(1e-9, 1e-3), rng.uniform(1e3, 9e3)])
                       for k in keys}  # fmt: skip
            rows.append({"method": m, "seed": s, "metrics": metrics})
    return {"suite": suite, "kind": "plain", "protocol": protocol, "seeds": seeds, "keys": keys,
            "caption": None, "rows": rows}  # fmt: skip


def render(result: dict, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    print_table(result, console)
    return console.export_text()


@pytest.mark.parametrize("protocol", sorted(SUITES))
@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("seeds", [1, 3])
def test_tables_keep_every_method_name_and_number_whole(protocol, width, seeds):
    result = fake_result(protocol, seeds, seed=width + seeds)
    text = render(result, width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    words = set(re.split(r"[\s│┃]+", text))
    summary = summarize_n(result["rows"], result["keys"])
    for method, d in summary.items():
        assert method in words  # the full name, as one word of the table
        for mean, std, _ in d.values():
            assert fmt(mean) in words  # every number whole (a cut one would end in "…" or be split)
            assert seeds == 1 or fmt(std) in words
    if seeds == 1:
        assert "±" not in text.split("\n", 2)[-1] and "1 seed" in text
    else:
        assert f"over {seeds} seeds" in text and "±" in text


def test_headline_columns_come_first_and_the_rest_follow_in_another_table():
    result = fake_result("tofu", 2)
    first, rest = ordered_keys(result)
    assert tuple(first) == get_protocol("tofu").headline
    assert rest == [k for k in result["keys"] if k.endswith("_relearned")]
    tables = terminal_tables(result, 100)
    headers = [[c.header for c in t.columns[1:]] for t in tables]
    flat = [h.replace("\n", "") for hs in headers for h in hs]
    assert flat == first + rest  # nothing dropped, headline first
    # a table holds headline columns only or other columns only
    n_head = [sum(h.replace("\n", "") in first for h in hs) for hs in headers]
    assert all(k in (0, len(hs)) for k, hs in zip(n_head, headers, strict=True))


def test_wrap_header_breaks_at_underscores():
    assert wrap_header("forget_truth_ratio_relearned", 13) == "forget_truth_\nratio_\nrelearned"
    assert wrap_header("UA", 8) == "UA"


def test_cells_show_a_spread_only_over_two_or_more_values():
    assert cell(12.345, 0.0, 1) == "12.35"
    assert cell(12.345, 0.5, 2) == "12.35 ± 0.50"
    assert cell(2e-5, 1.4e-5, 3) == "2e-05 ± 1.4e-05"


def test_markdown_has_no_spread_for_one_seed():
    md = markdown_table(fake_result("classification", 1))
    assert "±" not in md and "(1 seed)" in md
    md = markdown_table(fake_result("classification", 2))
    assert "±" in md and "(2 seeds)" in md


def test_sequential_and_worstcase_tables_render_whole():
    seq = {"suite": "muse-synthetic-sust", "kind": "sequential", "protocol": "muse", "seeds": 1,
           "mode": "sustainability", "requests": ["sust_forget_1", "sust_forget_2"],
           "keys": ["verbmem_f", "knowmem_f", "knowmem_r", "privleak", "verbmem_r", "RTE"], "caption": "c",
           "rows": [{"method": m, "seed": 0, "request": k, "forget": f"sust_forget_{k}",
                     "metrics": {"verbmem_f": 70.0 + k, "privleak": -99.5, "RTE": 1234.5}}
                    for m in ("retrain", "npo") for k in (1, 2)]}  # fmt: skip
    text = render(seq, 80)
    assert "sust_forget_2" in text and "-99.50" in text and "1234.50" in text and "72.00" in text


def test_progress_prints_one_flushed_line_per_finished_row():
    out = io.StringIO()
    now = [0.0]
    with RowProgress("vision-digits", 4, stream=out, clock=lambda: now[0]) as prog:
        now[0] = 10.0
        prog.finished("retrain seed 0", 10.0)
        prog.finished("ft seed 0", None)  # reused from the store: no time, not in the mean
        now[0] = 40.0
        prog.finished("ga seed 0", 30.0)
        prog.finished("salun seed 0", 5.0)
    lines = out.getvalue().splitlines()
    assert lines == [
        "vision-digits: retrain seed 0 done in 10.0 s (1/4, elapsed 10.0 s, about 30.0 s left)",
        "vision-digits: ft seed 0 stored, reused (2/4, elapsed 10.0 s, about 20.0 s left)",
        "vision-digits: ga seed 0 done in 30.0 s (3/4, elapsed 40.0 s, about 20.0 s left)",
        "vision-digits: salun seed 0 done in 5.0 s (4/4, elapsed 40.0 s)",
    ]
    assert duration(125) == "2 min 05 s" and duration(3725) == "1 h 02 min"


def test_quiet_progress_prints_nothing():
    out = io.StringIO()
    with RowProgress("s", 1, enabled=False, stream=out) as prog:
        prog.finished("a seed 0", 1.0)
    assert out.getvalue() == ""


def test_suite_rows_report_progress_on_stdout_when_it_is_not_a_terminal(tmp_path, capsys):
    with SuiteRunner(tmp_path, "tiny", "vision", 2) as loop:
        for m in ("retrain", "ft"):
            loop.row({"m": m}, m, 0, lambda: Outcome({"UA": 1.0}))
    with SuiteRunner(tmp_path, "tiny", "vision", 2) as loop:  # the same rows again: from the store
        for m in ("retrain", "ft"):
            loop.row({"m": m}, m, 0, lambda: Outcome({"UA": 1.0}))
    lines = capsys.readouterr().out.splitlines()
    starts = ["tiny: retrain seed 0 done in ", "tiny: ft seed 0 done in "]
    starts += ["tiny: retrain seed 0 stored, reused (1/2", "tiny: ft seed 0 stored, reused (2/2"]
    assert len(lines) == 4 and all(ln.startswith(st) for ln, st in zip(lines, starts, strict=True))
    assert lines[0].startswith("tiny: retrain seed 0 done in ") and "(1/2, elapsed" in lines[0]
    assert "(2/2, elapsed" in lines[1] and "left" not in lines[1]


def test_bench_and_report_functions_are_short_and_import_at_the_top():
    root = Path(__file__).parents[1] / "src" / "unlearnkit"
    lazy_ok = ("matplotlib",)  # heavy optional dependency (unlearnkit[plots])
    for path in sorted([*(root / "bench").glob("*.py"), *(root / "report").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            assert node.end_lineno - node.lineno < 100, f"{path.name}:{node.name} is over 100 lines"
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    mod = sub.module if isinstance(sub, ast.ImportFrom) else sub.names[0].name
                    assert mod and mod.split(".")[0] in lazy_ok, f"{path.name}:{node.name} imports {mod}"
