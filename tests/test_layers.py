"""The architecture, checked: packages import only from the layers below them (imports inside functions
included), imports inside functions are kept for heavy optional libraries only, no code outside
``families/`` tests a family's name, and no function is longer than 100 lines.

Layers, bottom to top (README "Layout"): a module may import from its own layer and the layers below."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "unlearnkit"

LAYERS: list[tuple[str, ...]] = [
    ("errors", "paths", "version", "config", "registry", "io", "distributed", "presets"),
    ("data",),
    ("models",),
    ("engine",),
    ("families",),
    ("metrics",),
    ("attacks",),
    ("methods",),
    ("protocols",),
    ("experiment",),
    ("runs",),
    ("selection", "tuning", "tuning_store"),
    ("bench",),
    ("report",),
    ("api_args", "calibration"),
    ("api",),
    ("cli", "__main__"),
]

# Third-party libraries that stay lazy (imported inside the functions that need them): heavy or optional
# (extras), so `import unlearnkit` and the CLI start fast and a missing extra fails only where it is used.
LAZY = {
    "transformers", "diffusers", "datasets", "peft", "tokenizers", "rouge_score", "matplotlib", "PIL",
    "torchvision", "timm", "tensorboard", "wandb", "huggingface_hub", "deepspeed", "accelerate", "nudenet",
    "onnxruntime", "pyarrow", "sklearn", "scipy", "yaml", "rich", "tqdm", "torch", "safetensors", "numpy",
    "lm_eval",
}  # fmt: skip
FAMILY_NAMES = {"vision", "text", "diffusion"}


def _modules() -> list[tuple[str, Path, ast.Module]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        out.append((name, path, ast.parse(path.read_text(), str(path))))
    return out


def layer(name: str) -> int | None:
    """The layer of a module given relative to the package (``experiment.cache``); None for the root."""
    best = None
    for i, members in enumerate(LAYERS):
        for m in members:
            if (name == m or name.startswith(m + ".")) and (best is None or len(m) > best[1]):
                best = (i, len(m))
    return None if best is None else best[0]


def _targets(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module == "unlearnkit":
            return [f"unlearnkit.{a.name}" for a in node.names]
        return [node.module]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return []


def _inner_imports(tree: ast.Module):
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    yield node


def test_every_module_has_a_layer():
    missing = [n for n, _, _ in _modules() if n and layer(n) is None]
    assert not missing, f"add these modules to a layer in LAYERS (and the README): {missing}"


def test_no_import_reaches_a_higher_layer():
    bad = []
    for name, path, tree in _modules():
        mine = layer(name)
        for node in ast.walk(tree):
            for target in _targets(node):
                if target.startswith("unlearnkit."):
                    theirs = layer(target.removeprefix("unlearnkit."))
                    if mine is not None and theirs is not None and theirs > mine:
                        bad.append(f"{path.relative_to(SRC)}:{node.lineno} imports {target}")
    assert not bad, "imports that go up the layers:\n" + "\n".join(bad)


def test_imports_inside_functions_are_only_lazy_libraries():
    bad = []
    for name, path, tree in _modules():
        if not name:  # the package root imports its API lazily, so `import unlearnkit` stays fast
            continue
        for node in _inner_imports(tree):
            for target in _targets(node) or ["(relative import)"]:
                if target.split(".")[0] not in LAZY:
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} imports {target} inside a function")
    assert not bad, "move these imports to the top of their module:\n" + "\n".join(bad)


def test_no_family_name_is_tested_outside_families():
    bad = []
    for name, path, tree in _modules():
        if name.startswith("families"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if FAMILY_NAMES & {c for c in consts if isinstance(c, str)}:
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not bad, "ask the family or the protocol instead of testing a family name:\n" + "\n".join(bad)


@pytest.mark.parametrize("limit", [100])
def test_no_function_is_longer_than_the_limit(limit):
    long = []
    for _, path, tree in _modules():
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                n = fn.end_lineno - fn.lineno + 1
                if n > limit:
                    long.append(f"{path.relative_to(SRC)}:{fn.lineno} {fn.name} ({n} lines)")
    assert not long, f"functions over {limit} lines:\n" + "\n".join(long)


def test_the_checks_catch_what_they_look_for(tmp_path):
    """Negative control: the helpers see an upward import inside a function and a family-name test."""
    src = "def f(cfg):\n    from unlearnkit.bench.suite import run_suite\n    return cfg == 'text'\n"
    tree = ast.parse(src)
    (node,) = list(_inner_imports(tree))
    assert _targets(node) == ["unlearnkit.bench.suite"]
    assert layer("bench.suite") > layer("data.splits") > layer("errors")
    assert any(isinstance(n, ast.Compare) for n in ast.walk(tree))


def _graph() -> dict[str, set[str]]:
    """Module -> the unlearnkit modules it imports (anywhere in it, inside functions too; ``TYPE_CHECKING``
    blocks and the package root's lazy facade excluded); ``from pkg import sub`` counts as ``pkg.sub``."""
    mods = {name for name, _, _ in _modules()}
    graph: dict[str, set[str]] = {}
    for name, _, tree in _modules():
        if not name:
            continue
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        edges = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unlearnkit"):
                base = node.module.removeprefix("unlearnkit").lstrip(".")
                for a in node.names:
                    sub = f"{base}.{a.name}" if base else a.name
                    edges.add(sub if sub in mods else base)
            elif isinstance(node, ast.Import):
                edges |= {
                    a.name.removeprefix("unlearnkit.") for a in node.names if a.name.startswith("unlearnkit.")
                }
        graph[name] = {e for e in edges if e and e != name and e in mods}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles(_graph()) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check works
