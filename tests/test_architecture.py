"""Architecture rules, checked from the source with :mod:`ast` (no project code is imported).

Checked code: the packages ``nerf/`` (NeRF engine), ``lift3d/`` (application library), ``deployments/``
(Ray Serve wrappers), ``batch_jobs/`` (Ray Data batch pipeline, beside ``deployments/``) and the module ``graph.py``
(composition root). ``tests/``, ``benchmarks/``,
``tools/``, ``examples/`` and ``loadtest/`` are not checked: they may import anything.

Rules:

1. Layers: ``nerf`` imports nothing from ``lift3d``, ``deployments``, ``batch_jobs``, ``graph``, ``ray``;
   ``lift3d`` nothing from ``deployments``, ``batch_jobs``, ``graph``, ``ray``; ``deployments`` and
   ``batch_jobs`` nothing from each other or ``graph``; ``graph`` nothing from ``batch_jobs``.
2. Rooms inside ``lift3d`` (a module's room is its first two dotted components), ranked in
   :data:`ROOM_RANKS`: a module may import its own room or a room of strictly lower rank. A module in a
   room missing from the table is itself a violation, so new rooms are ranked consciously.
3. No import cycles among the checked modules. Every import statement counts: top level, deferred
   (inside functions), under ``if TYPE_CHECKING:``, inside ``try``/``except``.
4. Sizes: at most :data:`MAX_MODULE_LINES` lines per module, :data:`MAX_DEPLOYMENT_LINES` per
   ``deployments`` or ``batch_jobs`` module (thin Ray wrappers), :data:`MAX_LIFT3D_TOP_LEVEL_MODULES` modules at the top of ``lift3d/``.
5. No ``from X import *``.
6. Rooms of the service that never import each other (:data:`SEPARATE_ROOMS`): the HTTP API
   (``lift3d.service.api``) and the worker (``lift3d.service.worker``) share only what lies below both.
7. No folder of ``lift3d/`` holds more than :data:`MAX_MODULES_PER_FOLDER` modules directly (``__init__.py`` not
   counted): a crowded folder is split into sub-packages whose names say what they hold.
8. No function in :data:`FUNCTION_LENGTH_SCOPE` is longer than :data:`MAX_FUNCTION_LINES` lines, from its ``def``
   line to its last line (decorators not counted; a nested function counts in its parent too).
9. Nothing leaks out of the service (:func:`service_leak_violations`): ``lift3d.batch`` and ``batch_jobs`` import
   nothing from ``lift3d.service``; of ``deployments``, only :data:`SERVICE_DEPLOYMENTS` import it freely, the
   others (the model deployments and their helpers) at most :data:`SHARED_SERVICE_MODULES`.

Imports made by ``importlib.import_module`` / ``__import__`` with a string are not seen.

The functions below are pure (a repository root in, violations out); the tests at the bottom prove each
check can fail by running it on small synthetic trees.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = ("nerf", "lift3d", "deployments", "batch_jobs")
ROOT_MODULES = ("graph",)

FORBIDDEN_IMPORTS: dict[str, tuple[str, ...]] = {
    "nerf": ("lift3d", "deployments", "batch_jobs", "graph", "ray"),
    "lift3d": ("deployments", "batch_jobs", "graph", "ray"),
    "deployments": ("batch_jobs", "graph"),
    "batch_jobs": ("deployments", "graph"),
    "graph": ("batch_jobs",),
}

ROOM_RANKS: dict[str, int] = {
    # The package root (lift3d/__init__.py) runs before any lift3d module, so it sits below everything:
    # every room may use it, it may import no room.
    "lift3d": -1,
    "lift3d.errors": 0,
    "lift3d.params": 1,
    "lift3d.devices": 1,
    "lift3d.progress": 1,
    "lift3d.logs": 1,
    "lift3d.costs": 1,
    "lift3d.metrics": 1,
    "lift3d.io": 2,
    "lift3d.stages": 3,
    "lift3d.presets": 4,
    "lift3d.pipeline": 5,
    "lift3d.reconstruct": 5,
    "lift3d.service": 6,
    "lift3d.batch": 7,
    "lift3d.cli": 8,
}

MAX_MODULE_LINES = 450
MAX_DEPLOYMENT_LINES = 150
MAX_LIFT3D_TOP_LEVEL_MODULES = 8

SEPARATE_ROOMS: tuple[tuple[str, str], ...] = (("lift3d.service.api", "lift3d.service.worker"),)
"""Pairs of packages neither of which imports the other (rule 6)."""
MAX_MODULES_PER_FOLDER = 15
FUNCTION_LENGTH_SCOPE: tuple[str, ...] = ("lift3d.service",)
"""Packages whose functions are held to :data:`MAX_FUNCTION_LINES` (rule 8)."""
MAX_FUNCTION_LINES = 100


# --------------------------------------------------------------------------------------------------
# Collecting modules and their imports
# --------------------------------------------------------------------------------------------------


def module_name_of(relpath: Path) -> str:
    """Dotted module name of a repository-relative ``.py`` path (a package is its ``__init__.py``)."""
    parts = list(relpath.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def collect_modules(root: Path) -> dict[str, Path]:
    """All checked modules under ``root``: dotted name -> absolute path of its file."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(root)
            if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
                continue
            modules[module_name_of(rel)] = path
    for name in ROOT_MODULES:
        path = root / f"{name}.py"
        if path.is_file():
            modules[name] = path
    return modules


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _relative_base(module_name: str, is_package: bool, level: int) -> str | None:
    """The package a relative import of ``level`` dots resolves against, or None if it leaves the tree."""
    package = module_name.split(".") if is_package else module_name.split(".")[:-1]
    if level - 1 >= len(package):
        return None
    return ".".join(package[: len(package) - (level - 1)])


def _import_statements(path: Path, module_name: str) -> Iterable[tuple[int, str, list[str]]]:
    """Every import statement in the file, anywhere: (line, absolute base module, imported names).

    ``import a.b`` gives ``("a.b", [])``; ``from a import b, c`` gives ``("a", ["b", "c"])``; relative imports
    are made absolute against the module's package. Relative imports leaving the tree are skipped.
    """
    is_package = path.name == "__init__.py"
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _relative_base(module_name, is_package, node.level)
                if base is None:
                    continue
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield node.lineno, target, [alias.name for alias in node.names]


def imports_of(path: Path, module_name: str, modules: Mapping[str, object]) -> list[tuple[int, str]]:
    """Sorted (line, target) for every import in ``path``, targets absolute and resolved to modules.

    ``import a.b.c`` -> ``a.b.c``; ``from a.b import c`` -> ``a.b.c`` if that is a module in ``modules``,
    else ``a.b``; ``from a.b import *`` -> ``a.b``. Targets outside the project (``ray``, ``torch``) are
    kept as written, so layer checks can see them.
    """
    found: list[tuple[int, str]] = []
    for lineno, base, names in _import_statements(path, module_name):
        if not names:
            found.append((lineno, base))
            continue
        for name in names:
            candidate = f"{base}.{name}"
            found.append((lineno, candidate if name != "*" and candidate in modules else base))
    return sorted(set(found))


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _all_imports(root: Path) -> list[tuple[str, Path, int, str]]:
    """(module, path, line, target) for every import of every checked module."""
    modules = collect_modules(root)
    return [
        (name, path, lineno, target)
        for name, path in sorted(modules.items())
        for lineno, target in imports_of(path, name, modules)
    ]


def _is_within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


# --------------------------------------------------------------------------------------------------
# Rule 1: layers
# --------------------------------------------------------------------------------------------------


def layer_violations(root: Path) -> list[str]:
    """``file:line imports X`` for each import that crosses a layer boundary upward (or into ``ray``)."""
    violations = []
    for name, path, lineno, target in _all_imports(root):
        forbidden = FORBIDDEN_IMPORTS.get(name.split(".")[0], ())
        if any(_is_within(target, prefix) for prefix in forbidden):
            violations.append(f"{_rel(root, path)}:{lineno} imports {target}")
    return violations


# --------------------------------------------------------------------------------------------------
# Rule 2: rooms inside lift3d
# --------------------------------------------------------------------------------------------------


def room_of(module_name: str) -> str:
    """A lift3d module's room: its first two dotted components (``lift3d.io.storage.s3`` -> ``lift3d.io``)."""
    return ".".join(module_name.split(".")[:2])


def room_violations(root: Path, ranks: Mapping[str, int] = ROOM_RANKS) -> list[str]:
    """Modules in unranked rooms, and ``file:line imports X`` for imports of a higher or same-rank room."""
    violations = []
    for name, path in sorted(collect_modules(root).items()):
        if _is_within(name, "lift3d") and room_of(name) not in ranks:
            violations.append(f"{_rel(root, path)}: unknown room {room_of(name)} (add it to ROOM_RANKS)")
    for name, path, lineno, target in _all_imports(root):
        if not _is_within(name, "lift3d") or not _is_within(target, "lift3d"):
            continue
        source_room, target_room = room_of(name), room_of(target)
        if source_room not in ranks or source_room == target_room:
            continue  # an unranked source is reported above
        where = f"{_rel(root, path)}:{lineno} imports {target}"
        if target_room not in ranks:
            violations.append(f"{where} (unknown room {target_room}: add it to ROOM_RANKS)")
        elif ranks[target_room] >= ranks[source_room]:
            violations.append(
                f"{where} ({source_room} rank {ranks[source_room]} may not import "
                f"{target_room} rank {ranks[target_room]})"
            )
    return violations


# --------------------------------------------------------------------------------------------------
# Rule 3: import cycles
# --------------------------------------------------------------------------------------------------


def import_graph(root: Path) -> dict[str, dict[str, str]]:
    """module -> {imported project module -> ``file:line`` of its first import}; no self-loops, no
    edges to the parent packages of an imported module."""
    modules = collect_modules(root)
    graph: dict[str, dict[str, str]] = {name: {} for name in modules}
    for name, path, lineno, target in _all_imports(root):
        if target in modules and target != name:
            graph[name].setdefault(target, f"{_rel(root, path)}:{lineno}")
    return graph


def strongly_connected_components(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit); each component sorted, components sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    successors = {node: sorted(set(targets)) for node, targets in graph.items()}
    for start in sorted(successors):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            recurse = False
            targets = successors.get(node, [])
            while i < len(targets):
                target = targets[i]
                i += 1
                if target not in index:
                    work.append((node, i))
                    work.append((target, 0))
                    recurse = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if recurse:
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(components)


def _shortest_cycle(graph: Mapping[str, Iterable[str]], start: str, allowed: set[str]) -> list[str]:
    """Shortest closed path ``start -> ... -> start`` inside ``allowed`` (BFS, sorted successors)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        for target in sorted(graph.get(node, ())):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return list(reversed(path)) + [start]
            if target in allowed and target not in seen:
                seen.add(target)
                parent[target] = node
                queue.append(target)
    raise AssertionError(f"{start} is on no cycle")  # cannot happen for a member of a non-trivial SCC


def cycles_in_graph(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Cycles covering every module of every non-trivial strongly connected component.

    Per component, in name order, each module not yet on a reported cycle gets the shortest cycle through
    it: ``[a, b, a]``. Self-loops are not cycles here.
    """
    graph = {node: [t for t in targets if t != node] for node, targets in graph.items()}
    cycles = []
    for component in strongly_connected_components(graph):
        if len(component) < 2:
            continue
        members, covered = set(component), set()
        for module in component:
            if module not in covered:
                cycle = _shortest_cycle(graph, module, members)
                covered.update(cycle)
                cycles.append(cycle)
    return cycles


def find_cycles(root: Path) -> list[list[str]]:
    """Import cycles among the checked modules of ``root`` (see :func:`cycles_in_graph`)."""
    return cycles_in_graph(import_graph(root))


def describe_cycles(root: Path) -> list[str]:
    """Each cycle as ``a -> b -> a`` followed by the ``file:line`` of each of its edges."""
    graph = import_graph(root)
    lines = []
    for cycle in find_cycles(root):
        lines.append(" -> ".join(cycle))
        lines.extend(f"    {graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:]))
    return lines


# --------------------------------------------------------------------------------------------------
# Rules 4 and 5: sizes, star imports
# --------------------------------------------------------------------------------------------------


def line_count(path: Path) -> int:
    """Number of lines in a text file."""
    return len(path.read_text(encoding="utf-8").splitlines())


def size_violations(root: Path) -> list[str]:
    """Modules over the line limits, and a too-crowded ``lift3d/`` top level."""
    violations = []
    for name, path in sorted(collect_modules(root).items()):
        lines = line_count(path)
        ray_wrappers = next((p for p in ("deployments", "batch_jobs") if _is_within(name, p)), None)
        if ray_wrappers:  # the stricter limit only, so each file is reported once
            if lines > MAX_DEPLOYMENT_LINES:
                violations.append(f"{_rel(root, path)}: {lines} lines (max {MAX_DEPLOYMENT_LINES} in {ray_wrappers}/)")
        elif lines > MAX_MODULE_LINES:
            violations.append(f"{_rel(root, path)}: {lines} lines (max {MAX_MODULE_LINES})")
    top_level = sorted(p.name for p in (root / "lift3d").glob("*.py") if p.name != "__init__.py")
    if len(top_level) > MAX_LIFT3D_TOP_LEVEL_MODULES:
        violations.append(
            f"lift3d/: {len(top_level)} top-level modules (max {MAX_LIFT3D_TOP_LEVEL_MODULES}): "
            + ", ".join(top_level)
        )
    return violations


def star_import_violations(root: Path) -> list[str]:
    """``file:line imports * from X`` for every star import."""
    violations = []
    for name, path in sorted(collect_modules(root).items()):
        for lineno, base, names in sorted(_import_statements(path, name)):
            if "*" in names:
                violations.append(f"{_rel(root, path)}:{lineno} imports * from {base}")
    return violations


# --------------------------------------------------------------------------------------------------
# Rules 6 to 8: separate rooms of the service, modules per folder, function lengths
# --------------------------------------------------------------------------------------------------


def separation_violations(root: Path, pairs: Iterable[tuple[str, str]] = SEPARATE_ROOMS) -> list[str]:
    """``file:line imports X`` for each import from one package of a pair into the other (either way)."""
    violations = []
    for name, path, lineno, target in _all_imports(root):
        for first, second in pairs:
            for source, other in ((first, second), (second, first)):
                if _is_within(name, source) and _is_within(target, other):
                    violations.append(f"{_rel(root, path)}:{lineno} imports {target} ({source} and {other} never "
                                      "import each other)")
    return violations


def folder_violations(root: Path, limit: int = MAX_MODULES_PER_FOLDER) -> list[str]:
    """Folders of ``lift3d/`` (the top included) with more than ``limit`` modules directly in them."""
    per_folder: dict[Path, list[str]] = {}
    for path in (root / "lift3d").rglob("*.py"):
        rel = path.relative_to(root)
        if path.name == "__init__.py" or any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
            continue
        per_folder.setdefault(rel.parent, []).append(path.name)
    return [f"{folder.as_posix()}/: {len(names)} modules (max {limit}): {', '.join(sorted(names))}"
            for folder, names in sorted(per_folder.items()) if len(names) > limit]


def function_length_violations(root: Path, scope: Iterable[str] = FUNCTION_LENGTH_SCOPE,
                               limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line name: N lines`` for each function (methods, nested and async ones too) of a module within
    ``scope`` longer than ``limit`` lines, ``def`` line to last line."""
    violations = []
    for name, path in sorted(collect_modules(root).items()):
        if not any(_is_within(name, package) for package in scope):
            continue
        for node in ast.walk(_parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    violations.append(f"{_rel(root, path)}:{node.lineno} {node.name}: {lines} lines (max {limit})")
    return sorted(violations)


# --------------------------------------------------------------------------------------------------
# Rule 9: nothing leaks out of the service
# --------------------------------------------------------------------------------------------------

SERVICE_DEPLOYMENTS: tuple[str, ...] = ("deployments.ingress", "deployments.consumer", "deployments.nerf_trainer")
"""The deployments that host the service itself: the HTTP API (``Ingress``), queue consumption (``JobConsumer``)
and the job runner (``NerfTrainer`` runs :class:`lift3d.service.worker.runner.JobRunner` on the job store)."""
SHARED_SERVICE_MODULES: tuple[str, ...] = ("lift3d.service.config",)
"""What other deployments may import from the service: its settings, plain pydantic models (Ray- and torch-free)
that ``graph.py`` builds and passes to every deployment's constructor (``QueueConfig`` for the queue glue)."""
SERVICE_FREE: tuple[str, ...] = ("lift3d.batch", "batch_jobs")
"""Packages that import nothing from ``lift3d.service``: the batch pipeline shares the library, not the service."""


def service_leak_violations(root: Path, service_deployments: Iterable[str] = SERVICE_DEPLOYMENTS,
                            shared: Iterable[str] = SHARED_SERVICE_MODULES,
                            service_free: Iterable[str] = SERVICE_FREE) -> list[str]:
    """``file:line imports X`` for each import of ``lift3d.service`` from :data:`SERVICE_FREE`, and from a
    ``deployments`` module outside ``service_deployments`` unless it is (within) one of ``shared``."""
    hosts, shared, free = tuple(service_deployments), tuple(shared), tuple(service_free)
    violations = []
    for name, path, lineno, target in _all_imports(root):
        if not _is_within(target, "lift3d.service"):
            continue
        where = f"{_rel(root, path)}:{lineno} imports {target}"
        package = next((package for package in free if _is_within(name, package)), None)
        if package is not None:
            violations.append(f"{where} ({package} imports nothing from lift3d.service)")
        elif _is_within(name, "deployments") and not any(_is_within(name, host) for host in hosts) and not any(
                _is_within(target, module) for module in shared):
            violations.append(f"{where} (only {', '.join(hosts)} import the service; others at most "
                              f"{', '.join(shared)})")
    return violations


# --------------------------------------------------------------------------------------------------
# The rules, on this repository
# --------------------------------------------------------------------------------------------------


def _report(title: str, violations: list[str]) -> str:
    return f"{title} ({len(violations)}):\n" + "\n".join(f"  {v}" for v in violations)


def test_repository_has_the_checked_packages():
    modules = collect_modules(ROOT)
    for top in (*PACKAGES, *ROOT_MODULES):
        assert top in modules, f"{top} not found under {ROOT}: the architecture checks would check nothing"


def test_layers():
    violations = layer_violations(ROOT)
    assert not violations, _report("imports across layers (nerf < lift3d < deployments < graph; no ray below "
                                   "deployments)", violations)


def test_lift3d_rooms():
    violations = room_violations(ROOT)
    assert not violations, _report("lift3d room violations (import your own room or a lower rank only)",
                                   violations)


def test_no_import_cycles():
    lines = describe_cycles(ROOT)
    cycles = find_cycles(ROOT)
    assert not cycles, f"import cycles ({len(cycles)}), each with the line of each of its imports:\n" + "\n".join(
        f"  {line}" for line in lines
    )


def test_sizes():
    violations = size_violations(ROOT)
    assert not violations, _report("size limits", violations)


def test_no_star_imports():
    violations = star_import_violations(ROOT)
    assert not violations, _report("star imports", violations)


@pytest.mark.parametrize("check, title", [
    (separation_violations, "imports between separate rooms of the service (api, worker)"),
    (folder_violations, "folders of lift3d/ with too many modules (split them into sub-packages)"),
    (function_length_violations, f"functions over {MAX_FUNCTION_LINES} lines (split them into steps)"),
], ids=["api-and-worker-apart", "modules-per-folder", "function-lengths"])
def test_service_rooms_folders_and_functions(check, title):
    violations = check(ROOT)
    assert not violations, _report(title, violations)


def test_nothing_leaks_out_of_the_service():
    violations = service_leak_violations(ROOT)
    assert not violations, _report("imports of lift3d.service from outside the service", violations)


def test_front_door_replicas_import_no_torch():
    """The Ingress and JobConsumer replicas (and the HTTP app) start without torch or the diffusion libraries: they
    only parse, store and enqueue. Run in a fresh interpreter, since this test process has imported torch."""
    import subprocess
    import sys

    probe = ("import sys, deployments.ingress, deployments.consumer, lift3d.service.api.app; "
             "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'xatlas') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------
# The checks can fail: synthetic trees
# --------------------------------------------------------------------------------------------------


def make_tree(root: Path, files: Mapping[str, str]) -> Path:
    """Write ``{relative path: source}`` under ``root`` (parents created) and return ``root``."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


CLEAN_TREE = {
    "nerf/__init__.py": "",
    "nerf/field.py": "import torch\nfrom . import encoding\nfrom .encoding import Hash\n",
    "nerf/encoding.py": "import math\nclass Hash: ...\n",
    "lift3d/__init__.py": "",
    "lift3d/errors.py": "class Lift3DError(Exception): ...\n",
    "lift3d/params.py": "from lift3d.errors import Lift3DError\n",
    "lift3d/io/__init__.py": "from .storage import base\n",
    "lift3d/io/storage/__init__.py": "",
    "lift3d/io/storage/base.py": "from ...params import Lift3DError\nfrom lift3d import errors\n",
    "lift3d/stages/__init__.py": "",
    "lift3d/stages/tiny.py": "import nerf.field\nfrom lift3d.io.storage.base import X\n",
    "lift3d/pipeline/__init__.py": "from lift3d.pipeline.steps import run\n",
    "lift3d/pipeline/steps.py": "from lift3d.stages import tiny\nfrom lift3d.presets import get\n",
    "lift3d/presets.py": "def get(): ...\n",
    "lift3d/cli/__init__.py": "def main():\n    from lift3d.pipeline import run\n    from lift3d.service.jobs import store as jobs\n",
    "lift3d/service/__init__.py": "",
    "lift3d/service/jobs/store.py": "from lift3d.reconstruct import rebuild\n",
    "lift3d/reconstruct/__init__.py": "def rebuild(): ...\n",
    "deployments/__init__.py": "",
    "deployments/ingress.py": "from ray import serve\nfrom lift3d.service.jobs.store import X\nimport nerf\n",
    "graph.py": "from deployments.ingress import X\nfrom lift3d.cli import main\nimport ray\n",
    "tests/test_x.py": "import graph\nfrom lift3d.cli import *\n" + "x = 1\n" * 500,
}


def test_clean_tree_reports_nothing(tmp_path):
    root = make_tree(tmp_path, CLEAN_TREE)
    assert layer_violations(root) == []
    assert room_violations(root) == []
    assert find_cycles(root) == []
    assert size_violations(root) == []
    assert star_import_violations(root) == []


def test_collect_modules_names_packages_and_skips_unchecked_dirs(tmp_path):
    root = make_tree(tmp_path, {
        "nerf/__init__.py": "",
        "nerf/trainers/__init__.py": "",
        "nerf/trainers/sds.py": "",
        "lift3d/cli/__main__.py": "",
        "lift3d/__pycache__/x.py": "",
        "graph.py": "",
        "tools/sync.py": "",
        "setup.py": "",
    })
    assert sorted(collect_modules(root)) == [
        "graph", "lift3d.cli.__main__", "nerf", "nerf.trainers", "nerf.trainers.sds",
    ]


def test_imports_of_resolves_targets(tmp_path):
    root = make_tree(tmp_path, {
        "lift3d/__init__.py": "",
        "lift3d/io/__init__.py": "",
        "lift3d/io/images.py": "",
        "lift3d/io/storage/__init__.py": "",
        "lift3d/io/storage/s3.py": "",
        "lift3d/io/storage/local.py": (
            "import os.path\n"                                # 1 external, as written
            "import lift3d.io.storage.s3 as s3\n"              # 2 the module, no parent edges
            "from lift3d.io.storage import s3, Storage\n"      # 3 module, else the package
            "from . import s3, base_name\n"                    # 4 relative to lift3d.io.storage
            "from .. import images\n"                          # 5 lift3d.io.images
            "from ..images import load\n"                      # 6 load is a name: lift3d.io.images
            "from ... import io\n"                             # 7 lift3d.io (a package)
            "from .... import too_far\n"                       # 8 leaves the tree: skipped
            "def f():\n"
            "    from lift3d.errors import E\n"                # 10 deferred; unknown module kept as written
            "try:\n"
            "    from ray import serve\n"                      # 12 external: ray
            "except ImportError:\n"
            "    pass\n"
        ),
    })
    modules = collect_modules(root)
    path = root / "lift3d/io/storage/local.py"
    assert imports_of(path, "lift3d.io.storage.local", modules) == [
        (1, "os.path"),
        (2, "lift3d.io.storage.s3"),
        (3, "lift3d.io.storage"),
        (3, "lift3d.io.storage.s3"),
        (4, "lift3d.io.storage"),
        (4, "lift3d.io.storage.s3"),
        (5, "lift3d.io.images"),
        (6, "lift3d.io.images"),
        (7, "lift3d.io"),
        (10, "lift3d.errors"),
        (12, "ray"),
    ]
    # In a package's __init__.py, "." is the package itself.
    init = make_tree(tmp_path, {"lift3d/io/storage/__init__.py": "from . import s3\nfrom .s3 import S3\n"})
    assert imports_of(init / "lift3d/io/storage/__init__.py", "lift3d.io.storage", modules) == [
        (1, "lift3d.io.storage.s3"),
        (2, "lift3d.io.storage.s3"),
    ]


def test_layer_violations_are_reported(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN_TREE,
        "nerf/a.py": "import torch\nfrom lift3d.x import y\n",
        "nerf/b.py": "def f():\n    import ray.serve\n    from deployments import ingress\n",
        "nerf/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import graph\n",
        "nerf/d.py": "import raytracing\nimport lift3dx\nimport graphviz\n",  # prefixes, not packages
        "lift3d/params.py": "try:\n    from ray import serve\nexcept ImportError:\n    serve = None\n",
        "lift3d/cli/__init__.py": "from graph import build_app\nfrom deployments.ingress import X\n",
        "deployments/ingress.py": "from ray import serve\nimport graph\n",
    })
    assert layer_violations(root) == [
        "deployments/ingress.py:2 imports graph",
        "lift3d/cli/__init__.py:1 imports graph",
        "lift3d/cli/__init__.py:2 imports deployments.ingress",
        "lift3d/params.py:2 imports ray",
        "nerf/a.py:2 imports lift3d.x",
        "nerf/b.py:2 imports ray.serve",
        "nerf/b.py:3 imports deployments.ingress",
        "nerf/c.py:3 imports graph",
    ]


def test_batch_jobs_sits_beside_deployments(tmp_path):
    """batch_jobs/ (Ray Data) may use lift3d and Ray; lift3d, deployments and graph never import it, nor it them."""
    root = make_tree(tmp_path, {
        **CLEAN_TREE,
        "batch_jobs/__init__.py": "",
        "batch_jobs/runner.py": "import ray.data\nfrom lift3d.cli import main\nfrom deployments import ingress\nimport graph\n",
        "batch_jobs/big.py": "x = 1\n" * 151,
        "lift3d/cli/batch.py": "def f():\n    from batch_jobs.runner import RayDataRunner\n",
        "deployments/x.py": "import batch_jobs.runner\n",
        "graph.py": "from deployments.ingress import X\nimport batch_jobs\n",
    })
    assert layer_violations(root) == [
        "batch_jobs/runner.py:3 imports deployments.ingress",
        "batch_jobs/runner.py:4 imports graph",
        "deployments/x.py:1 imports batch_jobs.runner",
        "graph.py:2 imports batch_jobs",
        "lift3d/cli/batch.py:2 imports batch_jobs.runner",
    ]
    assert size_violations(root) == ["batch_jobs/big.py: 151 lines (max 150 in batch_jobs/)"]


def test_room_violations_are_reported(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN_TREE,
        "lift3d/io/a.py": (
            "from lift3d.pipeline.b import run\n"    # up: io 2 -> pipeline 5
            "from lift3d.io.storage import base\n"  # own room
            "from lift3d import params, errors\n"   # lower ranks
            "from lift3d import __version__\n"      # the package root: rank -1
            "def f():\n"
            "    from ..stages import tiny\n"       # up, deferred, relative
        ),
        "lift3d/pipeline/b.py": "from lift3d.reconstruct import rebuild\nfrom lift3d.newroom import z\n",
        "lift3d/params.py": "from lift3d.devices import gpu\n",  # same rank, other room
        "lift3d/newroom.py": "from lift3d.cli import main\n",     # unranked: its imports go unchecked
        "lift3d/__init__.py": "from .errors import Lift3DError\n",
    })
    assert room_violations(root) == [
        "lift3d/newroom.py: unknown room lift3d.newroom (add it to ROOM_RANKS)",
        "lift3d/__init__.py:1 imports lift3d.errors (lift3d rank -1 may not import lift3d.errors rank 0)",
        "lift3d/io/a.py:1 imports lift3d.pipeline.b (lift3d.io rank 2 may not import lift3d.pipeline rank 5)",
        "lift3d/io/a.py:6 imports lift3d.stages.tiny (lift3d.io rank 2 may not import lift3d.stages rank 3)",
        "lift3d/params.py:1 imports lift3d.devices (lift3d.params rank 1 may not import lift3d.devices rank 1)",
        "lift3d/pipeline/b.py:1 imports lift3d.reconstruct "
        "(lift3d.pipeline rank 5 may not import lift3d.reconstruct rank 5)",
        "lift3d/pipeline/b.py:2 imports lift3d.newroom (unknown room lift3d.newroom: add it to ROOM_RANKS)",
    ]


def test_two_module_cycle_through_a_deferred_import(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN_TREE,
        "lift3d/stages/zero123/__init__.py": "",
        "lift3d/stages/zero123/model.py": "from lift3d.stages.tiny import X\n",
        "lift3d/stages/tiny.py": "def load():\n    from lift3d.stages.zero123 import model\n",
    })
    assert find_cycles(root) == [["lift3d.stages.tiny", "lift3d.stages.zero123.model", "lift3d.stages.tiny"]]
    assert describe_cycles(root) == [
        "lift3d.stages.tiny -> lift3d.stages.zero123.model -> lift3d.stages.tiny",
        "    lift3d/stages/tiny.py:2 imports lift3d.stages.zero123.model",
        "    lift3d/stages/zero123/model.py:1 imports lift3d.stages.tiny",
    ]


def test_three_module_cycle_through_a_relative_import(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN_TREE,
        "nerf/renderer.py": "from nerf.volrend import composite\n",
        "nerf/volrend.py": "from nerf.trainers import sds\n",
        "nerf/trainers/__init__.py": "",
        "nerf/trainers/sds.py": "from ..renderer import Renderer\n",
    })
    assert find_cycles(root) == [["nerf.renderer", "nerf.volrend", "nerf.trainers.sds", "nerf.renderer"]]


def test_type_checking_import_closes_a_cycle(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN_TREE,
        "lift3d/reconstruct/__init__.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lift3d.pipeline import Pipeline\n"
        ),
        "lift3d/pipeline/steps.py": "from lift3d.reconstruct import rebuild\n",
    })
    # lift3d.pipeline -> steps (its __init__ imports it) -> lift3d.reconstruct -> lift3d.pipeline
    assert find_cycles(root) == [["lift3d.pipeline", "lift3d.pipeline.steps", "lift3d.reconstruct",
                                  "lift3d.pipeline"]]


def test_cycle_report_covers_every_module_of_a_component(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN_TREE,
        "nerf/a.py": "import nerf.b\nimport nerf.c\n",
        "nerf/b.py": "import nerf.a\n",
        "nerf/c.py": "import nerf.a\n",
        "deployments/x.py": "import deployments.y\n",
        "deployments/y.py": "try:\n    import deployments.x\nexcept ImportError:\n    pass\n",
    })
    assert find_cycles(root) == [
        ["deployments.x", "deployments.y", "deployments.x"],
        ["nerf.a", "nerf.b", "nerf.a"],
        ["nerf.c", "nerf.a", "nerf.c"],
    ]


def test_no_cycle_from_self_imports_or_parent_packages(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN_TREE,
        # The package imports its submodule, which imports a sibling by full name: Python runs the
        # package __init__ first, but that is not an edge to it.
        "lift3d/io/__init__.py": "from lift3d.io.storage import local\n",
        "lift3d/io/storage/__init__.py": "from . import local, Base\n",  # Base: a name, i.e. itself
        "lift3d/io/storage/local.py": "import lift3d.io.storage.base\n",
    })
    assert find_cycles(root) == []


def test_cycle_search_has_no_recursion_limit():
    n = 50_000
    graph = {f"m{i}": [f"m{(i + 1) % n}"] for i in range(n)}
    graph["m0"].append("m0")
    cycles = cycles_in_graph(graph)
    assert len(cycles) == 1 and len(cycles[0]) == n + 1
    assert cycles[0][0] == cycles[0][-1] == "m0"
    assert cycles_in_graph({f"m{i}": [f"m{i + 1}"] for i in range(n)}) == []


def test_size_violations_are_reported(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN_TREE,
        "nerf/big.py": "x = 1\n" * 451,
        "nerf/ok.py": "x = 1\n" * 450,
        "deployments/heavy.py": "x = 1\n" * 151,
        "deployments/huge.py": "x = 1\n" * 500,  # reported once, against the stricter limit
        "deployments/fine.py": "x = 1\n" * 150,
        "graph.py": "x = 1\n" * 452,
        **{f"lift3d/m{i}.py": "" for i in range(7)},  # with errors, params, presets: 10 modules
        "benchmarks/huge.py": "x = 1\n" * 1000,
    })
    assert size_violations(root) == [
        "deployments/heavy.py: 151 lines (max 150 in deployments/)",
        "deployments/huge.py: 500 lines (max 150 in deployments/)",
        "graph.py: 452 lines (max 450)",
        "nerf/big.py: 451 lines (max 450)",
        "lift3d/: 10 top-level modules (max 8): errors.py, m0.py, m1.py, m2.py, m3.py, m4.py, m5.py, m6.py, "
        "params.py, presets.py",
    ]


@pytest.mark.parametrize("count, expected", [(8, 0), (9, 1)])
def test_lift3d_top_level_limit_is_exact(tmp_path, count, expected):
    root = make_tree(tmp_path, {"lift3d/__init__.py": "", **{f"lift3d/m{i}.py": "" for i in range(count)}})
    assert len(size_violations(root)) == expected


def test_star_imports_are_reported(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN_TREE,
        "nerf/a.py": "from nerf.encoding import *\n",
        "lift3d/io/storage/local.py": "def f():\n    from .base import *\n",
        "graph.py": "from os.path import *\n",
    })
    assert star_import_violations(root) == [
        "graph.py:1 imports * from os.path",
        "lift3d/io/storage/local.py:2 imports * from lift3d.io.storage.base",
        "nerf/a.py:1 imports * from nerf.encoding",
    ]


def test_separate_rooms_are_reported(tmp_path):
    assert separation_violations(make_tree(tmp_path / "clean", CLEAN_TREE)) == []
    root = make_tree(tmp_path / "tree", {
        **CLEAN_TREE,
        "lift3d/service/api/__init__.py": "",
        "lift3d/service/api/app.py": "from lift3d.service.jobs.store import X\nfrom ..worker import runner\n",
        "lift3d/service/api/routes/__init__.py": "",
        "lift3d/service/api/routes/ok.py": "from lift3d.service import api\nfrom lift3d.service.workers import x\n",
        "lift3d/service/worker/__init__.py": "",
        "lift3d/service/worker/runner.py": "def f():\n    import lift3d.service.api.routes.ok\n",
    })
    assert separation_violations(root) == [
        "lift3d/service/api/app.py:2 imports lift3d.service.worker.runner "
        "(lift3d.service.api and lift3d.service.worker never import each other)",
        "lift3d/service/worker/runner.py:2 imports lift3d.service.api.routes.ok "
        "(lift3d.service.worker and lift3d.service.api never import each other)",
    ]


def test_crowded_folders_are_reported(tmp_path):
    assert folder_violations(make_tree(tmp_path / "clean", CLEAN_TREE)) == []
    root = make_tree(tmp_path / "tree", {
        **CLEAN_TREE,
        **{f"lift3d/service/m{i:02d}.py": "" for i in range(16)},  # 16 modules, __init__.py not counted
        **{f"lift3d/io/m{i:02d}.py": "" for i in range(15)},  # 15: allowed
        **{f"lift3d/io/__pycache__/m{i:02d}.py": "" for i in range(20)},
        **{f"nerf/m{i:02d}.py": "" for i in range(20)},  # outside lift3d/
    })
    assert folder_violations(root) == [
        "lift3d/service/: 16 modules (max 15): " + ", ".join(f"m{i:02d}.py" for i in range(16)),
    ]
    assert folder_violations(root, limit=16) == []


def test_long_functions_are_reported(tmp_path):
    assert function_length_violations(make_tree(tmp_path / "clean", CLEAN_TREE)) == []
    body = "".join(f"    x{i} = {i}\n" for i in range(99))

    def function(name: str, extra: int = 0, prefix: str = "def") -> str:  # 1 + 99 + extra lines
        return f"{prefix} {name}():\n{body}" + "    pass\n" * extra

    root = make_tree(tmp_path / "tree", {
        **CLEAN_TREE,
        "lift3d/service/jobs/store.py": function("fits") + "@decorator\n" + function("too_long", extra=1),
        "lift3d/service/api/app.py": "class A:\n" + "".join("    " + line + "\n" for line in
                                                            function("method", 2, "async def").splitlines()),
        "lift3d/service/api/routes.py": "def outer():\n" + "".join("    " + line + "\n" for line in
                                                                 function("inner", 1).splitlines()),
        "lift3d/pipeline/steps.py": function("outside_the_scope", extra=50),
    })
    assert function_length_violations(root) == [
        "lift3d/service/api/app.py:2 method: 102 lines (max 100)",
        "lift3d/service/api/routes.py:1 outer: 102 lines (max 100)",
        "lift3d/service/api/routes.py:2 inner: 101 lines (max 100)",
        "lift3d/service/jobs/store.py:102 too_long: 101 lines (max 100)",
    ]
    assert function_length_violations(root, scope=("lift3d.pipeline",)) == [
        "lift3d/pipeline/steps.py:1 outside_the_scope: 150 lines (max 100)",
    ]


def test_service_leaks_are_reported(tmp_path):
    root = make_tree(tmp_path, {
        **CLEAN_TREE,
        "lift3d/service/config.py": "class QueueConfig: ...\n",
        "lift3d/service/worker/runner.py": "class JobRunner: ...\n",
        "lift3d/batch/__init__.py": "",
        "lift3d/batch/item.py": "from lift3d.costs import CostModel\ndef f():\n    from lift3d.service import costs\n",
        "batch_jobs/__init__.py": "",
        "batch_jobs/stages.py": "from lift3d.batch import item\nimport lift3d.service.config\n",
        "deployments/consumer.py": "from lift3d.service.worker.runner import JobRunner\n",       # a host
        "deployments/nerf_trainer.py": "from lift3d.service.worker import runner\n",              # a host
        "deployments/queue.py": "from lift3d.service.config import QueueConfig\n",                # shared: fine
        "deployments/multiview.py": "from lift3d.logs import x\nfrom lift3d.service.config import y\n",
        "deployments/metrics.py": "from lift3d.service.metrics import METRICS\n",
        "deployments/text_to_image.py": "from lift3d.service import logs\n",
        "deployments/ingressive.py": "import lift3d.service.worker.runner\n",                  # a prefix, not a host
    })
    assert service_leak_violations(root) == [
        "batch_jobs/stages.py:2 imports lift3d.service.config (batch_jobs imports nothing from lift3d.service)",
        "deployments/ingressive.py:1 imports lift3d.service.worker.runner (only deployments.ingress, "
        "deployments.consumer, deployments.nerf_trainer import the service; others at most lift3d.service.config)",
        "deployments/metrics.py:1 imports lift3d.service.metrics (only deployments.ingress, deployments.consumer, "
        "deployments.nerf_trainer import the service; others at most lift3d.service.config)",
        "deployments/text_to_image.py:1 imports lift3d.service (only deployments.ingress, deployments.consumer, "
        "deployments.nerf_trainer import the service; others at most lift3d.service.config)",
        "lift3d/batch/item.py:3 imports lift3d.service (lift3d.batch imports nothing from lift3d.service)",
    ]
    assert service_leak_violations(make_tree(tmp_path / "clean", CLEAN_TREE)) == []
