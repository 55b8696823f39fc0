"""The public step functions are the training loops' own steps: one step of `pretrain()` / `finetune()`
gives exactly the loss of the step functions on the same batch, seeds and initial weights (what
`unet-ssl bench` times is therefore what the pipeline runs)."""
from __future__ import annotations

import pytest
import torch

from unet_ssl.core.finetuning import FinetuneConfig, build_model, finetune, finetune_inputs, finetune_loss
from unet_ssl.core.model import train_mode
from unet_ssl.core.pretraining import (
    PretrainConfig,
    pretrain,
    pretrain_inputs,
    pretrain_loss,
    pretraining_networks,
    trained_network,
)
from unet_ssl.core.runtime import make_runtime, seed_everything
from unet_ssl.data.preparation import prepare_pets

CPU = make_runtime({"device": "cpu", "precision": "fp32", "channels_last": False})
BATCH = 8  # one step per epoch: the epoch's loss is that step's loss


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> dict:
    """The embedded sample's real pets at 32 px."""
    from conftest import SAMPLE

    out = tmp_path_factory.mktemp("pets")
    data = {"image_size": 32, "split": "random", "test_fraction": 0.1, "val_fraction": 0.2, "exclude": [],
            "on_bad_input": "skip"}
    prepare_pets(SAMPLE, out, data, seed=0)
    return torch.load(out / "pets.pt", weights_only=True)


@pytest.mark.parametrize("method", ["simclr", "mae_patch", "dense"])
def test_a_pretraining_step_is_pretrain_inputs_then_pretrain_loss(pets, method):
    images = pets["images"][:BATCH]
    cfg = PretrainConfig(method=method, epochs=1, batch_size=BATCH, image_size=32, mask_patch=8)
    (row,) = pretrain(images, cfg, True, CPU, seed_everything(0))["history"]

    generator = seed_everything(0)  # the loop's draws, in its order: weights, batch order, then the views' seed
    model, head = pretraining_networks(cfg, True, CPU)
    batch = images[torch.randperm(BATCH, generator=generator)]
    views = CPU.generator(int(torch.randint(2**62, (1,), generator=generator)))
    net = trained_network(model, head, cfg)
    net.train()
    assert pretrain_loss(net, pretrain_inputs(batch, cfg, CPU, views), cfg, CPU).item() == row["loss"]


@pytest.mark.parametrize("augment", ["none", "flip_crop"])
def test_a_finetuning_step_is_finetune_inputs_then_finetune_loss(pets, augment):
    train_idx, val_idx = torch.arange(BATCH), torch.arange(BATCH, BATCH + 2)
    cfg = FinetuneConfig(epochs=1, batch_size=BATCH, image_size=32, augment=augment)
    (row,) = finetune(pets["images"], pets["masks"], train_idx, val_idx, cfg, None, CPU, seed_everything(1))["history"]

    generator = seed_everything(1)
    model = CPU.model(build_model(cfg, None))
    train_mode(model, cfg.freeze_encoder)
    idx = train_idx[torch.randperm(BATCH, generator=generator)]
    x, y = finetune_inputs(pets["images"][idx], pets["masks"][idx], cfg, CPU, generator)
    assert finetune_loss(model, x, y, CPU).item() == row["train_loss"]
