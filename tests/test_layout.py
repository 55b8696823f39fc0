"""The package layout rules (issue 14, docs/layout.md), checked on the source text with `ast`: layers import
only downward, core/ stays torch-only, no private name crosses a module boundary, no two modules share a file
name, every line fits 120 columns, and tests/ mirrors the package's folders. Each failure names file, line, rule."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "src" / "unet_ssl"
LINE_LIMIT = 120
CHECKED_FOLDERS = ["src", "tests", "scripts"]

# Lowest first; a module may import from its own layer or a lower one. A folder's modules (its __init__.py
# included) belong to its layer; the top-level files not listed here are foundation.
LAYERS = ["foundation", "core", "data", "tracking", "experiments", "stages", "cli"]
FOUNDATION = {"__init__.py", "paths.py", "config.py", "render.py"}
COMMAND_LINE = {"cli.py", "exps.py", "__main__.py"}
# core/ is the training core: torch, numpy and the standard library only (tqdm draws its progress bars).
CORE_THIRD_PARTY = {"torch", "numpy", "tqdm"}


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    """src/unet_ssl/core/model.py -> 'unet_ssl.core.model'; a package's __init__.py -> the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> Path | None:
    """The file of the unet_ssl module `name`, or None if `name` is not a module (an attribute, say)."""
    path = PACKAGE.joinpath(*name.split(".")[1:])
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    if len(relative.parts) > 1:
        return relative.parts[0]
    if relative.name in COMMAND_LINE:
        return "cli"
    assert relative.name in FOUNDATION, f"{relative}: a top-level module that is in no layer (add it to test_layout.py)"
    return "foundation"


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import statement of `path`, wherever it stands (module level,
    inside functions, under TYPE_CHECKING); relative imports are resolved to absolute module names."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = module_name(path).split(".")
                package = package if path.name == "__init__.py" else package[:-1]
                module = ".".join(package[: len(package) - node.level + 1] + ([module] if module else []))
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def imported_unet_ssl_modules(module: str, names: list[str]) -> list[str]:
    """The unet_ssl modules one import statement loads: `from unet_ssl.core import model` loads
    unet_ssl.core.model, `from unet_ssl.core.model import UNet` loads unet_ssl.core.model."""
    if module != "unet_ssl" and not module.startswith("unet_ssl."):
        return []
    submodules = [f"{module}.{n}" for n in names if module_path(f"{module}.{n}")]
    return submodules or [module]


def layer_violations() -> list[str]:
    problems = []
    for path in package_modules():
        own = LAYERS.index(layer(path))
        for line, module, names in imports(path):
            for target in imported_unet_ssl_modules(module, names):
                target_path = module_path(target)
                if target_path is None:
                    problems.append(f"{rel(path)}:{line}: [layers] imports {target}, which is no module")
                    continue
                other = layer(target_path)
                if LAYERS.index(other) > own:
                    problems.append(f"{rel(path)}:{line}: [layers] the {layer(path)} layer imports {target} "
                                    f"from the higher {other} layer (order: {' < '.join(LAYERS)})")
    return problems


def core_dependency_violations() -> list[str]:
    allowed = set(sys.stdlib_module_names) | CORE_THIRD_PARTY | {"unet_ssl"}
    problems = []
    for path in package_modules():
        if layer(path) != "core":
            continue
        for line, module, _ in imports(path):
            top = module.split(".")[0]
            if top not in allowed:
                problems.append(f"{rel(path)}:{line}: [core-deps] core/ imports {module}; core is torch, numpy "
                                f"and the standard library only (allowed third-party: {sorted(CORE_THIRD_PARTY)})")
    return problems


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def module_bindings(tree: ast.AST) -> set[str]:
    """Names a file binds to unet_ssl modules: `from unet_ssl.core import model (as m)`, `import unet_ssl.x as y`."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound |= {a.asname for a in node.names if a.asname and a.name.startswith("unet_ssl.")}
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("unet_ssl"):
            bound |= {a.asname or a.name for a in node.names if module_path(f"{node.module}.{a.name}")}
    return bound


def private_import_violations() -> list[str]:
    """`from unet_ssl.x import _name`, `import unet_ssl._x`, and `x._name` where x names a unet_ssl module."""
    problems = []
    for path in package_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, module, names in imports(path):
            if module == "unet_ssl" or module.startswith("unet_ssl."):
                problems += [f"{rel(path)}:{line}: [private] imports the private name {p!r} from {module}"
                             for p in module.split(".") + names if is_private(p)]
        module_aliases = module_bindings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases
                    and is_private(node.attr)):
                problems.append(f"{rel(path)}:{node.lineno}: [private] uses the private name "
                                f"{node.value.id}.{node.attr} of another unet_ssl module")
    return problems


def fail_with(rule: str, problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join([f"{rule} ({len(problems)}):", *problems]), pytrace=False)


def test_layers_import_only_downward():
    problems = layer_violations()
    fail_with("a module imports from a higher layer", problems)


def test_core_is_torch_only():
    problems = core_dependency_violations()
    fail_with("core/ imports a library it must not", problems)


def test_no_private_name_crosses_modules():
    problems = private_import_violations()
    fail_with("a private name is used across modules (make it public or move it)", problems)


def test_module_file_names_are_unique():
    by_name: dict[str, list[Path]] = {}
    for path in package_modules():
        if path.name != "__init__.py":
            by_name.setdefault(path.name, []).append(path)
    problems = [f"{rel(paths[0])}:1: [unique-names] {name} also in {', '.join(rel(p) for p in paths[1:])}"
                for name, paths in sorted(by_name.items()) if len(paths) > 1]
    fail_with("two modules share a file name", problems)


def test_lines_fit_120_columns():
    problems = []
    for folder in CHECKED_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if len(line) > LINE_LIMIT:
                    problems.append(f"{rel(path)}:{number}: [line-length] {len(line)} > {LINE_LIMIT} columns")
    fail_with("lines too long (ruff check --select E501 finds them)", problems)


def test_tests_mirror_the_package_folders():
    problems = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        folder = path.parent.relative_to(REPO / "tests")
        if folder.parts and not (PACKAGE / folder).is_dir():
            problems.append(f"{rel(path)}:1: [mirror] tests/{folder}/ has no src/unet_ssl/{folder}/ to mirror")
    fail_with("test files outside the package's folders", problems)


def test_tests_share_helpers_only_through_conftest():
    """A test module importing another (`from test_x import helper`) runs that module's tests' imports and
    couples them; shared helpers live in tests/conftest.py."""
    problems = [f"{rel(path)}:{line}: [test-helpers] imports {module}; move what it needs into tests/conftest.py"
                for path in sorted((REPO / "tests").rglob("*.py"))
                for line, module, _ in imports(path) if module.split(".")[0].startswith("test_")]
    fail_with("a test module imports another test module", problems)


def test_the_checks_catch_what_they_should(tmp_path, monkeypatch):
    """The checks are not vacuous: a planted upward import, a planted private import and a planted PIL
    import in core/ are each reported with their file and line."""
    package = tmp_path / "src" / "unet_ssl"
    for folder in ("core", "stages"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "paths.py").write_text("X = 1\n")
    (package / "stages" / "prepare.py").write_text("def _hidden():\n    pass\n")
    (package / "core" / "model.py").write_text(
        "import torch\n\n\ndef f():\n    from unet_ssl.stages import prepare\n    from PIL import Image\n"
        "    from unet_ssl.stages.prepare import _hidden\n    return prepare._hidden\n")
    monkeypatch.setitem(globals(), "PACKAGE", package)
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    assert layer_violations() == [
        "src/unet_ssl/core/model.py:5: [layers] the core layer imports unet_ssl.stages.prepare from the higher "
        "stages layer (order: foundation < core < data < tracking < experiments < stages < cli)",
        "src/unet_ssl/core/model.py:7: [layers] the core layer imports unet_ssl.stages.prepare from the higher "
        "stages layer (order: foundation < core < data < tracking < experiments < stages < cli)"]
    assert [p.split(": [")[0] for p in core_dependency_violations()] == ["src/unet_ssl/core/model.py:6"]
    assert [p.split(": [")[0] for p in private_import_violations()] == ["src/unet_ssl/core/model.py:7",
                                                                        "src/unet_ssl/core/model.py:8"]
