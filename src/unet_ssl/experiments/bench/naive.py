"""The naive baseline of `unet-ssl bench`: per-sample PIL decoding and torchvision v2 transforms behind a
DataLoader, as a first pipeline would feed the same step."""
from __future__ import annotations

import importlib.util
import io
from typing import Iterator

import torch

from unet_ssl.core import augment
from unet_ssl.experiments.bench.loading import BenchData


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def naive_dataset(data: BenchData, workload: str, size: int, seed: int) -> torch.utils.data.Dataset:
    """Per-sample PIL decoding and torchvision v2 transforms, as a first DataLoader pipeline would do it."""
    from PIL import Image
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    to_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    class Photos(torch.utils.data.Dataset):
        def __init__(self, transform):
            self.transform = transform

        def __len__(self):
            return len(data.pretrain_jpegs)

        def __getitem__(self, i):
            return self.transform(Image.open(io.BytesIO(data.pretrain_jpegs[i])).convert("RGB"))

    class Pets(torch.utils.data.Dataset):
        def __init__(self, transform):
            self.transform = transform

        def __len__(self):
            return len(data.pet_files)

        def __getitem__(self, i):
            image_path, trimap_path = data.pet_files[i]
            image = tv_tensors.Image(v2.functional.pil_to_tensor(Image.open(image_path).convert("RGB")))
            trimap = v2.functional.pil_to_tensor(Image.open(trimap_path))[0].long() - 1
            image, trimap = self.transform(image, tv_tensors.Mask(trimap))
            return v2.functional.to_dtype(image, torch.float32, scale=True), trimap

    if workload == "simclr":
        view = v2.Compose([
            v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), to_float,
        ])
        return Photos(lambda img: (view(img), view(img)))
    if workload == "mae":
        resize = v2.Compose([v2.Resize((size, size), antialias=True), to_float])
        masks = torch.Generator().manual_seed(seed)
        return Photos(lambda img: (resize(img), augment.make_mask("patch", 1, size, size, masks)[0]))
    if workload == "finetune":
        return Pets(v2.Compose([v2.Resize((size, size), antialias=True), v2.RandomHorizontalFlip()]))
    return Pets(v2.Resize((size, size), antialias=True))


def naive_batches(data: BenchData, workload: str, size: int, batch: int, seed: int, pin: bool) -> Iterator:
    """Endless shuffled batches of `naive_dataset` from a DataLoader in this process (no workers)."""
    loader = torch.utils.data.DataLoader(naive_dataset(data, workload, size, seed), batch_size=batch, shuffle=True,
                                         drop_last=True, num_workers=0, pin_memory=pin,
                                         generator=torch.Generator().manual_seed(seed))
    while True:
        yield from loader
