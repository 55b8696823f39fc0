"""Batch-norm statistics re-estimated on real photos: exact population statistics, nothing else touched,
and fine-tuning with a frozen encoder uses them."""
from __future__ import annotations

import torch
from conftest import SAMPLE_PETS, SMALL_PETS

from unet_ssl.config import FinetuneConfig
from unet_ssl.core import augment
from unet_ssl.core.batchnorm import batchnorm_layers, recompute_batchnorm_stats
from unet_ssl.core.finetuning import finetune
from unet_ssl.core.model import UNet, UNetConfig
from unet_ssl.core.resize import resize_image, resize_mask
from unet_ssl.core.runtime import make_runtime
from unet_ssl.data.images import decode_rgb, decode_trimap, trimap_to_classes

SIZE = 32


def real_pets() -> tuple[torch.Tensor, torch.Tensor]:
    images = [resize_image(decode_rgb(SAMPLE_PETS / "images" / f"{n}.jpg").pixels, SIZE) for n in SMALL_PETS]
    masks = [resize_mask(trimap_to_classes(decode_trimap(SAMPLE_PETS / "annotations" / "trimaps" / f"{n}.png")), SIZE)
             for n in SMALL_PETS]
    return torch.stack(images), torch.stack(masks).long()


def runtime():
    return make_runtime({"device": "cpu", "precision": "fp32", "channels_last": False, "num_threads": 0})


def test_statistics_are_the_population_mean_and_variance_of_the_photos():
    images, _ = real_pets()
    model = UNet(UNetConfig(out_channels=3))
    model.eval()
    first = batchnorm_layers(model)[0]
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    n = recompute_batchnorm_stats(model, images, runtime(), batch_size=len(images))
    assert n == len(batchnorm_layers(model)) > 0
    first_block = model.encoder.levels[0]
    assert first_block[1] is first
    with torch.no_grad():
        conv_out = first_block[0](augment.to_float(images))  # what the first norm layer sees
    torch.testing.assert_close(first.running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first.running_var, conv_out.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
    assert not model.training and not first.training, "train/eval modes are restored"
    assert first.momentum == 0.1, "momentum is restored"
    after = {k: v for k, v in model.state_dict().items() if k in weights}
    assert all(torch.equal(weights[k], after[k]) for k in weights), "weights and biases are untouched"


def test_batches_average_to_the_same_statistics():
    images, _ = real_pets()
    one, many = UNet(UNetConfig(out_channels=3)), UNet(UNetConfig(out_channels=3))
    many.load_state_dict(one.state_dict())
    recompute_batchnorm_stats(one, images, runtime(), batch_size=len(images))
    recompute_batchnorm_stats(many, images, runtime(), batch_size=2)
    torch.testing.assert_close(batchnorm_layers(one)[0].running_mean, batchnorm_layers(many)[0].running_mean)


def test_a_frozen_encoder_fine_tunes_with_the_recomputed_statistics():
    images, masks = real_pets()
    train, val = torch.arange(4), torch.arange(4, 6)
    results = {}
    for recompute in (False, True):
        cfg = FinetuneConfig(epochs=1, batch_size=2, image_size=SIZE, freeze_encoder=True, augment="none",
                             recompute_bn_stats=recompute)
        torch.manual_seed(0)  # the same random initial weights both times
        results[recompute] = finetune(images, masks, train, val, cfg, None, runtime(), torch.Generator().manual_seed(0))
    key = next(k for k in results[True]["model"] if k.startswith("encoder") and k.endswith("running_mean"))
    assert torch.count_nonzero(results[False]["model"][key]) == 0, "a frozen random encoder keeps mean 0"
    assert torch.count_nonzero(results[True]["model"][key]) > 0, "the option gathers the photos' statistics"
    assert results[True]["config"]["recompute_bn_stats"] is True
    frozen = [k for k in results[True]["model"]
              if k.startswith("encoder") and "running" not in k and "num_batches" not in k]
    assert all(torch.equal(results[True]["model"][k], results[False]["model"][k]) for k in frozen), \
        "the frozen encoder's weights are the same random ones either way"
