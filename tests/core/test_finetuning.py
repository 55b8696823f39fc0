"""Fine-tuning as the tables use it: a frozen pretrained encoder comes out of `finetune()`
bit-identical (weights and batch-norm statistics), and the training subsets are seeded and nested."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unet_ssl.core import checkpoint
from unet_ssl.core.finetuning import FinetuneConfig, build_model, finetune
from unet_ssl.core.pretraining import PretrainConfig, pretrain, pretraining_networks
from unet_ssl.core.runtime import make_runtime, seed_everything
from unet_ssl.data.preparation import prepare_pets
from unet_ssl.data.splits import subset_indices

CPU = make_runtime({"device": "cpu", "precision": "fp32", "channels_last": False})
DATA = {"image_size": 32, "split": "random", "test_fraction": 0.1, "val_fraction": 0.2, "exclude": [],
        "on_bad_input": "skip"}


@pytest.fixture(scope="module")
def pets(tmp_path_factory) -> dict:
    """The embedded sample's real pets at 32 px with their split."""
    from conftest import SAMPLE

    out = tmp_path_factory.mktemp("pets")
    prepare_pets(SAMPLE, out, DATA, seed=0)
    return torch.load(out / "pets.pt", weights_only=True)


@pytest.fixture(scope="module")
def pretrained(pets) -> dict:
    """A real (if tiny) masked-autoencoder checkpoint: encoder and decoder pretrained, so both its
    weights and its batch-norm statistics differ from a fresh U-Net's."""
    cfg = PretrainConfig(method="mae_patch", epochs=1, batch_size=8, image_size=32, mask_patch=8)
    return pretrain(pets["images"], cfg, True, CPU, seed_everything(0))


def run(pets: dict, pretrained: dict, freeze: bool, select_best: bool) -> dict:
    split = pets["split"]
    train, val = torch.nonzero(split == 0).flatten(), torch.nonzero(split == 1).flatten()
    cfg = FinetuneConfig(epochs=2, batch_size=8, subset=0.9, freeze_encoder=freeze, image_size=32, augment="flip",
                         select_best=select_best)
    return finetune(pets["images"], pets["masks"], train, val, cfg, pretrained, CPU, seed_everything(1))


def encoder_part(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("encoder.")}


@pytest.mark.parametrize("select_best", [True, False])
def test_a_frozen_encoder_leaves_finetune_bit_identical(pets, pretrained, select_best):
    result = run(pets, pretrained, freeze=True, select_best=select_best)
    before, after = encoder_part(pretrained["model"]), encoder_part(result["model"])
    assert before.keys() == after.keys() and any(k.endswith("running_var") for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    decoder_changed = [k for k, v in result["model"].items()
                       if k.startswith("decoder.") and not torch.equal(v, pretrained["model"][k])]
    assert decoder_changed  # the same run did train the rest of the network


def test_a_trained_encoder_moves_away_from_the_pretrained_one(pets, pretrained):
    result = run(pets, pretrained, freeze=False, select_best=False)
    before, after = encoder_part(pretrained["model"]), encoder_part(result["model"])
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))


def test_the_released_checkpoint_format_round_trips(pets, pretrained, tmp_path: Path):
    result = run(pets, pretrained, freeze=True, select_best=True)
    checkpoint.save_atomic(result, tmp_path / "ft.pt")
    model = checkpoint.load_model(tmp_path / "ft.pt")
    assert all(torch.equal(v, result["model"][k]) for k, v in model.state_dict().items())


def test_subsets_are_seeded_nested_and_sized_as_fractions_of_the_whole_set():
    train = torch.arange(3, 3 + 2 * 402, 2)  # 402 training indices, as in the shared data
    sizes = {s: subset_indices(train, s, seed=7) for s in (0.9, 0.1, 0.01)}
    assert torch.equal(sizes[0.9], train)
    assert [len(sizes[s]) for s in (0.1, 0.01)] == [45, 4]  # round(402 * s / 0.9)
    assert set(sizes[0.01].tolist()) <= set(sizes[0.1].tolist()) <= set(sizes[0.9].tolist())
    assert torch.equal(subset_indices(train, 0.1, seed=7), sizes[0.1])
    assert not torch.equal(subset_indices(train, 0.1, seed=8), sizes[0.1])
    for seed in range(5):  # nested for every seed, not by luck
        small, large = subset_indices(train, 0.01, seed), subset_indices(train, 0.1, seed)
        assert set(small.tolist()) <= set(large.tolist())


def test_a_cosine_schedule_anneals_per_epoch_and_resumes_where_it_stopped(pets, pretrained, tmp_path: Path):
    """A run that crashes after its epoch-2 checkpoint resumes with the scheduler where it was: the history
    (losses, learning rates, scores) and the weights equal those of an uninterrupted run, and its clock
    counts the crashed process's time."""
    split = pets["split"]
    train, val = torch.nonzero(split == 0).flatten(), torch.nonzero(split == 1).flatten()
    cfg = FinetuneConfig(epochs=4, batch_size=8, freeze_encoder=False, image_size=32, lr_schedule="cosine")

    def train_run(**kwargs) -> dict:
        return finetune(pets["images"], pets["masks"], train, val, cfg, pretrained, CPU, seed_everything(1), **kwargs)

    def crash_in_epoch_3(epoch: int, row: dict) -> None:
        if epoch == 3:
            raise KeyboardInterrupt

    uninterrupted = train_run()
    lrs = [row["lr"] for row in uninterrupted["history"]]
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    resume = tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):
        train_run(resume_path=resume, on_epoch=crash_in_epoch_3)
    saved = checkpoint.load(resume)
    assert saved["epoch"] == 2
    clock = checkpoint.RunClock()
    resumed = train_run(resume_path=resume, clock=clock)
    assert clock.resumed_after_epoch == 2 and clock.earlier_seconds == saved["clock"]["seconds"] > 0
    assert clock.spent()["seconds"] > saved["clock"]["seconds"]
    assert resumed["history"] == uninterrupted["history"]
    assert all(torch.equal(v, uninterrupted["model"][k]) for k, v in resumed["model"].items())


def test_a_warm_up_keeps_the_encoder_frozen_for_its_epochs_then_trains_it_and_resumes_across_the_switch(
        pets, pretrained, tmp_path: Path):
    """LP-FT: with `warmup_epochs=2` of 3, the encoder (weights and batch-norm statistics) leaves epoch 2
    bit-identical to the pretrained one while the decoder has moved; epoch 3 trains it. A run stopped after
    the warm-up resumes to the uninterrupted result."""
    split = pets["split"]
    train, val = torch.nonzero(split == 0).flatten(), torch.nonzero(split == 1).flatten()

    def train_run(epochs: int, warmup: int, **kwargs) -> dict:
        cfg = FinetuneConfig(epochs=epochs, batch_size=8, freeze_encoder=False, image_size=32, select_best=False,
                             warmup_epochs=warmup)
        return finetune(pets["images"], pets["masks"], train, val, cfg, pretrained, CPU, seed_everything(1), **kwargs)

    warmed_up = train_run(epochs=2, warmup=2)
    before, after = encoder_part(pretrained["model"]), encoder_part(warmed_up["model"])
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(v, pretrained["model"][k]) for k, v in warmed_up["model"].items()
               if k.startswith("decoder."))
    uninterrupted = train_run(epochs=3, warmup=2)
    trained = encoder_part(uninterrupted["model"])
    assert any(not torch.equal(before[k], trained[k]) for k in before if k.endswith("weight"))
    assert any(not torch.equal(before[k], trained[k]) for k in before if k.endswith("running_mean"))

    def crash_in_epoch_3(epoch: int, row: dict) -> None:
        if epoch == 3:
            raise KeyboardInterrupt

    resume = tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):
        train_run(epochs=3, warmup=2, resume_path=resume, on_epoch=crash_in_epoch_3)
    resumed = train_run(epochs=3, warmup=2, resume_path=resume)
    assert resumed["history"] == uninterrupted["history"]
    assert all(torch.equal(v, uninterrupted["model"][k]) for k, v in resumed["model"].items())


def test_a_warm_up_needs_an_encoder_that_is_trained_afterwards():
    with pytest.raises(ValueError, match="warmup_epochs"):
        FinetuneConfig(freeze_encoder=True, warmup_epochs=2)


# Does it learn, and do photos and masks stay aligned? Both on real sample pets.

PALETTE = torch.tensor([[230, 40, 40], [40, 40, 230], [40, 230, 40]], dtype=torch.uint8)  # pet, background, border


def painted_pets(raw: Path) -> Path:
    """The sample's real trimaps, each with a PNG 'photo' painted from it (one colour per class, at the
    trimap's own size): after any correct pipeline the photo still says which class each pixel is."""
    from conftest import SAMPLE_PETS, copy_pets
    from PIL import Image

    pets = copy_pets(raw)
    for photo in (pets / "images").glob("*.jpg"):
        photo.unlink()
    for trimap in sorted((SAMPLE_PETS / "annotations" / "trimaps").glob("*.png")):
        classes = torch.from_numpy(np.array(Image.open(trimap))).long() - 1
        Image.fromarray(PALETTE[classes.clamp(0, 2)].numpy()).save(pets / "images" / f"{trimap.stem}.png")
    return raw


def classes_seen_in(images: torch.Tensor) -> torch.Tensor:
    """The class of each pixel of float images in [0, 1], by the nearest palette colour."""
    distances = ((images[:, None] - PALETTE.float()[None, :, :, None, None] / 255) ** 2).sum(2)
    return distances.argmin(1)


def agreement(images: torch.Tensor, masks: torch.Tensor) -> float:
    return (classes_seen_in(images) == masks).float().mean().item()


@pytest.mark.parametrize("size", [32, 128])
def test_photos_and_masks_stay_aligned_through_resize_flip_and_crop(tmp_path, size):
    from unet_ssl.core import augment

    prepare_pets(painted_pets(tmp_path / "raw"), tmp_path / "out", {**DATA, "image_size": size}, seed=0)
    pets = torch.load(tmp_path / "out" / "pets.pt", weights_only=True)
    images, masks = augment.to_float(pets["images"]), pets["masks"].long()
    resized = agreement(images, masks)
    generator = torch.Generator().manual_seed(0)
    flipped_cropped = augment.paired_flip_crop(images, masks, generator, crop=True)
    augmented = agreement(*flipped_cropped)
    misaligned = agreement(images.flip(-1), masks)  # what a pipeline flipping photos alone would train on
    print(f"\n[alignment {size}px] pixels whose photo shows their mask's class: after resize {resized:.4f}, "
          f"after paired flip + crop {augmented:.4f}; photos flipped alone {misaligned:.4f}")
    assert resized > 0.98 and augmented > 0.95  # bilinear resampling blurs class edges only (most at 32 px)
    assert misaligned < 0.9, "the check must catch a misaligned pipeline"


def test_a_few_epochs_beat_predicting_all_background_on_held_out_pets(pets):
    """From scratch on the sample's training pets (32 px): held-out Jaccard well above the all-background
    prediction's, which scores background's share alone."""
    from unet_ssl.core.inference import evaluate_predictions, predict
    from unet_ssl.core.model import UNet, UNetConfig

    split = pets["split"]
    train, held_out = torch.nonzero(split == 0).flatten(), torch.nonzero(split != 0).flatten()
    cfg = FinetuneConfig(epochs=8, batch_size=8, subset=0.9, freeze_encoder=False, image_size=32, augment="flip",
                         select_best=False)
    result = finetune(pets["images"], pets["masks"], train, torch.tensor([], dtype=torch.long), cfg, None, CPU,
                      seed_everything(0))
    model = UNet(UNetConfig.from_dict(result["arch"]))
    model.load_state_dict(result["model"])
    masks = pets["masks"][held_out].long()
    learned = evaluate_predictions(predict(model, pets["images"][held_out], CPU, 16), masks, 256)["jaccard"]
    background = evaluate_predictions(torch.ones_like(masks), masks, 256)["jaccard"]
    print(f"\n[learns] {len(train)} training pets, {cfg.epochs} epochs at 32 px: held-out Jaccard {learned:.3f} vs "
          f"all-background {background:.3f} on {len(held_out)} pets")
    assert learned > background + 0.1


def test_dense_pretraining_trains_encoder_and_decoder_and_fine_tuning_starts_from_both(pets):
    cfg = PretrainConfig(method="dense", epochs=1, batch_size=8, image_size=32)
    dense = pretrain(pets["images"], cfg, True, CPU, seed_everything(0))
    seed_everything(0)  # the weights pretraining started from
    initial, _ = pretraining_networks(cfg, True, CPU)
    assert dense["pretrained_parts"] == ["encoder", "decoder"] and "pixel_mlp.0.weight" in dense["head"]
    model = build_model(FinetuneConfig(image_size=32), dense).state_dict()
    for part in ("encoder.", "decoder."):
        names = [k for k in model if k.startswith(part) and k.endswith("weight")]
        assert all(torch.equal(model[k], dense["model"][k]) for k in names)
        assert not all(torch.equal(initial.state_dict()[k], dense["model"][k]) for k in names)
