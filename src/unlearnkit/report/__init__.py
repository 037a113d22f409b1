"""``unlearnkit report DIR``: tables and figures across suite results, as Markdown and as one HTML page.

    from unlearnkit.report import make_report
    out = make_report("runs/")          # runs/report.md, runs/report_files/*.png, runs/report.html

``DIR`` holds suite output folders (``unlearnkit bench SUITE --out DIR/SUITE``) or is one. Per suite the
report has a mean ± std table and the figures its data supports (see :mod:`unlearnkit.report.figures`):
forgetting vs utility, gap to the oracle, random vs worst-case forget sets, relearning before/after, MUSE
requests over time and training curves (from ``curves/*.json`` when present). Every file is written
atomically; the HTML page is self-contained (no network).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unlearnkit.io import write_bytes, write_text
from unlearnkit.report import render
from unlearnkit.report.collect import SuiteResult, collect
from unlearnkit.report.figures import suite_figures

__all__ = ["ReportFiles", "SuiteResult", "build_report", "collect", "make_report"]


@dataclass
class ReportFiles:
    """What :func:`make_report` wrote."""

    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    suites: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def make_report(src: str | Path, out: str | Path | None = None, title: str | None = None) -> ReportFiles:
    """Write ``report.md`` (figures in ``report_files/``) and a self-contained ``report.html`` into ``out``
    (default: ``src``) from every suite result under ``src``; raises UnlearnkitError on bad inputs."""
    notes: list[str] = []
    suites = collect(src, notes)
    root = Path(src) if Path(src).is_dir() else Path(src).parent
    out = Path(out) if out is not None else root
    title = title or f"unlearnkit report: {root.resolve().name}"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        figures: list[list] = [[] for _ in suites]
        notes.append("no figures: matplotlib is not installed (pip install 'unlearnkit[plots]')")
    else:
        figures = [suite_figures(s) for s in suites]
    sections = render.build_sections(suites, figures)
    written: list[Path] = []
    for s in sections:
        for f in s.figures:
            rel = f"report_files/{s.anchor}-{f.slug}.png"
            path = out / rel
            write_bytes(path, f.png)
            s.files[f.slug] = rel
            written.append(path)
    md, page = out / "report.md", out / "report.html"
    write_text(md, render.markdown(title, sections, notes))
    write_text(page, render.html_page(title, sections, notes))
    return ReportFiles(md, page, written, [s.title for s in sections], notes)


def build_report(src: str | Path, out: str | Path | None = None, title: str | None = None) -> dict[str, Path]:
    """:func:`make_report`, answering ``{"markdown": path, "html": path}`` (what composite suites record)."""
    res = make_report(src, out, title)
    return {"markdown": res.markdown, "html": res.html}
