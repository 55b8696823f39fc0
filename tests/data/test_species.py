"""Species from the file name agree with the official list.txt for every listed photo of the sample."""
from __future__ import annotations

import torch
from conftest import SAMPLE_PETS, SMALL_PETS

from unet_ssl.core.resize import resize_mask
from unet_ssl.core.stats import per_image_confusion
from unet_ssl.data.images import decode_trimap, trimap_to_classes
from unet_ssl.data.species import breed, describe_pets, scores_by_species, species

OFFICIAL_SPECIES = {"1": "cat", "2": "dog"}


def official_list() -> dict[str, tuple[str, str]]:
    """name -> (species, class id) from the sample's official annotations/list.txt."""
    rows = [line.split() for line in (SAMPLE_PETS / "annotations" / "list.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    return {name: (OFFICIAL_SPECIES[sp], class_id) for name, class_id, sp, _ in rows}


def test_the_name_rule_matches_the_official_species_column():
    listed = official_list()
    photos = sorted(p.stem for p in (SAMPLE_PETS / "images").glob("*.jpg"))
    checked = [n for n in photos if n in listed]
    assert len(checked) >= 30
    assert {n: species(n) for n in checked} == {n: listed[n][0] for n in checked}


def test_breeds_are_the_official_classes():
    listed = official_list()
    by_class: dict[str, set[str]] = {}
    for name, (_, class_id) in listed.items():
        by_class.setdefault(class_id, set()).add(breed(name))
    assert all(len(breeds) == 1 for breeds in by_class.values()), "one breed per official class id"
    assert len({b for breeds in by_class.values() for b in breeds}) == len(by_class)


def test_the_data_statement_counts_cats_and_dogs():
    names = ["Bengal_1", "Bengal_2", "Egyptian_Mau_12", "american_bulldog_3", "Bengal_3"]
    assert describe_pets(names) == "5 labelled pets of 3 breeds (4 cats, 1 dog)"


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
