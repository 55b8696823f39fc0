"""The README's everyday commands work as typed: in a new bash shell that ran the README's activation line
after the set-up, in a copy of a repository where the sample pipeline has run (`pipeline_repo` in
conftest.py). Each command is asserted to appear verbatim in the README's "Everyday commands" section."""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, copy_pipeline_repo

README = (REPO / "README.md").read_text()
EVERYDAY = README.split("## Everyday commands", 1)[1].split("\n## ", 1)[0]
WIDTH = 120


def setup_block() -> list[str]:
    """The commands of the README's first code block (the set-up), comments cut."""
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def documented(command: str) -> str:
    assert f"`{command}`" in EVERYDAY, f"`{command}` is not in the README's Everyday commands"
    return command


def new_shell_env() -> dict:
    """The environment of a new login: no virtual environment active, none of its tools on PATH, and no trace of
    a `make` above it (under `make test` MAKELEVEL would make `make exps` print 'Entering directory' lines)."""
    venv_bin = str(Path(sys.executable).parent)
    left_out = ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "PYTHONPATH", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if k not in left_out}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p and p != venv_bin)
    env["COLUMNS"] = str(WIDTH)
    return env


@pytest.fixture(scope="module")
def readme_repo(pipeline_repo, tmp_path_factory):
    """A copy of the pipeline repository whose .venv is this interpreter's environment."""
    repo = copy_pipeline_repo(pipeline_repo, tmp_path_factory.mktemp("readme") / "repo")
    if sys.prefix != sys.base_prefix:  # the tests run in a virtual environment (make test: .venv)
        (repo / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    else:  # an activate script for the interpreter running the tests
        (repo / ".venv" / "bin").mkdir(parents=True)
        (repo / ".venv" / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    with (repo / ".git" / "info" / "exclude").open("a") as f:
        f.write(".venv\n")  # a symlink is a file to git: `.venv/` in .gitignore does not cover it
    return repo


def shell(repo: Path, command: str, check: bool = True) -> subprocess.CompletedProcess:
    """`command` in a new bash (no rc files) after the README's activation line."""
    activate = next(line for line in setup_block() if line.startswith(("source ", ". ")))
    done = subprocess.run(["bash", "--noprofile", "--norc", "-c", f"{activate} && {command}"], cwd=repo,
                          env=new_shell_env(), capture_output=True, text=True)
    if check:
        assert done.returncode == 0, (f"{command} failed ({done.returncode}):\n"
                                      f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def test_readme_setup_is_two_commands_then_activation():
    assert setup_block() == ["make run", "make test", "source .venv/bin/activate"]


def test_everyday_commands_as_typed(readme_repo):
    repo = readme_repo
    if shutil.which("dvc", path=new_shell_env()["PATH"]) is None:  # why the activation line is there
        bare = subprocess.run(["bash", "--noprofile", "--norc", "-c", "dvc --version"], cwd=repo,
                              env=new_shell_env(), capture_output=True, text=True)
        assert bare.returncode == 127 and "command not found" in bare.stderr

    assert "unet-ssl" in shell(repo, documented("unet-ssl --help")).stdout
    out = shell(repo, documented("dvc exp run -S finetune.subset=0.01"))
    text = out.stdout + out.stderr
    assert "Running stage 'finetune'" in text and "Running stage 'evaluate'" in text
    for unchanged in ("prepare_pets", "prepare_pretrain", "validate", "pretrain"):
        assert f"Running stage '{unchanged}'" not in text
    with sqlite3.connect(repo / "mlruns" / "mlflow.db") as db:  # the experiment's runs, tagged with its subset
        subsets = db.execute("select t.value from tags t join tags s on t.run_uuid = s.run_uuid "
                             "where t.key = 'subset' and s.key = 'stage' and s.value = 'finetune'").fetchall()
    assert ("0.01",) in subsets

    # the short form: the changed param and the two main scores, one line per experiment, in 120 columns
    exps = shell(repo, documented("make exps")).stdout
    print(exps)
    lines = exps.splitlines()
    assert lines and max(len(line) for line in lines) <= WIDTH, exps
    assert lines[0].split() == ["experiment", "created", "test", "jaccard", "test", "f1", "finetune.subset"]
    assert any(line.split()[0] == "workspace" and line.split()[-1] == "0.01" for line in lines[2:])
    assert any(line.split()[-1] == "0.9" for line in lines[2:]), "the baseline commit's subset"
    assert all(re.fullmatch(r"0(\.\d+)?|1(\.0+)?", line.split()[-3]) for line in lines[2:]), "test jaccard column"

    shown = shell(repo, documented("dvc exp show")).stdout  # every column: works, however wide
    assert "workspace" in shown
    metrics = shell(repo, documented("dvc metrics show metrics/evaluate.json")).stdout
    assert "test.jaccard" in metrics and "test.f1" in metrics
    plots = shell(repo, documented("dvc plots show")).stdout
    assert "dvc_plots/index.html" in plots and (repo / "dvc_plots" / "index.html").is_file()
    assert "Running stage" not in shell(repo, documented("dvc repro")).stdout

    # the example of a bad value: the stage stops with one error line naming the key, no traceback
    failed = shell(repo, "dvc exp run -S finetune.subset=1.0", check=False)
    assert failed.returncode != 0
    errors = [line for line in (failed.stdout + failed.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("unet-ssl finetune: error: params.yaml: finetune.subset must be")
    assert "(0, 0.9]" in errors[0] and "Traceback" not in failed.stdout + failed.stderr
