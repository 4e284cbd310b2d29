"""The package's layout: no two modules import each other, directly or through others (imports
inside functions included); the profile functions are imported at the top, never inside a
function; the GPU check reads in parts."""
import ast
from pathlib import Path

import pytest

import offbyone.profiles as profiles

LIB = Path(profiles.__file__).resolve().parent
PROFILE_NAMES = {"load_profile", "run_config", "run_dir", "runs", "repo_root", "run_name",
                 "rehearsal_of", "profile_path", "profile_files", "retrofit_source",
                 "data_params", "vocab_guess", "model_params"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in LIB.rglob("*.py"):
        parts = list(p.relative_to(LIB.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict) -> list[tuple[str, ast.ImportFrom]]:
    """(module imported, node) for every import of a package module in `path`: `from .x import
    y` imports x.y where that is a module, else x. A parent package is imported implicitly
    before any child, so importing from it does not count as importing the child."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        elif node.module and node.module.split(".")[0] == "offbyone":
            target = node.module
        else:
            continue
        subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
        if len(subs) < len(node.names) and target in modules:
            subs.append(target)
        out += [(s, node) for s in subs if s != name]
    return out


def _cycles(edges: dict[str, set]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_two_modules_import_each_other():
    mods = _modules()
    edges = {m: {t for t, _ in _imports(m, p, mods)} for m, p in mods.items()}
    assert _cycles(edges) == []
    # the checker finds a circle when there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_profile_functions_are_imported_at_the_top():
    mods = _modules()
    inside = []
    for m, p in mods.items():
        for target, node in _imports(m, p, mods):
            if target == "offbyone.profiles" and node.col_offset > 0:     # inside a body
                inside.append(f"{p.relative_to(LIB.parent)}:{node.lineno}")
            if target == "offbyone.pipeline" and {a.name for a in node.names} & PROFILE_NAMES:
                inside.append(f"{p.relative_to(LIB.parent)}:{node.lineno} (from pipeline)")
    assert inside == []


@pytest.mark.parametrize("path", sorted((LIB / "gpu_check").glob("*.py")), ids=lambda p: p.name)
def test_the_gpu_check_reads_in_parts(path):
    assert len(path.read_text().splitlines()) <= 400
