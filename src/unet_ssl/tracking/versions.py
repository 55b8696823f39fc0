"""Which code and which data a run used: the git commit and the state of the working tree, and content
hashes of the files a stage read (or the md5 DVC recorded for a tracked folder). Plain functions of the
repository and the files: MLflow is not imported here."""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

from unet_ssl.core.checkpoint import file_digest

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
DIGEST = 12  # hex digits of a dataset digest shown in the UI (MLflow suggests 8-10, keeps at most 36)


def repo_root(start: Path | None = None) -> Path:
    """The repository holding `dvc.yaml`; inside a DVC temporary experiment copy
    (`.dvc/tmp/exps/...`) it is the repository that made the copy, so runs land in one store."""
    path = (start or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for candidate in (path, *path.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return path


# --- provenance -------------------------------------------------------------------------------------

def _git(args: list[str], cwd: Path) -> bytes | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(root: Path) -> str:
    out = _git(["rev-parse", "HEAD"], root)
    return out.decode().strip() if out else UNKNOWN


def pipeline_outputs(top: Path) -> list[str]:
    """Git pathspecs of what the DVC pipelines write (outs, metrics, plots of every stage of `dvc.yaml`,
    `grid/dvc.yaml`, ...; their `dvc.lock`): a run's own outputs are not a change to the code that made it."""
    import yaml

    specs = []
    for dvc_yaml in [top / "dvc.yaml", *sorted(top.glob("*/dvc.yaml"))]:
        if not dvc_yaml.is_file():
            continue
        base = dvc_yaml.parent
        specs.append((base / "dvc.lock").relative_to(top).as_posix())
        try:
            stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
        except (OSError, yaml.YAMLError):
            continue
        for stage in stages.values():
            stage = stage.get("do", stage) if isinstance(stage, dict) else {}
            wdir = (base / stage.get("wdir", ".")).resolve()
            for kind in ("outs", "metrics", "plots"):
                for entry in stage.get(kind) or []:
                    for path in ([entry] if isinstance(entry, str) else list(entry) if isinstance(entry, dict) else []):
                        if "${" in path:  # foreach templates: any value
                            path = path.split("${")[0] + "**"
                        try:
                            specs.append(os.path.relpath(wdir / path, top.resolve()).replace(os.sep, "/"))
                        except ValueError:
                            pass
    return sorted(set(specs))


def provenance(where: Path | None = None) -> dict[str, str]:
    """Tags naming the code a run comes from: `git_commit`, `git_dirty` ("true" when tracked files differ
    from the commit, per `git status --porcelain`), `git_diff_sha256` (sha256 of `git diff HEAD --binary`;
    "clean" when there is no difference) and `git_untracked` (count of untracked, not ignored files,
    which no diff covers). The pipeline's own outputs (see `pipeline_outputs`) are left out of all three,
    else a stage would see its predecessors' fresh metrics as uncommitted changes. Without git, or
    outside a repository, every value is "unknown"."""
    where = Path(where or Path.cwd())
    commit = git_commit(where)
    top = _git(["rev-parse", "--show-toplevel"], where)
    if commit == UNKNOWN or top is None:
        return {"git_commit": UNKNOWN, "git_dirty": UNKNOWN, "git_diff_sha256": UNKNOWN, "git_untracked": UNKNOWN}
    top_dir = Path(top.decode().strip())
    excludes = [f":(exclude,glob){spec}" for spec in pipeline_outputs(top_dir)]
    status = _git(["status", "--porcelain", "--", ".", *excludes], top_dir)
    diff = _git(["diff", "HEAD", "--binary", "--", ".", *excludes], top_dir)
    if status is None or diff is None:
        return {"git_commit": commit, "git_dirty": UNKNOWN, "git_diff_sha256": UNKNOWN, "git_untracked": UNKNOWN}
    lines = status.decode(errors="replace").splitlines()
    changed = [line for line in lines if line and not line.startswith("??")]
    return {"git_commit": commit, "mlflow.source.git.commit": commit, "git_dirty": str(bool(changed)).lower(),
            "git_diff_sha256": hashlib.sha256(diff).hexdigest() if changed or diff else "clean",
            "git_untracked": str(len(lines) - len(changed))}


# --- data versions ------------------------------------------------------------------------------------

def _dvc_md5(path: Path) -> tuple[str, str] | None:
    """(md5, .dvc file) when `path` is the output of a `.dvc` file beside it or in a parent folder
    (e.g. data/raw of data.dvc) and the folder still holds as many files as that `.dvc` file recorded."""
    import yaml

    path = path.resolve()
    for folder in (path.parent, *path.parent.parents):
        for dvc_file in sorted(folder.glob("*.dvc")):
            try:
                outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
            except (OSError, yaml.YAMLError):
                continue
            for out in outs:
                if (folder / str(out.get("path", ""))).resolve() != path or "md5" not in out:
                    continue
                if path.is_dir() and "nfiles" in out and out["nfiles"] != sum(
                        1 for p in path.rglob("*") if p.is_file()):
                    log.warning("%s does not match %s (file count differs): hashing the files instead", path, dvc_file)
                    return None
                return str(out["md5"]).removesuffix(".dir"), dvc_file.name
        if (folder / ".dvc").is_dir() or (folder / ".git").exists():
            break
    return None


def data_version(paths: Path | str | list) -> dict[str, str]:
    """What a stage read, as {digest, sha256 or dvc_md5, files, bytes}. One file: its sha256. A folder or
    several files: the sha256 of the sorted "<sha256>  <relative path>" lines of every file. A folder that
    a `.dvc` file tracks (data/raw of data.dvc): the md5 DVC recorded. `digest`, what the UI shows, is
    its first 12 hex digits; the full hash is in `sha256` / `dvc_md5`."""
    items = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    if len(items) == 1 and items[0].is_dir():
        tracked = _dvc_md5(items[0])
        if tracked:
            md5, dvc_file = tracked
            files = [p for p in items[0].rglob("*") if p.is_file()]
            return {"digest": md5[:DIGEST], "dvc_md5": md5, "dvc_file": dvc_file, "files": str(len(files)),
                    "bytes": str(sum(p.stat().st_size for p in files))}
    if len(items) == 1 and items[0].is_file():
        sha = file_digest(items[0])
        return {"digest": sha[:DIGEST], "sha256": sha, "files": "1", "bytes": str(items[0].stat().st_size)}
    files: list[tuple[str, Path]] = []
    for item in items:
        if item.is_dir():
            files += [(p.relative_to(item).as_posix(), p) for p in item.rglob("*") if p.is_file()]
        elif item.is_file():
            files.append((item.as_posix(), item))
        else:
            raise FileNotFoundError(item)
    listing = "".join(f"{file_digest(p)}  {name}\n" for name, p in sorted(files))
    sha = hashlib.sha256(listing.encode()).hexdigest()
    return {"digest": sha[:DIGEST], "sha256": sha, "files": str(len(files)),
            "bytes": str(sum(p.stat().st_size for _, p in files))}
