"""Decoding image and trimap files with Pillow into RGB uint8 tensors, with a clear error for every
kind of bad input (the edge where user files enter; the training core only sees tensors)."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
TRIMAP_VALUES = {1, 2, 3}


class BadInputError(ValueError):
    """An input file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


@dataclass
class DecodedImage:
    pixels: torch.Tensor  # uint8 (3, H, W)
    original_mode: str
    converted: bool


def _open(path: Path | str, data: bytes | None = None) -> Image.Image:
    """Opens a file on disk, or `data` already read from an archive member named `path`."""
    if data is None:
        path = Path(path)
        if not path.is_file():
            raise BadInputError(path, "file does not exist")
        data = path.read_bytes()
    if len(data) == 0:
        raise BadInputError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()  # forces the full decode, so truncated files fail here
        return img
    except UnidentifiedImageError:
        raise BadInputError(path, "not a recognised image format (corrupt, or not an image)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInputError(path, f"cannot be decoded ({e}); the file is corrupt or truncated") from None


def decode_rgb(path: Path | str, data: bytes | None = None) -> DecodedImage:
    """Any image Pillow reads -> RGB uint8. Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit
    images are converted and flagged as such. `data` decodes bytes already read (a tar member)."""
    img = _open(path, data)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.int64)
        bits = 16 if mode.startswith("I;16") or arr.max() > 255 else 8
        arr = (arr >> (bits - 8)).clip(0, 255).astype(np.uint8)
        rgb = np.repeat(arr[..., None], 3, axis=2)
    elif mode == "RGB":
        rgb = np.asarray(img)
    else:
        rgb = np.asarray(img.convert("RGB"))
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise BadInputError(path, f"unexpected decoded shape {rgb.shape} from mode {mode}")
    pixels = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).contiguous()
    return DecodedImage(pixels, mode, converted=mode != "RGB")


def decode_trimap(path: Path) -> torch.Tensor:
    """An official trimap PNG -> uint8 (H, W) holding 1 (pet), 2 (background), 3 (border)."""
    img = _open(path)
    if img.mode not in ("L", "P", "I", "I;16"):
        raise BadInputError(path, f"trimap has mode {img.mode}; expected a single-channel PNG with values 1, 2, 3")
    arr = np.asarray(img).astype(np.int64)
    values = set(np.unique(arr).tolist())
    unexpected = values - TRIMAP_VALUES
    if unexpected:
        raise BadInputError(path, f"trimap has values {sorted(unexpected)} outside the official 1 (pet), 2 (background), 3 (border)")
    return torch.from_numpy(arr.astype(np.uint8))


def resize_image(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, size, size), bilinear with antialiasing."""
    x = torch.nn.functional.interpolate(pixels[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8)


def resize_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) labels -> (size, size), nearest neighbour only so no new label values appear."""
    return torch.nn.functional.interpolate(mask[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0].to(mask.dtype)


def trimap_to_classes(trimap: torch.Tensor) -> torch.Tensor:
    """Official values 1/2/3 -> classes 0 (pet), 1 (background), 2 (border)."""
    return trimap - 1
