"""The floor plan holds (docs/design.md): no import cycle between modules, modules and functions of a readable size,
no private name imported from another module, and imports at module level except where the registry needs one."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the source folders and the package each installs as
FOLDERS = {"ppdgm": "ppdgm", "models": "ppdgm.models", "guides": "ppdgm.guides", "inference": "ppdgm.inference"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
#: imports inside functions that a real cycle forces, with the reason
FUNCTION_LEVEL = {
    ("ppdgm.methods.base", "ppdgm.inference"): "the registry loads the built-in methods, which subclass Method",
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _target(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(module: str, path: Path) -> tuple[set[str], list[tuple[str, int]]]:
    """The ppdgm modules ``module`` imports at module level (TYPE_CHECKING blocks aside), and those imported inside
    functions with their lines."""
    top: set[str] = set()
    inner: list[tuple[str, int]] = []

    def named(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom):
            target = _target(module, path, node)
            # `from package import submodule` depends on the submodule
            return [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
        return []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            for name in named(child):
                if name.startswith("ppdgm") and name != module:
                    if in_function:
                        inner.append((name, child.lineno))
                    else:
                        top.add(name)
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(ast.parse(path.read_text()), False)
    return {m for m in top if m in MODULES}, inner


def _graph() -> dict[str, set[str]]:
    return {module: _imports(module, path)[0] for module, path in MODULES.items()}


def test_no_import_cycle_and_every_module_imports_in_dependency_order():
    try:
        order = list(TopologicalSorter(_graph()).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None
    order = [m for m in order if m != "ppdgm.__main__"]  # runs the command line
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", script, *order], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_imports_inside_functions_only_where_a_cycle_forces_them():
    found = []
    for module, path in MODULES.items():
        for target, line in _imports(module, path)[1]:
            if (module, target) not in FUNCTION_LEVEL:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not found, "imports inside functions (move them to the module's top):\n" + "\n".join(found)


def test_modules_and_functions_stay_readable():
    long_modules = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in MODULES.values()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    long_functions = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {size}")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_no_private_name_is_imported_from_another_module():
    files = [*MODULES.items(), *((f"tests.{p.stem}", p) for p in sorted((ROOT / "tests").rglob("*.py")))]
    found = []
    for module, path in files:
        tree = ast.parse(path.read_text())
        imported_modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("ppdgm")):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name}")
                    if f"{_target(module, path, node)}.{alias.name}" in MODULES:
                        imported_modules.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in imported_modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not found, "private names used across modules:\n" + "\n".join(found)
