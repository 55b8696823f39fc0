"""Bringing data into `data/raw`: the embedded sample, any folder in the shared layout, or the
official Oxford-IIIT Pet archives through torchvision; then versioning it with DVC."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

from unet_ssl.data.images import BadInputError
from unet_ssl.paths import RAW, SAMPLE

log = logging.getLogger(__name__)

LAYOUT = ("oxford-iiit-pet/images", "oxford-iiit-pet/annotations/trimaps", "pretrain")


def check_layout(source: Path) -> None:
    if not source.is_dir():
        raise BadInputError(source, "folder does not exist")
    missing = [p for p in LAYOUT if not (source / p).is_dir()]
    if missing:
        raise BadInputError(source, f"not in the expected layout; missing {', '.join(missing)} (expected "
                                    "oxford-iiit-pet/images, oxford-iiit-pet/annotations/trimaps and pretrain/*.tar)")


def copy_tree(source: Path, dest: Path = RAW) -> None:
    """Replaces `dest` with a copy of the two dataset folders of `source` (nothing else is taken)."""
    check_layout(source)
    staging = dest.with_name(dest.name + ".incoming")
    shutil.rmtree(staging, ignore_errors=True)
    for sub in ("oxford-iiit-pet", "pretrain"):
        shutil.copytree(source / sub, staging / sub)
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)


DVC_FILE = Path("data.dvc")
# The DVC of this interpreter, so `.venv/bin/unet-ssl data ...` works without the venv on PATH.
DVC = [sys.executable, "-m", "dvc"]


def dvc_add() -> None:
    """Versions data/raw with DVC in the top-level `data.dvc` (DVC 3's `dvc add` would write
    data/raw.dvc, so a first add is moved up; later ones re-commit data.dvc)."""
    if not Path(".dvc").is_dir():
        log.warning("no .dvc folder here: %s is not versioned", RAW)
        return
    if not DVC_FILE.exists():
        subprocess.run([*DVC, "add", "-q", str(RAW)], check=True)
        nested = RAW.with_name(RAW.name + ".dvc")
        DVC_FILE.write_text(nested.read_text().replace(f"path: {RAW.name}\n", f"path: {RAW.as_posix()}\n"))
        nested.unlink()
    subprocess.run([*DVC, "commit", "-f", "-q", str(DVC_FILE)], check=True)


def use_sample(force: bool = False) -> bool:
    """Puts the embedded sample in place unless data/raw already holds data. Returns True if copied."""
    if RAW.exists() and not force:
        log.info("%s already exists; leaving it as it is", RAW)
        return False
    copy_tree(SAMPLE)
    return True


def download_pets(dest: Path = RAW) -> None:
    """Fetches the official Oxford-IIIT Pet images and trimaps with torchvision (needs the internet
    unless they are already there); the pretraining shards in `dest/pretrain` are kept."""
    try:
        from torchvision.datasets import OxfordIIITPet
    except ImportError as e:
        raise RuntimeError(
            f"`unet-ssl data download` needs torchvision ({e}); pip install 'unet-ssl[vision]'") from None
    dest.mkdir(parents=True, exist_ok=True)
    for split in ("trainval", "test"):
        OxfordIIITPet(str(dest), split=split, target_types="segmentation", download=True)
    if not (dest / "pretrain").is_dir():
        shutil.copytree(SAMPLE / "pretrain", dest / "pretrain")
        log.warning("no pretraining photos in %s: copied the embedded sample's; import a folder for more", dest)
