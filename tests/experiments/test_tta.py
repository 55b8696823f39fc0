"""`unet-ssl tta` on the released model and the real sample pets prepared at 128 px: every mode scored on
validation and test, the choice made on validation, and `--tta` honoured by `evaluate --checkpoint`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, SAMPLE, SAMPLE_PETS, SMALL_PETS
from PIL import Image

from unet_ssl.cli import TTA_MODES as CLI_TTA_MODES
from unet_ssl.cli import main
from unet_ssl.core.inference import TTA_MODES, evaluate_model, load_segmenter, with_tta
from unet_ssl.core.runtime import make_runtime
from unet_ssl.data.preparation import prepare_pets
from unet_ssl.data.splits import split_indices
from unet_ssl.experiments import tta

MODEL = REPO / "models" / "pets-unet.pt"


@pytest.fixture(scope="module")
def pets_128(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    data = yaml.safe_load((REPO / "params.yaml").read_text())["data"]
    prepare_pets(SAMPLE, out, data | {"image_size": 128}, seed=0)
    return out / "pets.pt"


def test_the_cli_names_the_core_modes():
    assert CLI_TTA_MODES == tuple(TTA_MODES)


def test_every_mode_is_scored_and_the_best_on_validation_is_chosen(pets_128, tmp_path, capsys):
    out = tmp_path / "tta.md"
    main(["tta", "--checkpoint", str(MODEL), "--pets", str(pets_128), "--out", str(out)])
    scored, _ = tta.score_modes(MODEL, pets_128)
    best = max(scored, key=lambda s: s.jaccard("val"))
    report = out.read_text()
    assert f"Chosen: **{best.mode}**" in report and f"tta: chose {best.mode} on validation" in capsys.readouterr().out
    for s in scored:
        assert f"| {s.mode} |" in report or f"| **{s.mode}** |" in report
    pets = torch.load(pets_128, weights_only=True)
    test = split_indices(pets["split"], "test")
    runtime = make_runtime({"device": "cpu", "precision": "fp32", "channels_last": False})
    model, _ = load_segmenter(MODEL)
    for s in scored:  # each mode's test score is that of the wrapped model, however the study batches it
        direct, _ = evaluate_model(with_tta(model, s.mode), pets["images"][test], pets["masks"][test], runtime, 5, 256)
        assert s.jaccard("test") == pytest.approx(direct["jaccard"], abs=1e-9)


def test_a_tie_goes_to_fewer_views():
    same = np.zeros((2, 3, 3), dtype=np.int64)
    same[:, 0, 0] = 5
    scored = [tta.Scored(mode, {"val": same, "test": same}, 0.0) for mode in TTA_MODES]
    assert tta.choose(scored).mode == "none"


def test_pets_at_another_resolution_are_refused_naming_the_file(tmp_path):
    data = yaml.safe_load((REPO / "params.yaml").read_text())["data"]
    prepare_pets(SAMPLE, tmp_path, data | {"image_size": 64}, seed=0)
    with pytest.raises(ValueError, match=r"pets\.pt holds 64px pets"):
        tta.score_modes(MODEL, tmp_path / "pets.pt")


def test_evaluate_folder_honours_tta(tmp_path):
    images, trimaps = tmp_path / "images", tmp_path / "trimaps"
    images.mkdir(), trimaps.mkdir()
    for name in SMALL_PETS:
        shutil.copy2(SAMPLE_PETS / "images" / f"{name}.jpg", images)
        shutil.copy2(SAMPLE_PETS / "annotations" / "trimaps" / f"{name}.png", trimaps)
    scores = {}
    for mode in ("none", "flip"):
        main(["evaluate", "--checkpoint", str(MODEL), "--images", str(images), "--trimaps", str(trimaps),
              "--out", str(tmp_path / f"{mode}.json"), "--tta", mode])
        scores[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
    assert [s["tta"] for s in scores.values()] == ["none", "flip"]
    assert scores["none"]["jaccard"] != scores["flip"]["jaccard"]


def test_predict_honours_tta(tmp_path):
    images = SAMPLE_PETS / "images"
    masks = {}
    for mode in ("none", "flip"):
        main(["predict", "--checkpoint", str(MODEL), "--out", str(tmp_path / mode), "--tta", mode,
              *(str(images / f"{name}.jpg") for name in SMALL_PETS)])
        masks[mode] = [np.asarray(Image.open(tmp_path / mode / f"{name}.png")) for name in SMALL_PETS]
    assert any((a != b).any() for a, b in zip(masks["none"], masks["flip"]))
