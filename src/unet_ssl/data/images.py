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


def _open(path: Path | str, data: bytes | None = None) -> tuple[Image.Image, int]:
    """Opens and fully decodes a file on disk, or `data` already read from an archive member named
    `path`; returns the image and its bits per channel as stored."""
    if data is None:
        path = Path(path)
        if path.is_dir():
            raise BadInputError(path, "is a folder, not an image file")
        if not path.is_file():
            raise BadInputError(path, "file does not exist")
        data = path.read_bytes()
    if len(data) == 0:
        raise BadInputError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            source_bits = _source_bits(img)
            img.load()  # forces the full decode, so truncated files fail here
    except UnidentifiedImageError:
        raise BadInputError(path, "not a recognised image format (corrupt, or not an image)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise BadInputError(path, f"too many pixels to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInputError(path, f"cannot be decoded ({e}); the file is corrupt or truncated") from None
    return img, source_bits


def _source_bits(img: Image.Image) -> int:
    """Bits per channel as stored: Pillow opens 16-bit RGB(A) PNGs as 8-bit "RGB"/"RGBA" and says so
    only in the decoder's raw mode (e.g. "RGB;16B"), which is gone once the image is loaded."""
    raw_modes = [t.args[0] if isinstance(t.args, tuple) and t.args else t.args for t in img.tile]
    return 16 if img.mode.startswith("I;16") or any(isinstance(r, str) and ";16" in r for r in raw_modes) else 8


def decode_rgb(path: Path | str, data: bytes | None = None) -> DecodedImage:
    """Any image Pillow reads -> RGB uint8. Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit
    images are converted and flagged as such (16-bit ones report their mode as e.g. "RGB;16").
    `data` decodes bytes already read (a tar member)."""
    img, bits = _open(path, data)
    mode = img.mode if bits == 8 or img.mode.startswith("I;16") else f"{img.mode};16"
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.int64)
        peak = int(arr.max(initial=0))
        if img.mode == "I" and peak > 65535:
            raise BadInputError(path, f"32-bit integer image with values up to {peak}; save it as 8- or 16-bit")
        depth = 16 if bits == 16 or peak > 255 else 8
        arr = (arr >> (depth - 8)).clip(0, 255).astype(np.uint8)
        rgb = np.repeat(arr[..., None], 3, axis=2)
    elif img.mode == "RGB":
        rgb = np.asarray(img)
    else:
        rgb = np.asarray(img.convert("RGB"))
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise BadInputError(path, f"unexpected decoded shape {rgb.shape} from mode {mode}")
    pixels = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).contiguous()
    return DecodedImage(pixels, mode, converted=mode != "RGB")


def decode_trimap(path: Path) -> torch.Tensor:
    """An official trimap PNG -> uint8 (H, W) holding 1 (pet), 2 (background), 3 (border)."""
    img, _ = _open(path)
    if img.mode not in ("L", "P", "I", "I;16"):
        raise BadInputError(path, f"trimap has mode {img.mode}; expected a single-channel PNG with values 1, 2, 3")
    arr = np.asarray(img).astype(np.int64)
    values = set(np.unique(arr).tolist())
    unexpected = values - TRIMAP_VALUES
    if unexpected:
        hint = "; it looks already mapped to 0/1/2, the official files hold 1/2/3" if values <= {0, 1, 2} else ""
        raise BadInputError(path, f"trimap has values {sorted(unexpected)} outside the official 1 (pet), "
                                  f"2 (background), 3 (border){hint}")
    return torch.from_numpy(arr.astype(np.uint8))


def trimap_to_classes(trimap: torch.Tensor) -> torch.Tensor:
    """Official values 1/2/3 -> classes 0 (pet), 1 (background), 2 (border)."""
    return trimap - 1
