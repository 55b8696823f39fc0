"""Shared fixtures: the embedded real sample copied into temporary folders, a temporary workspace
laid out like the repository (params.yaml, dvc.yaml, data/raw), and a throwaway MLflow store."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from unet_ssl import cli

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"
SAMPLE_PETS = SAMPLE / "oxford-iiit-pet"
SAMPLE_PRETRAIN = SAMPLE / "pretrain"
# A few real pairs of each breed of the sample, for tests that need a small but realistic folder.
SMALL_PETS = ["Abyssinian_11", "Abyssinian_140", "Bengal_129", "Bengal_135", "american_bulldog_128",
              "american_bulldog_140"]

PHOTO = SAMPLE_PETS / "images" / "Bengal_129.jpg"
MATLAB_FILE = SAMPLE_PETS / "images" / "Abyssinian_100.mat"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`unet-ssl <argv>` in-process, as a user runs it: exit code, stdout, stderr."""
    try:
        cli.main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def png_rgb16(rgb8: np.ndarray) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG of an 8-bit picture; Pillow cannot write these."""
    rgb16 = rgb8.astype(">u2") * 257
    height, width, _ = rgb16.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def damaged(kind: str) -> bytes:
    """Bytes of the real photo, damaged in one of the ways files get damaged."""
    data = PHOTO.read_bytes()
    scan = data.find(b"\xff\xda")  # start of the entropy-coded picture data
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "corrupt_scan":
        noise = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
        return data[: scan + 200] + noise + data[scan + 2200:]
    if kind == "corrupt_header":
        return data[:20] + bytes(300) + data[320:]
    if kind == "empty":
        return b""
    if kind == "not_an_image":
        return MATLAB_FILE.read_bytes()
    raise ValueError(kind)


def copy_pets(raw_dir: Path, names: list[str] | None = None) -> Path:
    """Copies real sample pets (all, or the pairs `names`) in the official layout into
    `raw_dir/oxford-iiit-pet` (official split lists included); returns that folder."""
    dest = raw_dir / "oxford-iiit-pet"
    if names is None:
        shutil.copytree(SAMPLE_PETS, dest)
    else:
        (dest / "images").mkdir(parents=True)
        (dest / "annotations" / "trimaps").mkdir(parents=True)
        for name in names:
            shutil.copy2(SAMPLE_PETS / "images" / f"{name}.jpg", dest / "images")
            shutil.copy2(SAMPLE_PETS / "annotations" / "trimaps" / f"{name}.png", dest / "annotations" / "trimaps")
        for listing in ("list.txt", "trainval.txt", "test.txt"):
            lines = (SAMPLE_PETS / "annotations" / listing).read_text().splitlines()
            kept = [line for line in lines if line.startswith("#") or line.split(" ")[0] in names]
            (dest / "annotations" / listing).write_text("\n".join(kept) + "\n")
    for path in dest.rglob("*"):  # the sample is read-only in some checkouts; copies must be editable
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def copy_pretrain(raw_dir: Path) -> Path:
    """Copies the sample's pretraining shard and class list into `raw_dir/pretrain`."""
    dest = raw_dir / "pretrain"
    shutil.copytree(SAMPLE_PRETRAIN, dest)
    for path in dest.rglob("*"):
        path.chmod(0o644)
    return dest


def set_dotted(params: dict, overrides: dict) -> dict:
    """{"finetune.epochs": 2} -> params["finetune"]["epochs"] = 2 (in place; returns params)."""
    for dotted, value in overrides.items():
        *groups, key = dotted.split(".")
        node = params
        for group in groups:
            node = node.setdefault(group, {})
        node[key] = value
    return params


def build_workspace(ws: Path, overrides: dict | None = None, pets: list[str] | None = None,
                    pretrain: bool = True) -> Path:
    """A folder `ws` laid out like the repository: params.yaml with `overrides`, dvc.yaml, data/raw with real
    sample pets (all, or the pairs `pets`) and, with `pretrain`, the sample's pretraining photos."""
    ws.mkdir(parents=True)
    shutil.copy2(REPO / "dvc.yaml", ws / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump(set_dotted(params, overrides or {}), sort_keys=False))
    copy_pets(ws / "data" / "raw", pets)
    if pretrain:
        copy_pretrain(ws / "data" / "raw")
    return ws


@pytest.fixture
def make_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Factory: a workspace (`build_workspace`) in the test's temporary folder that becomes the working
    directory, since the stages use repository-relative paths."""

    def make(overrides: dict | None = None, pets: list[str] | None = None, pretrain: bool = True,
             name: str = "ws") -> Path:
        ws = build_workspace(tmp_path / name, overrides, pets, pretrain)
        monkeypatch.chdir(ws)
        return ws

    return make


@pytest.fixture(scope="session")
def tracking_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite MLflow store for the session (creating its tables takes seconds)."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()  # creates the tables once
    return uri


@pytest.fixture
def mlflow_client(tracking_store: str, monkeypatch: pytest.MonkeyPatch):
    """Points the stages at the session's throwaway store; returns a client of it."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_store)
    return mlflow.MlflowClient(tracking_uri=tracking_store)


# ------------------------------------------------------------------ the pipeline in a temporary repository

def run_checked(cmd: list[str], cwd: Path, env: dict) -> str:
    """Runs `cmd`; fails the test with the end of its output unless it exits 0; returns stdout + stderr."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def copy_repo(dest: Path) -> None:
    """Copies what git would ship (tracked files and new files not ignored), nothing generated."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """A temporary git + DVC repository made from this checkout as a fresh clone would be (the committed
    params.yaml, the embedded sample, no dvc.lock), after `dvc repro` (committed): (its path, the environment
    the commands ran in, the output of `dvc repro`). Its records must equal the committed ones
    (test_pipeline.py). Shared by the session, since it takes minutes: tests that change its workspace use
    their own copy (`copy_pipeline_repo`)."""
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    copy_repo(repo)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for f in ("dvc.lock", "data.dvc"):
        (repo / f).unlink(missing_ok=True)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run_checked(["git", "init", "-q"], repo, env)
    run_checked(["unet-ssl", "data", "sample"], repo, env)
    run_checked([*git, "add", "-A"], repo, env)
    run_checked([*git, "commit", "-qm", "sample"], repo, env)
    out = run_checked(["dvc", "repro"], repo, env)
    run_checked([*git, "add", "-A"], repo, env)
    run_checked([*git, "commit", "-qm", "repro"], repo, env)
    return repo, env, out


def copy_pipeline_repo(pipeline_repo: tuple[Path, dict, str], dest: Path) -> Path:
    """A copy of the pipeline repository (git history, DVC cache, outputs; not DVC's temporary folder, nor
    the MLflow store, whose runs point at the original's artifact folders) at `dest`, to change without
    touching the shared one."""
    repo = pipeline_repo[0]

    def ignore(folder: str, names: list[str]) -> list[str]:
        if Path(folder) == repo / ".dvc":
            return ["tmp"]
        return [n for n in names if n != ".gitkeep"] if Path(folder) == repo / "mlruns" else []

    shutil.copytree(repo, dest, symlinks=True, ignore=ignore)
    return dest
