"""``unlearnkit report``: tables with hand-computed mean ± std, one figure per kind of data, a self-contained
HTML page (checked in headless Chromium when it is installed) and one-line errors for bad inputs.

The inputs are hand-written results.json files in the layouts the suites write; nothing is trained.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from unlearnkit.errors import UnlearnkitError

pytest.importorskip("matplotlib")

from unlearnkit.report import SuiteResult, collect, make_report  # noqa: E402


def row(method: str, seed: int, **metrics: float) -> dict:
    return {"method": method, "seed": seed, "metrics": metrics}


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def vision_suite() -> dict:
    keys = ["UA", "RA", "TA", "MIA", "RTE", "gap"]
    rows = [
        row("retrain", 0, UA=5.0, RA=100.0, TA=95.0, MIA=10.0, RTE=3.0, gap=0.0),
        row("retrain", 1, UA=7.0, RA=100.0, TA=97.0, MIA=12.0, RTE=5.0, gap=0.0),
        row("ga", 0, UA=2.0, RA=99.0, TA=90.0, MIA=4.0, RTE=0.5, gap=1.0),
        row("ga", 1, UA=4.0, RA=98.0, TA=94.0, MIA=6.0, RTE=0.7, gap=3.0),
        row("salun", 0, UA=6.0, RA=99.5, TA=96.0, MIA=9.0, RTE=1.0, gap=0.5),
        row("salun", 1, UA=6.5, RA=99.5, TA=96.5, MIA=11.0, RTE=1.2, gap=0.7),
    ]
    return {
        "suite": "vision-digits",
        "seeds": 2,
        "config": {"family": "vision", "data": {"name": "digits"}},
        "methods": {},
        "rows": rows,
        "keys": keys,
        "caption": None,
    }


def worst_suite() -> dict:
    def wc(m, uar, uaw, gr, gw):
        return row(
            m,
            0,
            UA_random=uar,
            UA_worst=uaw,
            RA_random=99.0,
            RA_worst=98.0,
            TA_random=96.0,
            TA_worst=95.0,
            MIA_random=8.0,
            MIA_worst=3.0,
            gap_random=gr,
            gap_worst=gw,
        )

    keys = [f"{k}_{s}" for k in ("UA", "RA", "TA", "MIA", "gap") for s in ("random", "worst")]
    rows = [wc("retrain", 5.0, 1.0, 0.0, 0.0), wc("ft", 1.0, 0.0, 2.0, 1.5), wc("rl", 3.0, 0.5, 1.0, 2.5)]
    return {
        "suite": "worstcase-digits",
        "kind": "worstcase",
        "seeds": 1,
        "size": "10%",
        "granularity": "example",
        "keys": keys,
        "caption": "worst-case caption",
        "rows": rows,
    }


def t2i_suite() -> dict:
    rows = [
        row("original", 0, UA=0.0, pre_ASR=100.0, ASR=100.0, utility=100.0, fid=200.0, RTE=0.0),
        row("esd", 0, UA=90.0, pre_ASR=10.0, ASR=60.0, utility=80.0, fid=250.0, RTE=7.0),
    ]
    return {
        "suite": "t2i-shapes",
        "seeds": 1,
        "config": {"family": "diffusion"},
        "rows": rows,
        "keys": ["UA", "pre_ASR", "ASR", "utility", "fid", "RTE"],
        "caption": "t2i caption",
    }


def tofu_suite() -> dict:
    keys = [
        "forget_quality",
        "model_utility",
        "forget_rouge",
        "forget_quality_relearned",
        "forget_rouge_relearned",
    ]
    rows = [
        row("retrain", 0, forget_quality=1.0, model_utility=0.5, forget_rouge=0.4),
        row("retrain", 1, forget_quality=1.0, model_utility=0.7, forget_rouge=0.4),
        row(
            "npo",
            0,
            forget_quality=1e-3,
            model_utility=0.4,
            forget_rouge=0.2,
            forget_quality_relearned=1e-5,
            forget_rouge_relearned=0.6,
        ),
        row(
            "npo",
            1,
            forget_quality=3e-3,
            model_utility=0.6,
            forget_rouge=0.3,
            forget_quality_relearned=3e-5,
            forget_rouge_relearned=0.8,
        ),
    ]
    return {
        "suite": "tofu-synthetic",
        "seeds": 2,
        "config": {"family": "text"},
        "rows": rows,
        "keys": keys,
        "caption": "tofu caption",
    }


def muse_suite() -> dict:
    rows = [
        row("retrain", 0, verbmem_f=70.0, knowmem_f=2.0, knowmem_r=3.0, privleak=0.0),
        row("npo", 0, verbmem_f=60.0, knowmem_f=1.0, knowmem_r=2.5, privleak=-80.0),
    ]
    return {
        "suite": "muse-synthetic",
        "seeds": 1,
        "rows": rows,
        "keys": ["verbmem_f", "knowmem_f", "knowmem_r", "privleak"],
    }


def sequential_suite() -> dict:
    rows = []
    for k, req in enumerate(("sust_forget_1", "sust_forget_2"), start=1):
        for m, v in (("retrain", 70.0), ("npo", 90.0 - 10 * k)):
            r = row(m, 0, verbmem_f=v, privleak=0.0 if m == "retrain" else -50.0 * k, verbmem_r=100.0 - k)
            rows.append(r | {"request": k, "forget": req})
    return {
        "suite": "muse-synthetic-sust",
        "kind": "sequential",
        "mode": "sustainability",
        "seeds": 1,
        "requests": ["sust_forget_1", "sust_forget_2"],
        "keys": ["verbmem_f", "privleak", "verbmem_r"],
        "caption": "sequential caption",
        "rows": rows,
    }


EXPECTED = {  # folder -> figure files the report must draw for it
    "vision": ["tradeoff", "gap", "curves"],
    "wc": ["worstcase"],
    "t2i": ["tradeoff"],
    "tofu": ["tradeoff", "relearn"],
    "muse": ["tradeoff", "gap"],
    "sust": ["sequential"],
}
N_FIGURES = sum(len(v) for v in EXPECTED.values())


def make_inputs(root: Path) -> Path:
    for name, suite in (
        ("vision", vision_suite()),
        ("wc", worst_suite()),
        ("t2i", t2i_suite()),
        ("tofu", tofu_suite()),
        ("muse", muse_suite()),
        ("sust", sequential_suite()),
    ):
        write(root / name / "results.json", suite)
    curves = root / "vision" / "curves"
    points = [{"epoch": 0, "step": i, "phase": "forget", "loss": 2.0 - 0.1 * i} for i in range(20)]
    write(curves / "ga-seed0.json", points)  # a bare list of points
    write(
        curves / "salun-seed1.json",
        {"method": "salun", "seed": 1, "tag": None, "steps": 20, "points": 20, "history": points},
    )  # bench/loop.py's layout
    (curves / "rl-seed0.json").write_text("{not json")  # a broken curve is skipped with a note
    write(root / "single" / "results.json", {"metrics": {"UA": 1.0}})  # a single run: skipped with a note
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = make_inputs(tmp_path_factory.mktemp("report"))
    return root, make_report(root, title="Test report")


def test_markdown_tables_hold_hand_computed_mean_and_std(report):
    root, res = report
    md = res.markdown.read_text()
    assert md.startswith("# Test report")
    # vision: ga UA (2, 4), TA (90, 94), gap (1, 3); salun's gap (0.5, 0.7) is the smallest: bold
    assert (
        "| ga | 3.00 ± 1.41 | 98.50 ± 0.71 | 92.00 ± 2.83 | 5.00 ± 1.41 | 0.60 ± 0.14 | 2.00 ± 1.41 |" in md
    )
    assert "| salun | 6.25 ± 0.35 |" in md and "**0.60 ± 0.14**" in md
    assert "| retrain | 6.00 ± 1.41 | 100.00 ± 0.00 | 96.00 ± 1.41 |" in md
    # TOFU: forget quality (1e-3, 3e-3), relearned (1e-5, 3e-5): small values in 2 significant digits
    assert "| npo | 0.002 ± 0.0014 | 0.50 ± 0.14 | 0.25 ± 0.07 | 2e-05 ± 1.4e-05 | 0.70 ± 0.14 |" in md
    assert "| esd | 90.00 ± 0.00 | 10.00 ± 0.00 | 60.00 ± 0.00 | 80.00 ± 0.00 |" in md
    assert "| ft | 1.00 ± 0.00 | 0.00 ± 0.00 |" in md  # worst-case columns in the suite's key order
    assert "| npo | 2 | sust_forget_2 | 70.00 ± 0.00 | -100.00 ± 0.00 | 98.00 ± 0.00 |" in md  # per request
    for caption in ("worst-case caption", "t2i caption", "tofu caption", "sequential caption"):
        assert caption in md
    assert any("rl-seed0.json" in n for n in res.notes) and any("single" in n for n in res.notes)


def test_every_figure_is_drawn_linked_and_captioned(report):
    root, res = report
    md = res.markdown.read_text()
    names = sorted(p.name for p in res.figures)
    assert names == sorted(f"{d}-{f}.png" for d, figs in EXPECTED.items() for f in figs)
    for p in res.figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        assert f"](report_files/{p.name})" in md
    captions = re.findall(r"^\*\*Figure (\d+)\.\*\* (.+)$", md, flags=re.M)
    assert [int(n) for n, _ in captions] == list(range(1, N_FIGURES + 1))
    for _, text in captions:  # each caption says which direction is better
        assert re.search(r"better|lower =|higher =|harder to forget", text, flags=re.I), text


def test_html_is_self_contained(report):
    _, res = report
    page = res.html.read_text()
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and not re.search(r"<script[^>]+src=", page) and "@import" not in page
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(srcs) == page.count("<img") == page.count("<figure") == N_FIGURES
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert "default-src 'none'" in page  # the CSP forbids any network load


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _dump_dom(browser: str, page: Path, profile: Path) -> tuple[str, str]:
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2000",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


@pytest.mark.skipif(
    _chromium() is None and not os.environ.get("UNLEARNKIT_REQUIRE_BROWSER"),
    reason="chromium is not installed (apt-get install chromium; scripts/test.sh does it)",
)
def test_html_loads_in_headless_chromium(report, tmp_path):
    """Every figure decodes (the page's script counts them on load), no console message, no error;
    a copy with a corrupted image shows the check would catch it."""
    _, res = report
    dom, log = _dump_dom(_chromium(), res.html, tmp_path / "profile")
    console = [ln for ln in log.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    root = re.search(r"<html[^>]*>", dom).group(0)  # the page's script marks its root element
    assert f'data-figures-loaded="{N_FIGURES}/{N_FIGURES}"' in root and "data-report-errors" not in root
    for d, figs in EXPECTED.items():
        for f in figs:
            assert f'<figure id="{d}-{f}">' in dom
    broken = tmp_path / "broken.html"
    broken.write_text(res.html.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    dom, _ = _dump_dom(_chromium(), broken, tmp_path / "profile2")
    root = re.search(r"<html[^>]*>", dom).group(0)
    assert f'data-figures-loaded="{N_FIGURES - 1}/{N_FIGURES}"' in root and "data-report-errors" in root


def test_single_suite_folder_and_cli(tmp_path, capsys):
    from unlearnkit.cli import main

    write(tmp_path / "run" / "results.json", t2i_suite())
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--title", "T2I"]) == 0
    assert "1 figure(s)" in capsys.readouterr().out
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# T2I") and "report_files/t2i-shapes-tradeoff.png" in md
    assert (tmp_path / "out" / "report_files" / "t2i-shapes-tradeoff.png").is_file()
    assert (tmp_path / "out" / "report.html").is_file() and not (tmp_path / "run" / "report.md").exists()


def test_composite_order_and_build_report(tmp_path):
    """A composite run (bench quick) lists its parts in composite.json: the report follows that order."""
    from unlearnkit.report import build_report

    write(tmp_path / "a-llm" / "results.json", muse_suite())
    write(tmp_path / "b-t2i" / "results.json", t2i_suite())
    parts = {"t2i": {"suite": "t2i-shapes", "folder": "b-t2i"}, "llm": {"suite": "x", "folder": "a-llm"}}
    write(tmp_path / "composite.json", {"suite": "quick", "kind": "composite", "parts": parts})
    out = build_report(tmp_path)
    assert out == {"markdown": tmp_path / "report.md", "html": tmp_path / "report.html"}
    md = out["markdown"].read_text()
    assert md.index("## t2i-shapes (b-t2i)") < md.index("## muse-synthetic (a-llm)")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("", "no suite results.json"),
        ('{"rows": [', "is not valid JSON"),
        ('{"suite": "x", "rows": []}', "has no 'rows'"),
        ('{"suite": "x", "rows": [{"method": "ga"}]}', "has no 'metrics'"),
        ('{"metrics": {"UA": 1.0}}', "has no 'rows'"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, content, message):
    from unlearnkit.cli import main

    folder = tmp_path / "runs"
    if content is not None:
        folder.mkdir()
        if content:
            (folder / "suite").mkdir()
            (folder / "suite" / "results.json").write_text(content)
    with pytest.raises(UnlearnkitError, match=re.escape(message)):
        collect(folder)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_the_protocol_named_in_results_json_wins_over_the_metric_keys(tmp_path):
    """results.json names its protocol: the report reads it (axes, caption, description) instead of guessing
    from which metrics exist; a file without the name falls back to the guess."""
    old = vision_suite()
    assert SuiteResult(tmp_path, "x", old).protocol == "classification"  # guessed from UA
    named = vision_suite() | {"protocol": "erasure", "keys": ["UA", "utility"]}
    for r in named["rows"]:
        r["metrics"]["utility"] = 100.0 - r["metrics"]["UA"]
    write(tmp_path / "s" / "results.json", named)
    (suite,) = collect(tmp_path)
    assert suite.protocol == "erasure"
    res = make_report(tmp_path, tmp_path / "out")
    md = res.markdown.read_text()
    assert "text-to-image concept erasure" in md and "image classification" not in md
    assert "UA = % of samples of the erased concept" in md  # the erasure protocol's caption
    if res.figures:  # with matplotlib: the erasure trade-off (UA vs utility), not the classifier's UA vs TA
        assert any(p.name.endswith("-tradeoff.png") for p in res.figures)
        assert "Concept erasure on vision-digits" in md and "Forgetting vs utility" not in md
