"""The two architectural switches the paper's Table 2 turns: a frozen encoder (parameters and
batch-norm statistics stay bit-identical) and the no-skip U-Net (no path from the encoder's
shallow levels to the decoder)."""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from conftest import SAMPLE_PETS, SMALL_PETS

from unet_ssl.core import augment
from unet_ssl.core.losses import dice_loss
from unet_ssl.core.model import UNet, UNetConfig, freeze_encoder, train_mode
from unet_ssl.core.resize import resize_image
from unet_ssl.data.images import decode_rgb


@lru_cache(maxsize=None)
def _decoded(size: int) -> torch.Tensor:
    return torch.stack([resize_image(decode_rgb(SAMPLE_PETS / "images" / f"{n}.jpg").pixels, size) for n in SMALL_PETS])


def sample_photos(size: int = 32) -> torch.Tensor:
    """Real pets of the embedded sample, as float images in [0, 1]."""
    return augment.to_float(_decoded(size))


def encoder_state(model: UNet) -> dict[str, torch.Tensor]:
    """Parameters and buffers (running mean/var, batches tracked) of the encoder, copied."""
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}


def train_steps(model: UNet, frozen: bool, steps: int = 3) -> None:
    x = sample_photos()
    targets = torch.randint(0, 3, (x.shape[0], 32, 32), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        train_mode(model, frozen)
        loss = dice_loss(model(x), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_a_frozen_encoder_keeps_its_parameters_and_batchnorm_statistics_bit_identical():
    torch.manual_seed(0)
    model = UNet(UNetConfig())
    before = encoder_state(model)
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    freeze_encoder(model)
    train_steps(model, frozen=True)
    after = encoder_state(model)
    assert before.keys() == after.keys() and any("running_var" in k for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert not model.encoder.training and model.decoder.training
    assert any(not torch.equal(v, model.decoder.state_dict()[k]) for k, v in decoder_before.items())


def test_without_freezing_the_same_steps_change_encoder_weights_and_statistics():
    torch.manual_seed(0)
    model = UNet(UNetConfig())
    before = encoder_state(model)
    train_steps(model, frozen=False)
    after = encoder_state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("running_mean" in k for k in changed) and any(k.endswith("weight") for k in changed)


@pytest.mark.parametrize("skips", [True, False])
def test_only_the_skip_unet_has_a_path_from_shallow_encoder_features_to_the_output(skips):
    torch.manual_seed(0)
    model = UNet(UNetConfig(skip_connections=skips)).eval()
    features = [f.detach().requires_grad_(True) for f in model.encoder(sample_photos())]
    out = model.head(model.decoder(features))
    grads = torch.autograd.grad(out.square().sum(), features, allow_unused=True)
    *shallow, bottleneck = grads
    assert bottleneck is not None and bottleneck.abs().sum() > 0
    if skips:
        assert all(g is not None and g.abs().sum() > 0 for g in shallow)
    else:  # no autograd path at all: the decoder never reads the shallow levels
        assert all(g is None for g in shallow)


@pytest.mark.parametrize("skips", [True, False])
def test_replacing_the_skip_features_changes_the_output_only_with_skips(skips):
    torch.manual_seed(0)
    model = UNet(UNetConfig(skip_connections=skips)).eval()
    with torch.no_grad():
        features = model.encoder(sample_photos())
        noise = [torch.randn_like(f) * 10 for f in features[:-1]]
        out = model.head(model.decoder(features))
        perturbed = model.head(model.decoder([*noise, features[-1]]))
        assert torch.equal(out, model(sample_photos()))  # the decomposition is the model's own forward
    assert torch.equal(out, perturbed) != skips
    first_convs = [block[0].in_channels for block in model.decoder.blocks]
    assert first_convs == ([256, 128, 64] if skips else [128, 64, 32])
