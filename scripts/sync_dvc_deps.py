"""Rewrites the src/unet_ssl deps of every stage of dvc.yaml, grid/dvc.yaml and tuning/dvc.yaml to the source
files its command loads, as tests/test_dvc_deps.py derives them (run it when that test fails, review the diff).

    python scripts/sync_dvc_deps.py
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "src")]

import test_dvc_deps as derive  # noqa: E402  (the derivation the test checks against)

STAGE = re.compile(r"^  (\w[\w-]*):\s*$")
SOURCE_DEP = re.compile(r"^(\s*)- (\S*src/unet_ssl/\S+)$")


def declared_sources(pipeline: Path, stage: dict) -> list[str]:
    """The stage's source deps, relative to its working directory, sorted; the CLI is always loaded."""
    if "foreach" in stage:
        stage = {**stage["do"], "cmd": stage["do"]["cmd"].replace("${key}", "KEY")}
    wdir = (pipeline.parent / stage.get("wdir", ".")).resolve()
    prefix = "" if wdir == REPO else "../"
    files = derive.loaded_files(derive.command_entry(stage["cmd"])) | {derive.module_file("unet_ssl.cli")}
    return [prefix + f for f in sorted(str(p.relative_to(REPO)) for p in files)]


def sync(pipeline: Path) -> None:
    """Replaces each stage's run of `- .../src/unet_ssl/...` lines in place; every other line is kept as written."""
    stages = yaml.safe_load(pipeline.read_text())["stages"]
    lines = pipeline.read_text().split("\n")
    out, stage, i = [], None, 0
    while i < len(lines):
        if match := STAGE.match(lines[i]):
            stage = match.group(1)
        if match := SOURCE_DEP.match(lines[i]):
            while i < len(lines) and SOURCE_DEP.match(lines[i]):
                i += 1
            out += [f"{match.group(1)}- {dep}" for dep in declared_sources(pipeline, stages[stage])]
            continue
        out.append(lines[i])
        i += 1
    pipeline.write_text("\n".join(out))


if __name__ == "__main__":
    for name in derive.PIPELINES:
        sync(REPO / name)
        print(f"{name}: source deps rewritten")
