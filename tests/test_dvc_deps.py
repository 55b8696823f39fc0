"""Every stage of dvc.yaml, grid/dvc.yaml and tuning/dvc.yaml declares every project source file that its
command loads, so an edit to any of them makes `dvc status` call the stage stale. The loaded files are
derived from the command itself: the CLI handler it reaches, then every `unet_ssl` import (module level
or inside functions) of those modules, followed transitively."""
from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from unet_ssl import cli

PACKAGE = REPO / "src" / "unet_ssl"
PIPELINES = ["dvc.yaml", "grid/dvc.yaml", "tuning/dvc.yaml"]


def module_file(module: str) -> Path:
    """'unet_ssl.stages.grid' -> src/unet_ssl/stages/grid.py (or the package's __init__.py)."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(tree: ast.AST) -> set[str]:
    """The unet_ssl modules an AST imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("unet_ssl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unet_ssl") and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}").is_file()}
    return found


def loaded_files(entry: set[str]) -> set[Path]:
    """Files of the modules in `entry`, their parent packages, and everything they import, transitively.
    cli.py is loaded but not followed: its handlers import lazily, and `command_entry` picks the one used."""
    todo, seen = list(entry), {"unet_ssl.cli"}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b
        todo += sorted(imported_modules(ast.parse(module_file(module).read_text())))
    return {module_file(m) for m in seen}


def command_entry(cmd: str) -> set[str]:
    """The modules a `unet-ssl ...` command runs: cli's module-level imports, the imports inside the
    handler the arguments select, and the stage module of a `_stage` handler (named in its closure)."""
    argv = shlex.split(cmd)
    assert argv[0] == "unet-ssl", f"stage command {cmd!r} does not start with unet-ssl"
    handler = cli.build_parser().parse_args(argv[1:]).func
    cli_tree = ast.parse(module_file("unet_ssl.cli").read_text())
    top_level = ast.Module(body=[n for n in cli_tree.body if isinstance(n, (ast.Import, ast.ImportFrom))],
                           type_ignores=[])
    entry = imported_modules(top_level)
    function = next((n for n in ast.walk(cli_tree)
                     if isinstance(n, ast.FunctionDef) and n.name == handler.__name__), None)
    if function is not None:
        entry |= imported_modules(function)
    for cell in handler.__closure__ or ():
        if isinstance(cell.cell_contents, str) and module_file(f"unet_ssl.stages.{cell.cell_contents}").is_file():
            entry.add(f"unet_ssl.stages.{cell.cell_contents}")
    return entry


def stages() -> list[tuple[str, str, dict]]:
    """(pipeline file, stage name, stage definition) for every stage; a foreach stage counts once, its
    command with the placeholder replaced by the first key of its plan."""
    out = []
    for pipeline in PIPELINES:
        path = REPO / pipeline
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            if "foreach" in stage:
                stage = {**stage["do"], "cmd": stage["do"]["cmd"].replace("${key}", "KEY")}
            out.append((pipeline, name, stage))
    return out


@pytest.mark.parametrize("pipeline,name,stage", stages(), ids=[f"{p}:{n}" for p, n, _ in stages()])
def test_every_loaded_source_file_is_a_dep(pipeline, name, stage):
    root = REPO / pipeline
    wdir = (root.parent / stage.get("wdir", ".")).resolve()
    deps = [(wdir / d).resolve() for d in stage.get("deps", [])]
    loaded = loaded_files(command_entry(stage["cmd"])) | {module_file("unet_ssl.cli")}
    missing = sorted(str(f.relative_to(REPO)) for f in loaded
                     if not any(f == d or d in f.parents for d in deps))
    print(f"{pipeline}:{name}: {len(loaded)} source files loaded, all declared" if not missing else "")
    assert not missing, (f"{pipeline} stage {name!r} ({stage['cmd']}) loads files it does not declare as deps: "
                         f"{missing}; rewrite the deps with `python scripts/sync_dvc_deps.py` and review the diff")


def test_the_derivation_finds_what_finetune_loads():
    """The files the issue found missing from `finetune` (and the stage module itself) are derived."""
    loaded = {str(f.relative_to(PACKAGE)) for f in loaded_files(command_entry("unet-ssl finetune"))}
    assert {"core/augment.py", "core/checkpoint.py", "core/runtime.py", "core/metrics.py", "stages/finetune.py",
            "core/model.py"} <= loaded
    assert "experiments/bench/__init__.py" not in loaded and "stages/pretrain.py" not in loaded
