"""Bringing data into data/raw and versioning it with DVC, on real folders."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unet_ssl.data import sources
from unet_ssl.data.images import BadInputError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch):
    """An empty git + DVC repository holding a copy of the embedded sample, as cwd."""
    shutil.copytree(REPO / "sample", tmp_path / "sample")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["dvc", "init", "-q"], check=True)
    return tmp_path


def test_sample_goes_to_data_raw_and_is_versioned_in_data_dvc(dvc_repo):
    assert sources.use_sample()
    sources.dvc_add()
    text = (dvc_repo / "data.dvc").read_text()
    assert "path: data/raw\n" in text and "nfiles: 81" in text
    assert not (dvc_repo / "data" / "raw.dvc").exists()
    assert not sources.use_sample(), "an existing data/raw is left alone"


def test_import_replaces_data_raw_and_updates_data_dvc(dvc_repo, tmp_path_factory):
    sources.use_sample()
    sources.dvc_add()
    before = (dvc_repo / "data.dvc").read_text()
    other = tmp_path_factory.mktemp("other")
    shutil.copytree(dvc_repo / "sample", other, dirs_exist_ok=True)
    for p in sorted((other / "oxford-iiit-pet" / "images").glob("Bengal_*.jpg"))[:3]:
        p.unlink()
        (other / "oxford-iiit-pet" / "annotations" / "trimaps" / f"{p.stem}.png").unlink()
    sources.copy_tree(other)
    sources.dvc_add()
    after = (dvc_repo / "data.dvc").read_text()
    assert before != after and "nfiles: 75" in after
    status = subprocess.run(["dvc", "status", "data.dvc"], capture_output=True, text=True, check=True).stdout
    assert "up to date" in status


def test_import_refuses_a_folder_in_another_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(BadInputError, match="missing oxford-iiit-pet/images"):
        sources.copy_tree(tmp_path, tmp_path / "raw")
    with pytest.raises(BadInputError, match="does not exist"):
        sources.copy_tree(tmp_path / "nowhere", tmp_path / "raw")


def test_download_uses_torchvision_and_finds_existing_archives_offline(dvc_repo):
    """torchvision's OxfordIIITPet skips the download when the layout is already there."""
    pytest.importorskip("torchvision")
    dest = dvc_repo / "data" / "raw"
    shutil.copytree(dvc_repo / "sample" / "oxford-iiit-pet", dest / "oxford-iiit-pet")
    sources.download_pets(dest)
    assert (dest / "pretrain" / "classes.tsv").is_file(), "the sample's pretraining photos are added"
