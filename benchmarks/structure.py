"""Measure the code structure of a fedfm source tree: before/after numbers for a refactor.

    python benchmarks/structure.py --src DIR/src/fedfm --out FILE.json

Standard library only; nothing in the tree is imported or run (it is read with ``ast``).
It prints a short markdown summary and writes the full numbers as JSON:

1. ``job``: the dataclass fields of ``Job`` (``runtime/job.py``, or wherever ``class Job`` is).
2. ``functions``: the longest functions and methods (``def`` line to last line) and how many
   exceed 50 and 80 lines.
3. ``imports``: the intra-package graph of module-level imports (not those inside functions
   or ``if TYPE_CHECKING:``), its cycles (strongly connected components of more than one
   module, and the same for top-level packages), upward imports against the layers below,
   and the imports of ``fedfm.privacy`` from ``fedfm.strategies``.
4. ``repeats``: blocks of six or more consecutive normalised lines (stripped; blank and
   comment-only lines skipped) that stand more than once in the tree; the overlapping windows
   of one repeat count as one block. ``repeats_no_imports`` is the same with import lines
   also skipped (as the ``duplicates`` tool does).
5. ``size``: modules and lines, in all and per top-level package.

Generated files (``*_pb2.py``, ``*_pb2_grpc.py``) are in the import graph and the totals but
not in the function lengths or the repeats.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# lowest first; a module's layer is that of its top-level name (fedfm.<name>...): shared
# basics; mechanisms (models, data, privacy, compression, reports); strategies; the update
# chain (its stages wrap the mechanisms and reduce what strategies step on); the client
# half, synthetic data and the optional features; the runtime; the entry points.
# ``pipeline`` is the update chain's name before fedfm's architecture step (issue 19).
LAYERS: list[list[str]] = [
    ["errors", "registry", "io", "filehash", "config", "config_table", "run_files"],
    [
        "models",
        "data",
        "datasets",
        "resources",
        "compression",
        "privacy",
        "tasks",
        "attacks",
        "analysis",
        "report",
        "generation",
        "dpo",
        "transfer",
    ],
    ["strategies"],
    ["update", "pipeline"],
    ["client", "synthetic", "features"],
    ["runtime"],
    ["experiments", "cli"],
]
GENERATED = ("*_pb2.py", "*_pb2_grpc.py")
WINDOW = 6  # lines in a repeated block, at the least
LONG = (50, 80)  # function lengths counted above
TOP = 10  # longest functions listed


@dataclass
class Module:
    name: str  # fedfm.runtime.job
    path: Path
    rel: str  # runtime/job.py
    source: str
    tree: ast.Module
    generated: bool
    is_package: bool  # an __init__.py

    @property
    def top(self) -> str:
        """The top-level name under the package: 'runtime' for fedfm.runtime.job."""
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else ""


@dataclass
class Tree:
    root: Path
    package: str
    modules: dict[str, Module] = field(default_factory=dict)
    unparsable: list[str] = field(default_factory=list)  # files with a syntax error


def load_tree(src: Path) -> Tree:
    package = src.name
    tree = Tree(root=src, package=package)
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        parts = [package, *rel.with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        source = path.read_text(encoding="utf-8")
        try:
            parsed = ast.parse(source, filename=str(path))
        except SyntaxError as err:  # a file mid-edit: named in the output, measured as empty
            tree.unparsable.append(f"{rel.as_posix()}:{err.lineno}: {err.msg}")
            parsed = ast.Module(body=[], type_ignores=[])
        name = ".".join(parts)
        tree.modules[name] = Module(
            name=name,
            path=path,
            rel=rel.as_posix(),
            source=source,
            tree=parsed,
            generated=any(fnmatch.fnmatch(path.name, g) for g in GENERATED),
            is_package=is_package,
        )
    return tree


# ---------------------------------------------------------------- 1. Job's fields


def _dataclass_fields(cls: ast.ClassDef) -> list[str]:
    names = []
    for stmt in cls.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        annotation = ast.unparse(stmt.annotation)
        if "ClassVar" in annotation:
            continue
        names.append(stmt.target.id)
    return names


def _is_dataclass(cls: ast.ClassDef) -> bool:
    for dec in cls.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if ast.unparse(target).split(".")[-1] == "dataclass":
            return True
    return False


def job_fields(tree: Tree) -> dict[str, Any]:
    classes: dict[str, list[tuple[Module, ast.ClassDef]]] = defaultdict(list)
    for module in tree.modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ClassDef):
                classes[node.name].append((module, node))
    candidates = classes.get("Job", [])
    if not candidates:
        return {"found": False}
    preferred = [c for c in candidates if c[0].rel == "runtime/job.py"]
    module, cls = (preferred or candidates)[0]
    own = _dataclass_fields(cls)
    inherited: list[str] = []
    for base in cls.bases:  # dataclass bases defined in the tree add their fields
        name = ast.unparse(base).split(".")[-1]
        for _, base_cls in classes.get(name, [])[:1]:
            if _is_dataclass(base_cls):
                inherited += [f for f in _dataclass_fields(base_cls) if f not in own]
    return {
        "found": True,
        "file": module.rel,
        "line": cls.lineno,
        "dataclass": _is_dataclass(cls),
        "count": len(own) + len(inherited),
        "fields": inherited + own,
        "other_definitions": [m.rel for m, _ in candidates if (m, _) != (module, cls)],
    }


# ---------------------------------------------------------------- 2. function lengths


def functions(tree: Tree) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def visit(node: ast.AST, prefix: str, module: Module) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                qualname = f"{prefix}{child.name}"
                end = child.end_lineno or child.lineno
                found.append(
                    {
                        "lines": end - child.lineno + 1,
                        "name": qualname,
                        "file": module.rel,
                        "line": child.lineno,
                    }
                )
                visit(child, f"{qualname}.", module)
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", module)
            else:
                visit(child, prefix, module)

    for module in tree.modules.values():
        if not module.generated:
            visit(module.tree, "", module)
    found.sort(key=lambda f: (-f["lines"], f["file"], f["line"]))
    lengths = [f["lines"] for f in found]
    return {
        "count": len(found),
        "total_lines": sum(lengths),
        "mean_lines": round(sum(lengths) / len(lengths), 2) if lengths else 0,
        **{f"over_{n}": sum(1 for x in lengths if x > n) for n in LONG},
        "longest": found[:TOP],
        "all_over_50": [f for f in found if f["lines"] > LONG[0]],
    }


# ---------------------------------------------------------------- 3. imports


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _import_nodes(body: list[ast.stmt], *, lazy: bool) -> list[tuple[ast.stmt, bool]]:
    """(import statement, is it lazy) for the statements in ``body``.

    Module-level means run when the module is imported: inside ``if``/``try``/``with`` and
    class bodies too, but not in functions (lazy) nor under ``if TYPE_CHECKING:`` (left out).
    """
    out: list[tuple[ast.stmt, bool]] = []
    for stmt in body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            out.append((stmt, lazy))
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            out += _import_nodes(stmt.body, lazy=True)
        elif isinstance(stmt, ast.If) and _is_type_checking(stmt.test):
            out += _import_nodes(stmt.orelse, lazy=lazy)
        else:
            for name in ("body", "orelse", "finalbody"):
                out += _import_nodes(getattr(stmt, name, []) or [], lazy=lazy)
            for handler in getattr(stmt, "handlers", []) or []:
                out += _import_nodes(handler.body, lazy=lazy)
            for case in getattr(stmt, "cases", []) or []:
                out += _import_nodes(case.body, lazy=lazy)
    return out


def _resolve(tree: Tree, name: str) -> str | None:
    """The module ``name`` names, or the nearest enclosing one in the tree."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in tree.modules:
            return candidate
        parts.pop()
    return None


def _targets(tree: Tree, module: Module, stmt: ast.stmt) -> list[str]:
    names: list[str] = []
    if isinstance(stmt, ast.Import):
        names = [alias.name for alias in stmt.names]
    elif isinstance(stmt, ast.ImportFrom):
        if stmt.level:
            base = module.name.split(".")
            if not module.is_package:
                base = base[:-1]
            base = base[: len(base) - (stmt.level - 1)]
            prefix = ".".join(base + ([stmt.module] if stmt.module else []))
        else:
            prefix = stmt.module or ""
        names = [f"{prefix}.{alias.name}" for alias in stmt.names]
    out = []
    for name in names:
        if name != tree.package and not name.startswith(tree.package + "."):
            continue
        target = _resolve(tree, name)
        if target and target != module.name and target not in out:
            out.append(target)
    return out


def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), those of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return sorted(result, key=lambda c: (-len(c), c))


def _layer_of(top: str) -> int | None:
    for level, names in enumerate(LAYERS):
        if top in names:
            return level
    return None


def imports(tree: Tree) -> dict[str, Any]:
    graph: dict[str, set[str]] = {name: set() for name in tree.modules}
    lazy_edges: set[tuple[str, str]] = set()
    for module in tree.modules.values():
        for stmt, lazy in _import_nodes(module.tree.body, lazy=False):
            for target in _targets(tree, module, stmt):
                if lazy:
                    lazy_edges.add((module.name, target))
                else:
                    graph[module.name].add(target)
    edges = sorted((a, b) for a, targets in graph.items() for b in targets)
    top = {name: m.top for name, m in tree.modules.items()}
    packages: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        if top[a] and top[b] and top[a] != top[b]:
            packages[top[a]].add(top[b])
        packages.setdefault(top[a] or tree.package, set())
    upward = []
    for a, b in edges:
        la, lb = _layer_of(top[a]), _layer_of(top[b])
        if la is not None and lb is not None and la < lb:
            upward.append({"from": a, "to": b, "layers": [la, lb]})
    unlayered = sorted({t for t in top.values() if t and _layer_of(t) is None})

    def strategies_to_privacy(pairs: list[tuple[str, str]]) -> list[list[str]]:
        return [[a, b] for a, b in pairs if top[a] == "strategies" and top[b] == "privacy"]

    s2p = strategies_to_privacy(edges)
    s2p_lazy = strategies_to_privacy(sorted(lazy_edges - set(edges)))
    return {
        "modules": len(graph),
        "edges": len(edges),
        "lazy_edges": len(lazy_edges - set(edges)),
        "cycles": _sccs(graph),
        "package_graph": {k: sorted(v) for k, v in sorted(packages.items())},
        "package_cycles": _sccs(packages),
        "layers": LAYERS,
        "unlayered": unlayered,
        "upward": upward,
        "strategies_to_privacy": {"count": len(s2p), "imports": s2p},
        "strategies_to_privacy_lazy": {"count": len(s2p_lazy), "imports": s2p_lazy},
        "graph": {k: sorted(v) for k, v in sorted(graph.items())},
    }


# ---------------------------------------------------------------- 4. repeated blocks


def _normalised(module: Module, *, skip_imports: bool) -> list[tuple[str, int]]:
    """(stripped line, line number) for every line that is not blank or a comment."""
    skipped: set[int] = set()
    if skip_imports:  # every line of an import statement, parenthesised ones too
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                skipped.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    out = []
    for number, raw in enumerate(module.source.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#") and number not in skipped:
            out.append((line, number))
    return out


def repeats(tree: Tree, *, skip_imports: bool = False) -> dict[str, Any]:
    files = {m.rel: _normalised(m, skip_imports=skip_imports) for m in _measured(tree)}
    window_hash: dict[tuple[str, int], str] = {}
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for rel, lines in files.items():
        for i in range(len(lines) - WINDOW + 1):
            text = "\n".join(line for line, _ in lines[i : i + WINDOW])
            digest = hashlib.sha1(text.encode()).hexdigest()
            window_hash[(rel, i)] = digest
            groups[digest].append((rel, i))
    repeated = {h: occ for h, occ in groups.items() if len(occ) > 1}

    def shifted(occ: list[tuple[str, int]], by: int) -> str | None:
        """The one repeated window whose places are exactly ``occ`` shifted by ``by``."""
        places = [(rel, i + by) for rel, i in occ]
        hashes = {window_hash.get(p) for p in places}
        if len(hashes) != 1:
            return None
        digest = hashes.pop()
        if digest is None or digest not in repeated:
            return None
        return digest if sorted(repeated[digest]) == sorted(places) else None

    blocks = []
    covered: set[tuple[str, int]] = set()
    for digest, occ in repeated.items():
        for rel, i in occ:
            covered.update((rel, j) for j in range(i, i + WINDOW))
        if shifted(occ, -1) is not None:
            continue  # the continuation of a block that starts earlier
        length, current, seen = WINDOW, digest, {digest}
        while (following := shifted(repeated[current], 1)) is not None and following not in seen:
            seen.add(following)
            current, length = following, length + 1
        places = []
        for rel, i in sorted(occ):
            lines = files[rel]
            places.append(f"{rel}:{lines[i][1]}-{lines[i + length - 1][1]}")
        first_rel, first_i = sorted(occ)[0]
        blocks.append(
            {
                "lines": length,
                "occurrences": len(occ),
                "places": places,
                "first_line": files[first_rel][first_i][0][:80],
            }
        )
    blocks.sort(key=lambda b: (-b["lines"] * b["occurrences"], b["places"]))
    return {
        "window": WINDOW,
        "skip_imports": skip_imports,
        "blocks": len(blocks),
        "occurrences": sum(b["occurrences"] for b in blocks),
        "repeated_lines": len(covered),  # normalised lines inside some repeated window
        "normalised_lines": sum(len(v) for v in files.values()),
        "largest": blocks[:15],
        "all": blocks,
    }


def _measured(tree: Tree) -> list[Module]:
    return [m for m in tree.modules.values() if not m.generated]


# ---------------------------------------------------------------- 5. size


def size(tree: Tree) -> dict[str, Any]:
    per_package: dict[str, dict[str, int]] = defaultdict(lambda: {"modules": 0, "lines": 0})
    total = code = generated_lines = 0
    for module in tree.modules.values():
        lines = module.source.splitlines()
        total += len(lines)
        if module.generated:
            generated_lines += len(lines)
            continue
        code += sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))
        entry = per_package[module.top or "(package)"]
        entry["modules"] += 1
        entry["lines"] += len(lines)
    generated = [m.rel for m in tree.modules.values() if m.generated]
    return {
        "modules": len(tree.modules),
        "lines": total,
        "modules_measured": len(tree.modules) - len(generated),
        "lines_measured": total - generated_lines,
        "code_lines_measured": code,  # non-blank, non-comment
        "generated": generated,
        "per_package": dict(sorted(per_package.items())),
    }


# ---------------------------------------------------------------- report


def measure(src: Path) -> dict[str, Any]:
    tree = load_tree(src)
    return {
        "src": str(src.resolve()),
        "unparsable": tree.unparsable,
        "job": job_fields(tree),
        "functions": functions(tree),
        "imports": imports(tree),
        "repeats": repeats(tree),
        "repeats_no_imports": repeats(tree, skip_imports=True),
        "size": size(tree),
    }


def summary(result: dict[str, Any]) -> str:
    job, fns, imp, rep = result["job"], result["functions"], result["imports"], result["repeats"]
    rep_ni, sz = result["repeats_no_imports"], result["size"]
    out = [f"## Structure of `{result['src']}`", ""]
    out.append("| measure | value |")
    out.append("|---|---|")
    job_cell = f"{job['count']} ({job['file']})" if job["found"] else "not found"
    rows = [
        ("`Job` dataclass fields", job_cell),
        ("modules / lines (all)", f"{sz['modules']} / {sz['lines']}"),
        (
            "modules / lines / code lines (without generated)",
            f"{sz['modules_measured']} / {sz['lines_measured']} / {sz['code_lines_measured']}",
        ),
        ("functions and methods", f"{fns['count']} (mean {fns['mean_lines']} lines)"),
        (f"functions > {LONG[0]} lines", fns[f"over_{LONG[0]}"]),
        (f"functions > {LONG[1]} lines", fns[f"over_{LONG[1]}"]),
        ("import edges (module-level) / lazy only", f"{imp['edges']} / {imp['lazy_edges']}"),
        ("module import cycles (SCCs > 1)", len(imp["cycles"])),
        ("package import cycles (SCCs > 1)", len(imp["package_cycles"])),
        ("upward imports", len(imp["upward"])),
        (
            "strategies → privacy imports (module-level / lazy only)",
            f"{imp['strategies_to_privacy']['count']} / "
            f"{imp['strategies_to_privacy_lazy']['count']}",
        ),
        (
            f"repeated blocks (>= {rep['window']} lines): blocks / occurrences / lines",
            f"{rep['blocks']} / {rep['occurrences']} / {rep['repeated_lines']}",
        ),
        (
            "  the same, import lines skipped",
            f"{rep_ni['blocks']} / {rep_ni['occurrences']} / {rep_ni['repeated_lines']}",
        ),
    ]
    out += [f"| {k} | {v} |" for k, v in rows]
    if result["unparsable"]:
        out += ["", f"**Not parsed (syntax errors)**: {'; '.join(result['unparsable'])}"]
    out += ["", f"Longest functions (of {fns['count']}):", ""]
    out += ["| lines | function | file |", "|---:|---|---|"]
    out += [f"| {f['lines']} | `{f['name']}` | {f['file']}:{f['line']} |" for f in fns["longest"]]
    if imp["cycles"]:
        out += ["", "Module import cycles:"]
        out += [f"- {' ↔ '.join(c)}" for c in imp["cycles"]]
    if imp["package_cycles"]:
        out += ["", "Package import cycles:"]
        out += [f"- {' ↔ '.join(c)}" for c in imp["package_cycles"]]
    if imp["upward"]:
        out += ["", "Upward imports (lower layer → higher layer):"]
        out += [
            f"- {u['from']} → {u['to']} (L{u['layers'][0]} → L{u['layers'][1]})"
            for u in imp["upward"]
        ]
    if imp["strategies_to_privacy"]["imports"] or imp["strategies_to_privacy_lazy"]["imports"]:
        out += ["", "strategies → privacy:"]
        out += [f"- {a} → {b}" for a, b in imp["strategies_to_privacy"]["imports"]]
        out += [
            f"- {a} → {b} (in a function)" for a, b in imp["strategies_to_privacy_lazy"]["imports"]
        ]
    if imp["unlayered"]:
        unlayered = ", ".join(imp["unlayered"])
        out += ["", f"Not in any layer (left out of the upward count): {unlayered}"]
    if rep["largest"]:
        out += ["", "Largest repeated blocks (lines × occurrences):"]
        out += [
            f"- {b['lines']} × {b['occurrences']}: {', '.join(b['places'])}"
            for b in rep["largest"][:8]
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="the package folder, e.g. src/fedfm")
    parser.add_argument("--out", help="write the JSON here")
    args = parser.parse_args(argv)
    src = Path(args.src)
    if not src.is_dir():
        parser.error(f"--src {src}: no such folder")
    result = measure(src)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(summary(result))
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
