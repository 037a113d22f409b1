"""Markdown and self-contained HTML from the collected suites and their figures.

The HTML page needs no network: figures are PNG data URIs, the CSS is inline, and a Content-Security-Policy
forbids every external load. A tiny inline script records, on the root element, how many figures decoded
(``data-figures-loaded="N/M"``) and any script or image error (``data-report-errors``), so a headless browser
check can read the outcome from the DOM.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any

from unlearnkit.bench.results import fmt
from unlearnkit.registry import get_protocol
from unlearnkit.report.collect import SuiteResult
from unlearnkit.report.figures import ORACLE, Figure, stats

KIND_TEXT = {"worstcase": "random vs worst-case forget sets", "sequential": "MUSE sequential requests"}
PROTOCOL_TEXT = {
    "classification": "image classification",
    "tofu": "LLM unlearning, TOFU-style",
    "muse": "LLM unlearning, MUSE-style",
    "erasure": "text-to-image concept erasure",
}
BEST_LOW = ("gap", "gap_random", "gap_worst")  # columns whose lowest non-oracle mean is shown in bold


@dataclass
class Table:
    """A table of strings; ``bold`` holds the (row, column) cells to emphasise."""

    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class Section:
    """One suite's part of the report."""

    anchor: str
    title: str
    about: str
    caption: str
    table: Table
    figures: list[Figure]
    files: dict[str, str] = field(default_factory=dict)  # figure slug -> PNG path relative to report.md


def cell(mean: float, std: float) -> str:
    """``mean ± std`` as the tables print it."""
    return f"{fmt(mean)} ± {fmt(std)}"


def suite_table(suite: SuiteResult) -> Table:
    """Mean ± std over seeds per method (per method and request for a sequential suite)."""
    keys = suite.keys
    if suite.kind == "sequential":
        names = suite.data.get("requests") or []
        header = ["method", "request", "forget", *keys]
        rows: list[list[str]] = []
        for m in suite.methods:
            for k in sorted({r["request"] for r in suite.rows if r["method"] == m}):
                d = stats([r for r in suite.rows if r["method"] == m and r["request"] == k], keys).get(m, {})
                name = names[k - 1] if 0 < k <= len(names) else ""
                rows.append([m, str(k), str(name), *(cell(*d[x]) if x in d else "" for x in keys)])
        return Table(header, rows)
    st = stats(suite.rows, keys)
    methods = [m for m in suite.methods if m in st]
    table = Table(
        ["method", *keys], [[m, *(cell(*st[m][x]) if x in st[m] else "" for x in keys)] for m in methods]
    )
    for j, key in enumerate(keys, start=1):
        if key in BEST_LOW:
            cands = [(st[m][key][0], i) for i, m in enumerate(methods) if m != ORACLE and key in st[m]]
            if cands:
                best = min(cands)[0]
                table.bold |= {(i, j) for v, i in cands if v == best}
    return table


def _about(suite: SuiteResult) -> str:
    """One line: what was run (family, data, model, split, seeds, methods)."""
    cfg = suite.data.get("config") or {}
    parts = [KIND_TEXT.get(suite.kind) or PROTOCOL_TEXT.get(str(suite.protocol), "suite")]

    def name(x: Any) -> str | None:
        return x.get("name") if isinstance(x, dict) else (x if isinstance(x, str) else None)

    if name(cfg.get("data")):
        parts.append(f"data {name(cfg['data'])}")
    if name(cfg.get("model")):
        parts.append(f"model {name(cfg['model'])}")
    split = cfg.get("split") if isinstance(cfg.get("split"), dict) else {}
    if split.get("kind"):
        extra = split.get("forget") or split.get("concept") or split.get("classes")
        parts.append(f"split {split['kind']}" + (f" ({extra})" if extra is not None else ""))
    if suite.kind == "worstcase" and suite.data.get("size") is not None:
        parts.append(
            f"forget-set size {suite.data['size']} ({suite.data.get('granularity', 'example')}-wise)"
        )
    if suite.kind == "sequential":
        parts.append(f"mode {suite.data.get('mode')}, {len(suite.data.get('requests') or [])} requests")
    parts.append(f"{suite.seeds} seed{'s' if suite.seeds != 1 else ''}")
    parts.append(f"methods: {', '.join(suite.methods)}")
    if suite.data.get("tune"):  # bench --tune: the rows carry the options each method ran with
        parts.append("each method's lr and epochs chosen per seed by `unlearnkit tune`, without the oracle")
    return " · ".join(str(p) for p in parts)


def build_sections(suites: list[SuiteResult], figures: list[list[Figure]]) -> list[Section]:
    """One section per suite, anchors made unique."""
    sections: list[Section] = []
    used: set[str] = set()
    for suite, figs in zip(suites, figures, strict=True):
        anchor = slug(suite.label)
        base, n = anchor, 2
        while anchor in used:
            anchor, n = f"{base}-{n}", n + 1
        used.add(anchor)
        title = suite.name if suite.label in (suite.name, ".") else f"{suite.name} ({suite.label})"
        caption = str(suite.data.get("caption") or "")
        if not caption and suite.protocol and suite.kind == "plain":
            caption = get_protocol(suite.protocol).caption
        sections.append(Section(anchor, title, _about(suite), caption, suite_table(suite), figs))
    return sections


def slug(text: str) -> str:
    """A file- and anchor-safe name."""
    out = "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower()).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out or "suite"


# -- Markdown -----------------------------------------------------------------------------------------------
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table, bold cells marked with ``**``."""
    lines = ["| " + " | ".join(_md_escape(h) for h in table.header) + " |", "|---" * len(table.header) + "|"]
    for i, row in enumerate(table.rows):
        cells = [f"**{c}**" if (i, j) in table.bold and c else _md_escape(c) for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(title: str, sections: list[Section], notes: list[str]) -> str:
    """The whole report as Markdown; figures link to ``Section.files``."""
    out = [f"# {title}", "", INTRO, ""]
    if len(sections) > 1:
        out += [f"- [{s.title}](#{s.anchor})" for s in sections] + [""]
    k = 0
    for s in sections:
        out += [f'<a id="{s.anchor}"></a>', "", f"## {s.title}", "", f"*{s.about}*", ""]
        if s.caption:
            out += [s.caption, ""]
        out += [markdown_table(s.table), ""]
        for f in s.figures:
            k += 1
            out += [f"![{f.title}]({s.files[f.slug]})", "", f"**Figure {k}.** {f.caption}", ""]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


INTRO = (
    "Tables show each metric's mean ± std over seeds (bold: the smallest gap to the oracle). "
    "`retrain` is the oracle (the model retrained without the forget set) and `original` the model before "
    "unlearning, where a suite has them. Each figure's caption says what is plotted and which direction is "
    "better."
)

# -- HTML ---------------------------------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;color:#1f2328;
background:#fff;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.7em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.35em;margin-top:2.2em;border-bottom:1px solid #d0d7de;padding-bottom:.25em}
p.about{color:#57606a;font-size:.92em;margin-top:-.4em}
p.caption{font-size:.92em}
nav ul{columns:2;font-size:.95em}
.tablewrap{overflow-x:auto;margin:12px 0 20px}
table{border-collapse:collapse;font-size:.86em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:4px 9px;text-align:right;white-space:nowrap}
th{background:#f6f8fa;white-space:normal;vertical-align:bottom}
td:first-child,th:first-child{text-align:left;font-weight:600}
tr:nth-child(even) td{background:#fafbfc}
tr.oracle td{background:#eef6ee}
td.best{font-weight:700;color:#116329}
figure{margin:18px 0 28px;padding:10px;border:1px solid #e4e7ea;border-radius:6px}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{font-size:.9em;color:#333;margin-top:8px}
.notes{font-size:.9em;color:#57606a}
"""

# Records on <html> how many figures decoded and any error, for a headless-browser check.
SCRIPT = """
(function(){var root=document.documentElement,errors=0;
window.addEventListener("error",function(){errors+=1;root.setAttribute("data-report-errors",String(errors));},true);
window.addEventListener("load",function(){var imgs=document.querySelectorAll("figure img"),ok=0;
Array.prototype.forEach.call(imgs,function(im){if(im.complete&&im.naturalWidth>0){ok+=1;}});
root.setAttribute("data-figures-loaded",ok+"/"+imgs.length);});})();
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def html_table(table: Table) -> str:
    """An HTML table (cells escaped); the oracle's row is tinted, bold cells get class ``best``."""
    e = html.escape
    # long metric names may break after an underscore, so wide tables fit the page
    head = "<tr>" + "".join(f"<th>{e(h).replace('_', '_<wbr>')}</th>" for h in table.header) + "</tr>"
    body = []
    for i, row in enumerate(table.rows):
        cls = ' class="oracle"' if row and row[0] == ORACLE else ""
        tds = "".join(
            f'<td class="best">{e(c)}</td>' if (i, j) in table.bold else f"<td>{e(c)}</td>"
            for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{tds}</tr>")
    return f'<div class="tablewrap"><table><thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div>'


def html_page(title: str, sections: list[Section], notes: list[str]) -> str:
    """A single self-contained HTML document: inline CSS, PNG data URIs, no external reference."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head>",
        f"<body><main><h1>{e(title)}</h1><p>{_inline_code(INTRO)}</p>",
    ]
    if len(sections) > 1:
        items = "".join(f'<li><a href="#{e(s.anchor)}">{e(s.title)}</a></li>' for s in sections)
        parts.append(f"<nav><ul>{items}</ul></nav>")
    k = 0
    for s in sections:
        parts.append(f'<section id="{e(s.anchor)}"><h2>{e(s.title)}</h2><p class="about">{e(s.about)}</p>')
        if s.caption:
            parts.append(f'<p class="caption">{e(s.caption)}</p>')
        parts.append(html_table(s.table))
        for f in s.figures:
            k += 1
            data = base64.b64encode(f.png).decode("ascii")
            parts.append(
                f'<figure id="{e(s.anchor)}-{e(f.slug)}"><img alt="{e(f.title)}" '
                f'src="data:image/png;base64,{data}"><figcaption><b>Figure {k}.</b> '
                f"{e(f.caption)}</figcaption></figure>"
            )
        parts.append("</section>")
    if notes:
        parts.append(
            '<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>"
        )
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _inline_code(text: str) -> str:
    """Escape ``text`` and turn Markdown backticks into <code>."""
    out = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(out))
