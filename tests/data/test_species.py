"""Species from the file name agree with the official list.txt for every listed photo of the sample."""
from __future__ import annotations

from conftest import SAMPLE_PETS

from unet_ssl.data.species import breed, describe_pets, species

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
