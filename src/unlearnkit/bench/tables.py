"""Suite tables for the terminal that never cut a method name or a number.

The protocol's headline columns come first, the others after them; columns are packed into as many tables
as the console's width needs (each repeating the method column), so no cell is ever shortened: every
method name is whole and every number is printed in full. Long column names wrap at their underscores.
A cell is ``mean ± std`` over two or more seeds, the value alone for one seed (a spread of one value was
not measured), and the title says how many seeds there were."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from unlearnkit.bench.results import caption_of, cell, row_groups, seeds_text
from unlearnkit.registry import get_protocol

SHORT = 10  # column names up to this long are never wrapped
BEST_LOW = ("gap",)  # a column whose lowest non-oracle mean is shown in bold
ORACLE = "retrain"


def ordered_keys(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the protocol's headline columns among the suite's keys, in headline order; the other keys)."""
    keys = [str(k) for k in result.get("keys") or []]
    name = result.get("protocol")
    headline = get_protocol(name).headline if name else ()
    first = [k for k in headline if k in keys]
    return first, [k for k in keys if k not in first]


def wrap_header(key: str, width: int) -> str:
    """``key`` broken after underscores into lines of at most ``width`` (a longer part stays whole)."""
    lines: list[str] = []
    for part in key.replace("_", "_\0").split("\0"):
        if lines and len(lines[-1]) + len(part) <= width:
            lines[-1] += part
        else:
            lines.append(part)
    return "\n".join(lines)


def pack(widths: list[int], fixed: int, budget: int) -> list[list[int]]:
    """Column indices grouped into tables that fit ``budget`` characters; ``fixed`` is the width taken by
    the label columns and the table's outer border (each column adds its width plus 3)."""
    groups: list[list[int]] = []
    used = budget + 1
    for i, w in enumerate(widths):
        if used + w + 3 > budget:
            groups.append([])
            used = fixed
        groups[-1].append(i)
        used += w + 3
    if len(groups) > 1:  # as many tables, with columns spread evenly over them when they still fit
        size = -(-len(widths) // len(groups))
        even = [list(range(i, min(i + size, len(widths)))) for i in range(0, len(widths), size)]
        if len(even) == len(groups) and all(fixed + sum(widths[i] + 3 for i in g) <= budget for g in even):
            return even
    return groups


def terminal_tables(result: dict[str, Any], width: int) -> list[Table]:
    """The rich tables of a suite result (any kind) for a console ``width`` characters wide."""
    first, rest = ordered_keys(result)
    keys = first + rest
    lines = row_groups(result, keys)
    labels = ["method", "request", "forget"] if result.get("kind") == "sequential" else ["method"]
    cells = [[cell(*d[k]) if k in d else "" for k in keys] for _, d in lines]
    label_w = [max([len(h), *(len(lab[j]) for lab, _ in lines)]) for j, h in enumerate(labels)]
    # a short column name stays whole; a longer one may wrap at its underscores
    head = [
        len(k) if len(k) <= SHORT else max(len(p) for p in k.replace("_", "_\0").split("\0")) for k in keys
    ]
    widths = [max([6, head[j], *(len(r[j]) for r in cells)]) for j in range(len(keys))]
    fixed = sum(label_w) + 3 * len(labels) + 1
    groups = pack(widths[: len(first)], fixed, width)
    groups += [[len(first) + i for i in g] for g in pack(widths[len(first) :], fixed, width)]
    bold = _best(lines, keys)
    n = int(result.get("seeds") or 1)
    spread = f"mean ± std over {seeds_text(n)}" if n > 1 else "1 seed, no spread"
    tables = []
    for t, group in enumerate(groups):
        title = f"{result['suite']} — {spread}" + (f" ({t + 1}/{len(groups)})" if len(groups) > 1 else "")
        table = Table(title=title)
        for h, w in zip(labels, label_w, strict=True):
            table.add_column(h, no_wrap=True, min_width=w)
        for j in group:
            table.add_column(
                wrap_header(keys[j], widths[j]), justify="right", no_wrap=True, min_width=widths[j]
            )
        for i, (label, _) in enumerate(lines):
            row = [f"[bold green]{cells[i][j]}[/]" if (i, j) in bold else cells[i][j] for j in group]
            table.add_row(*(escape(x) for x in label), *row)
        tables.append(table)
    return tables


def _best(lines: list[tuple[list[str], dict]], keys: list[str]) -> set[tuple[int, int]]:
    """(line, column) of the lowest non-oracle mean in each :data:`BEST_LOW` column."""
    out: set[tuple[int, int]] = set()
    for j, k in enumerate(keys):
        if k not in BEST_LOW:
            continue
        cands = [(d[k][0], i) for i, (lab, d) in enumerate(lines) if lab[0] != ORACLE and k in d]
        if cands:
            best = min(cands)[0]
            out |= {(i, j) for v, i in cands if v == best}
    return out


def print_table(result: dict[str, Any], console: Console | None = None) -> None:
    """Print the suite's tables and caption on ``console`` (default: the terminal, or ``COLUMNS`` wide)."""
    console = console or Console()
    for table in terminal_tables(result, console.width):
        console.print(table)
    caption = caption_of(result)
    if caption:
        console.print(caption, highlight=False, markup=False)
