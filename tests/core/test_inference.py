"""Test-time augmentation: each mode's logits are the mean over its views mapped back to the input's pixels."""
from __future__ import annotations

import pytest
import torch

from unet_ssl.core.inference import TTA_MODES, ViewAveraged, with_tta
from unet_ssl.core.model import UNet, UNetConfig


@pytest.fixture(scope="module")
def model() -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(widths=(8, 16, 32, 64))).eval()  # random weights: not mirror-symmetric


def test_none_is_the_model_itself(model):
    assert with_tta(model, "none") is model


def test_flip_averages_the_logits_of_the_photo_and_of_its_mirror_image_mirrored_back(model):
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1)).flip(-1)) / 2
        assert torch.allclose(with_tta(model, "flip")(x), expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["flip", "flip_scales"])
def test_a_mirrored_photo_gets_the_mirrored_logits(model, mode):
    """Fails if a view's logits were not mapped back: the views of x and of its mirror image are the same set."""
    x = torch.rand(1, 3, 64, 64)
    tta = with_tta(model, mode)
    with torch.no_grad():
        assert torch.allclose(tta(x.flip(-1)), tta(x).flip(-1), atol=1e-5)
        assert not torch.allclose(model(x.flip(-1)), model(x).flip(-1), atol=1e-5)  # the model alone is not


def test_scales_keep_the_input_size_and_a_side_the_unet_can_halve(model):
    tta = ViewAveraged(model, scales=(1.0, 1.25, 0.7), flip=False)
    seen = []
    handle = model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        with torch.no_grad():
            out = tta(torch.rand(1, 3, 64, 40))
    finally:
        handle.remove()
    assert out.shape == (1, 3, 64, 40)
    assert seen == [(64, 40), (80, 48), (48, 32)]  # 1.25x and 0.7x rounded to multiples of 8


def test_unknown_mode_is_refused_with_the_modes(model):
    with pytest.raises(ValueError, match="none, flip, flip_scales"):
        with_tta(model, "rotate")
    assert set(TTA_MODES) == {"none", "flip", "flip_scales"}
