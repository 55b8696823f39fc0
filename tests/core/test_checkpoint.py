"""Checkpoints: atomic writes, `torch.load(weights_only=True)` (a malicious pickle is refused and
never runs), a format version and the architecture inside, and a clear message saying what differs
when a checkpoint does not fit the requested network (incl. a no-skip MAE into a skip U-Net)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE, SMALL_PETS, run_cli

from unet_ssl.core import checkpoint
from unet_ssl.core.checkpoint import CheckpointError
from unet_ssl.core.finetuning import FinetuneConfig, build_model
from unet_ssl.core.model import UNet, UNetConfig
from unet_ssl.core.pretraining import PretrainConfig, pretrain
from unet_ssl.core.runtime import make_runtime, seed_everything
from unet_ssl.data.preparation import prepare_pets, prepare_pretrain

CPU = {"device": "cpu", "channels_last": False}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> torch.Tensor:
    """16 real pretraining photos of the sample at 32px."""
    out = tmp_path_factory.mktemp("photos")
    prepare_pretrain(SAMPLE, out, {"pretrain_image_size": 32, "pretrain_limit": 16, "exclude_pets": False,
                                   "on_bad_input": "error"}, seed=0)
    return torch.load(out / "pretrain.pt", weights_only=True)["images"]


def pretrained(photos: torch.Tensor, method: str, skip: bool) -> dict:
    cfg = PretrainConfig(method=method, epochs=1, batch_size=8, image_size=32, mask_patch=8)
    return pretrain(photos, cfg, skip, make_runtime(CPU), seed_everything(0))


@pytest.fixture(scope="module")
def mae_no_skip(photos) -> dict:
    """A real (one-epoch) masked-autoencoder checkpoint of a U-Net without skip connections."""
    return pretrained(photos, "mae_patch", skip=False)


def test_atomic_save_round_trips_with_weights_only_and_leaves_no_temp_file(tmp_path):
    model = UNet(UNetConfig(skip_connections=False))
    path = tmp_path / "ckpt" / "model.pt"
    checkpoint.save_atomic(checkpoint.model_checkpoint(model, history=[{"epoch": 1, "loss": 0.5}]), path)
    assert os.listdir(path.parent) == ["model.pt"]
    raw = torch.load(path, weights_only=True)  # plain torch, the safe way
    assert raw["format_version"] == checkpoint.FORMAT_VERSION and raw["arch"] == model.config.to_dict()
    rebuilt = checkpoint.load_model(path)
    assert rebuilt.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))


class RunsCode:
    """What a malicious checkpoint carries: unpickling it would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format_version": checkpoint.FORMAT_VERSION, "payload": RunsCode(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        checkpoint.load(path)
    assert not marker.exists()


def test_truncated_missing_and_foreign_checkpoints_say_what_is_wrong(tmp_path):
    path = tmp_path / "model.pt"
    checkpoint.save_atomic(checkpoint.model_checkpoint(UNet(UNetConfig())), path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=f"checkpoint {cut} cannot be read"):
        checkpoint.load(cut)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.load(tmp_path / "nowhere.pt")
    old = tmp_path / "old.pt"
    torch.save({"format_version": 0, "model": {}}, old)
    with pytest.raises(CheckpointError, match="has format version 0; this unet-ssl reads version 1"):
        checkpoint.load(old)
    bare = tmp_path / "bare.pt"
    torch.save(UNet(UNetConfig()).state_dict(), bare)  # a plain state dict from elsewhere
    with pytest.raises(CheckpointError, match="has format version None"):
        checkpoint.load(bare)
    no_arch = tmp_path / "no_arch.pt"
    torch.save({"format_version": checkpoint.FORMAT_VERSION, "model": {}}, no_arch)
    with pytest.raises(CheckpointError, match="carries no usable architecture config"):
        checkpoint.load_model(no_arch)


def test_check_arch_names_every_difference():
    have = UNetConfig(widths=(16, 32, 64, 128), skip_connections=False).to_dict()
    with pytest.raises(CheckpointError) as err:
        checkpoint.check_arch(have, UNetConfig(), Path("ckpt.pt"))
    assert str(err.value) == ("checkpoint ckpt.pt does not match the requested architecture: "
                              "widths: checkpoint has [16, 32, 64, 128], requested [32, 64, 128, 256]; "
                              "skip_connections: checkpoint has False, requested True")
    checkpoint.check_arch(have, UNetConfig(widths=(16, 32, 64, 128)), Path("ckpt.pt"), ignore=("skip_connections",))


def test_no_skip_mae_checkpoint_cannot_seed_a_skip_unet(mae_no_skip):
    """A masked autoencoder's decoder was trained without skips; loading it into a skip U-Net would
    silently mismatch, so it fails and says why."""
    mae = mae_no_skip
    with pytest.raises(CheckpointError, match="skip_connections: checkpoint has False, requested True"):
        build_model(FinetuneConfig(skip_connections=True, image_size=32), mae, Path("pretrained.pt"))
    model = build_model(FinetuneConfig(skip_connections=False, image_size=32), mae, Path("pretrained.pt"))
    assert torch.equal(model.state_dict()["decoder.ups.0.weight"], mae["model"]["decoder.ups.0.weight"])


def test_simclr_encoder_from_a_no_skip_run_fits_a_skip_unet(photos):
    """SimCLR pretrains the encoder only, which is the same with or without skips."""
    simclr = pretrained(photos, "simclr", skip=False)
    model = build_model(FinetuneConfig(skip_connections=True, image_size=32), simclr, Path("pretrained.pt"))
    encoder = {k: v for k, v in simclr["model"].items() if k.startswith("encoder.")}
    assert encoder and all(torch.equal(model.state_dict()[k], v) for k, v in encoder.items())


def test_cli_finetune_from_mismatched_checkpoint_exits_1_with_the_difference(mae_no_skip, make_workspace,
                                                                             mlflow_client, capsys):
    ws = make_workspace({"data.image_size": 32, "finetune.image_size": 32, "finetune.skip_connections": True,
                         "finetune.epochs": 1, "runtime.device": "cpu"}, pets=SMALL_PETS, pretrain=False)
    prepare_pets(ws / "data" / "raw", ws / "data" / "prepared" / "pets",
                 {"image_size": 32, "split": "random", "test_fraction": 0.2, "val_fraction": 0.2, "exclude": [],
                  "on_bad_input": "error"}, seed=0)
    checkpoint.save_atomic(mae_no_skip, ws / "checkpoints" / "pretrained.pt")
    code, _, err = run_cli(["finetune"], capsys)
    assert code == 1
    assert ("unet-ssl finetune: error: checkpoint checkpoints/pretrained.pt does not match the requested architecture: "
            "skip_connections: checkpoint has False, requested True") in err
    assert not (ws / "checkpoints" / "finetuned.pt").exists()
    experiment = mlflow_client.get_experiment_by_name("unet-ssl").experiment_id
    run = mlflow_client.search_runs([experiment], "tags.stage = 'finetune'", order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "FAILED"
