"""The package's layers, checked by parsing every module (no imports executed).

``kernels`` imports nothing of ours; ``runtime`` only ``kernels``; ``search`` and ``heads`` sit on
``runtime`` and ``kernels``; ``bench`` (benchmarks, plots, synthetic models) on the library; ``cli`` on
top. Every import counts: module level, inside functions, ``importlib.import_module("accel...")`` and
``__import__``. No two modules may import each other, directly or through others.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "runtime", "search", "heads", "bench", "cli")
ALLOWED = {
    "kernels": set(),
    "runtime": {"kernels"},
    "search": {"runtime", "kernels"},
    "heads": {"runtime", "kernels"},
    "bench": {"runtime", "kernels", "search", "heads"},
    "cli": {"runtime", "kernels", "search", "heads", "bench"},
}


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["accel", *parts])


def _resolve(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(root: Path) -> dict[str, set[str]]:
    """module -> the accel modules it imports (``from x import y`` counts ``x.y`` when that is a module)."""
    files = {_module_name(root, p): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                fn = node.func
                fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if fname in ("import_module", "__import__"):
                    targets = [node.args[0].value]
            for t in targets:
                if t.startswith("accel."):
                    # keep the longest prefix that is one of our modules
                    parts = t.split(".")
                    while parts and ".".join(parts) not in files:
                        parts.pop()
                    if parts and ".".join(parts) != mod:
                        deps.add(".".join(parts))
        graph[mod] = deps
    return graph


def layer_violations(root: Path) -> list[str]:
    out = []
    for mod, deps in imports_of(root).items():
        pkg = mod.split(".")[1]
        for d in sorted(deps):
            dpkg = d.split(".")[1]
            if dpkg != pkg and dpkg not in ALLOWED[pkg]:
                out.append(f"{mod} imports {d}: {pkg}/ may import only {sorted(ALLOWED[pkg]) or 'nothing of ours'}")
    return out


def import_cycles(root: Path) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), package __init__s excluded:
    a package re-exporting its own submodules is not a loop between modules."""
    graph = {m: {d for d in ds if not _is_init(root, d)} for m, ds in imports_of(root).items()
             if not _is_init(root, m)}
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


def _is_init(root: Path, mod: str) -> bool:
    return (root / Path(*mod.split(".")[1:]) / "__init__.py").is_file()


def test_no_import_runs_against_the_layers():
    assert layer_violations(ROOT) == []


def test_no_import_loops():
    assert import_cycles(ROOT) == []


def _copy_tree(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    return tmp_path


def test_checker_catches_a_planted_upward_import(tmp_path):
    root = _copy_tree(tmp_path)
    f = root / "kernels" / "patterns.py"
    f.write_text(f.read_text() + "\n\ndef _planted():\n    from ..runtime import errors  # noqa\n")
    assert any("accel.kernels.patterns imports accel.runtime" in v for v in layer_violations(root))
    g = root / "runtime" / "sampling.py"
    g.write_text(g.read_text() + "\nimport importlib\n_m = importlib.import_module('accel.heads.train')\n")
    assert any("accel.runtime.sampling imports accel.heads.train" in v for v in layer_violations(root))


def test_checker_catches_a_planted_loop(tmp_path):
    root = _copy_tree(tmp_path)
    a, b = root / "runtime" / "sampling.py", root / "runtime" / "errors.py"
    a.write_text(a.read_text() + "\nfrom . import errors  # noqa\n")
    b.write_text(b.read_text() + "\n\ndef _planted():\n    from .sampling import sample  # noqa\n")
    assert ["accel.runtime.errors", "accel.runtime.sampling"] in import_cycles(root)
