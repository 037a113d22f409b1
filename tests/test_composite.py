"""Composite suites (``bench quick``): parts run into sub-folders, options reach the right part, the
report is written, and a rerun reuses every stored row."""

from __future__ import annotations

import json

import pytest
import yaml

from unlearnkit.bench.composite import check_parts, split_overrides
from unlearnkit.bench.rows import RowRunner
from unlearnkit.bench.suite import run_suite
from unlearnkit.cli import main
from unlearnkit.config import load_preset
from unlearnkit.errors import ConfigError


def test_quick_preset_covers_every_family_and_a_worst_case_selection():
    parts = check_parts(load_preset("suites/quick"), "quick")
    families = set()
    kinds = set()
    for spec in parts.values():
        suite = load_preset(f"suites/{spec['suite']}")
        families.add(suite.get("family", "vision"))
        kinds.add(suite.get("kind", "plain"))
    assert families == {"vision", "text", "diffusion"}
    assert "worstcase" in kinds


def test_overrides_go_to_all_parts_or_to_the_named_one():
    common, per = split_overrides(["seed=3", "llm:method.lr=1e-5", "t2i:eval.per_prompt=4"], ["llm", "t2i"])
    assert common == ["seed=3"]
    assert per == {"llm": ["method.lr=1e-5"], "t2i": ["eval.per_prompt=4"]}
    with pytest.raises(ConfigError, match="names no part"):
        split_overrides(["vision:seed=1"], ["llm", "t2i"])


@pytest.mark.parametrize(
    "parts,match",
    [
        (None, "must list its suites"),
        ({"a": {"suite": "vision-digits", "seed": 2}}, "unknown key"),
        ({"a": {"methods": ["ft"]}}, "needs 'suite: NAME'"),
        ({"a": {"suite": "vision-digits", "seeds": 0}}, "positive integer"),
    ],
)
def test_bad_parts_are_rejected(parts, match):
    with pytest.raises(ConfigError, match=match):
        check_parts({"kind": "composite", "parts": parts}, "mine")


@pytest.fixture()
def tiny_composite(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "suite": "tiny",
                "kind": "composite",
                "parts": {
                    "random": {"suite": "vision-digits", "methods": ["ft", "ga"], "note": NOTE},
                    "classwise": {"suite": "vision-digits-class", "methods": ["ga"]},
                },
            },
            sort_keys=False,
        )
    )
    return path


NOTE = 'Budget: one seed, so 1 row = "everything": read the 3-seed table.'


def test_composite_runs_parts_filters_methods_and_writes_the_report(tiny_composite, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["bench", str(tiny_composite), "--out", str(out), "--quiet", "--methods", "ga"]
    assert main(args + ["methods.ga.epochs=1", "classwise:methods.ga.lr=0.02"]) == 0
    summary = json.loads((out / "composite.json").read_text())
    assert list(summary["parts"]) == ["random", "classwise"]
    assert summary["parts"]["random"]["methods"] == ["ga"]
    rows = json.loads((out / "random" / "results.json").read_text())["rows"]
    assert sorted({r["method"] for r in rows}) == ["ga", "retrain"]  # --methods kept ga (+ the oracle)
    class_rows = json.loads((out / "classwise" / "results.json").read_text())["rows"]
    assert {r["seed"] for r in class_rows} == {0}  # one seed by default
    assert "methods.ga.lr=0.02" in summary["parts"]["classwise"]["overrides"]
    assert "methods.ga.lr=0.02" not in summary["parts"]["random"]["overrides"]
    # One store for the whole run, holding the rows of both parts.
    from unlearnkit.runs.store import open_store

    with open_store(out / "runs.sqlite") as store:
        suites = {r.suite for r in store.query()}
    assert suites == {"vision-digits", "vision-digits-class"}
    assert not (out / "random" / "runs.sqlite").exists()
    html = (out / "report.html").read_text()
    assert "vision-digits" in html and "vision-digits-class" in html
    # The part's note ends its caption (protocol caption first), in results.json, results.md and the terminal.
    caption = json.loads((out / "random" / "results.json").read_text())["caption"]
    assert caption.startswith("UA, RA, TA, MIA") and caption.endswith(NOTE)
    assert NOTE in (out / "random" / "results.md").read_text()
    assert "Budget: one seed" in html and "Budget: one seed" in (out / "report.md").read_text()
    assert "caption" not in json.loads((out / "classwise" / "results.json").read_text()) or NOTE not in (
        json.loads((out / "classwise" / "results.json").read_text())["caption"] or ""
    )
    printed = capsys.readouterr().out
    assert NOTE.split(":")[0] in printed
    assert "== random" in printed and "report written to" in printed
    # A rerun reuses the stored rows: identical results, and no row is computed again.
    before = json.loads((out / "random" / "results.json").read_text())["rows"]

    class NoTraining(RowRunner):
        def run_row(self, *a, **k):
            raise AssertionError("a stored row was recomputed")

    overrides = ["methods.ga.epochs=1", "classwise:methods.ga.lr=0.02"]
    res = run_suite(str(tiny_composite), None, out, ["ga"], overrides, progress=False, runner=NoTraining())
    assert list(res["parts"]) == ["random", "classwise"] and "report" not in res  # no report= given
    assert json.loads((out / "random" / "results.json").read_text())["rows"] == before


def test_a_method_no_part_has_is_an_error(tiny_composite, tmp_path, capsys):
    assert main(["bench", str(tiny_composite), "--out", str(tmp_path / "o"), "--methods", "npo"]) == 2
    assert "no part" in capsys.readouterr().err
