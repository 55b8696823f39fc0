"""Per-species test scores: each species' per-image confusion matrices summed, then scored."""
from __future__ import annotations

import torch
from conftest import SAMPLE_PETS, SMALL_PETS

from unet_ssl.core.resize import resize_mask
from unet_ssl.core.stats import per_image_confusion
from unet_ssl.data.images import decode_trimap, trimap_to_classes
from unet_ssl.stages.evaluate import scores_by_species

BACKGROUND = 1


def test_cats_and_dogs_are_scored_apart_on_real_masks():
    trimaps = [decode_trimap(SAMPLE_PETS / "annotations" / "trimaps" / f"{n}.png") for n in SMALL_PETS]
    masks = torch.stack([resize_mask(trimap_to_classes(t), 32) for t in trimaps]).long()
    is_cat = torch.tensor([n[0].isupper() for n in SMALL_PETS])
    # cats predicted perfectly, dogs as all background
    pred = torch.where(is_cat[:, None, None], masks, torch.full_like(masks, BACKGROUND))
    index = torch.arange(len(SMALL_PETS)) + 100  # dataset indices, not positions
    names = {i + 100: n for i, n in enumerate(SMALL_PETS)}
    by = scores_by_species([names.get(i, "") for i in range(200)], index, per_image_confusion(pred, masks, 3))
    assert by["cat"]["n_images"] == int(is_cat.sum()) and by["dog"]["n_images"] == int((~is_cat).sum())
    assert by["cat"]["jaccard"] == 1.0 and by["cat"]["f1"] == 1.0
    assert by["dog"]["jaccard"] < 0.5
