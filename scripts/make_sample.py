"""Rebuilds the embedded sample in sample/ from a folder in the shared layout (e.g. ../shared/data):
12 pets per breed (files under 110 kB, seeded choice) plus two of the official set's oddities, and
20 pretraining photos per class in one tar shard. Run: python scripts/make_sample.py ../shared/data"""
import random
import shutil
import sys
import tarfile
from pathlib import Path

source, dest = Path(sys.argv[1]), Path("sample")
rng = random.Random(0)
pets_src, pets_dst = source / "oxford-iiit-pet", dest / "oxford-iiit-pet"
shutil.rmtree(dest, ignore_errors=True)
(pets_dst / "images").mkdir(parents=True)
(pets_dst / "annotations" / "trimaps").mkdir(parents=True)
chosen = []
for breed in ("Abyssinian", "Bengal", "american_bulldog"):
    small = sorted(p.stem for p in (pets_src / "images").glob(f"{breed}_*.jpg")
                   if p.stat().st_size < 110_000 and p.stem != "Abyssinian_34")
    chosen += sorted(rng.sample(small, 12))
chosen.append("Abyssinian_34")  # a GIF named .jpg whose official trimap is all background
for stem in chosen:
    shutil.copy(pets_src / "images" / f"{stem}.jpg", pets_dst / "images")
    shutil.copy(pets_src / "annotations" / "trimaps" / f"{stem}.png", pets_dst / "annotations" / "trimaps")
shutil.copy(pets_src / "images" / "Abyssinian_100.mat", pets_dst / "images")  # a MATLAB file among the images
for name in ("list.txt", "trainval.txt", "test.txt"):
    lines = (pets_src / "annotations" / name).read_text().splitlines()
    kept = [l for l in lines if l.startswith("#") or (l.split() and l.split()[0] in chosen)]
    (pets_dst / "annotations" / name).write_text("\n".join(kept) + "\n")
shutil.copy(pets_src / "annotations" / "README", pets_dst / "annotations")

(dest / "pretrain").mkdir()
shutil.copy(source / "pretrain" / "classes.tsv", dest / "pretrain")
per_class: dict[str, int] = {}
with tarfile.open(dest / "pretrain" / "animals-64px-sample.tar", "w") as out:
    for shard in sorted((source / "pretrain").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                wnid = m.name.split("_")[0]
                if m.isfile() and per_class.get(wnid, 0) < 20:
                    per_class[wnid] = per_class.get(wnid, 0) + 1
                    out.addfile(m, tar.extractfile(m))
print(f"sample: {len(chosen)} pets, {sum(per_class.values())} pretraining photos of {len(per_class)} classes")
