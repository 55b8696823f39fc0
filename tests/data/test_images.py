"""Decoding real photos and trimaps, and every way such a file can be bad: each bad file is built
from a real sample file with Pillow (converted, damaged, cut) and must give a BadInputError that
names the file and the problem, while convertible modes decode to the right RGB pixels."""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    PHOTO,
    SAMPLE_PETS,
    SAMPLE_PRETRAIN,
    damaged,
    png_rgb16,
)
from PIL import Image

from unet_ssl.core.resize import resize_mask
from unet_ssl.data.images import (
    BadInputError,
    decode_rgb,
    decode_trimap,
    trimap_to_classes,
)

TRIMAP = SAMPLE_PETS / "annotations" / "trimaps" / "Bengal_129.png"
GIF_NAMED_JPG = SAMPLE_PETS / "images" / "Abyssinian_34.jpg"  # a real oddity of the official archive


def photo_rgb() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def save(image: Image.Image, path: Path, fmt: str, **kwargs) -> Path:
    image.save(path, fmt, **kwargs)
    return path


def pixels_hwc(decoded) -> np.ndarray:
    return decoded.pixels.permute(1, 2, 0).numpy()


def test_rgb_jpeg_decodes_unchanged():
    decoded = decode_rgb(PHOTO)
    assert (decoded.original_mode, decoded.converted) == ("RGB", False)
    assert decoded.pixels.dtype == torch.uint8
    np.testing.assert_array_equal(pixels_hwc(decoded), photo_rgb())


def test_grayscale_is_converted_to_three_equal_channels(tmp_path):
    path = save(Image.open(PHOTO).convert("L"), tmp_path / "gray.jpg", "JPEG", quality=95)
    decoded = decode_rgb(path)
    assert (decoded.original_mode, decoded.converted) == ("L", True)
    gray = np.asarray(Image.open(path))
    for channel in range(3):
        np.testing.assert_array_equal(pixels_hwc(decoded)[..., channel], gray)


def test_cmyk_jpeg_is_converted_to_the_same_colours(tmp_path):
    """CMYK JPEGs are the classic trap (inverted Adobe CMYK); the decoded colours must stay close to
    the photo's (only JPEG re-compression differs)."""
    path = save(Image.open(PHOTO).convert("CMYK"), tmp_path / "cmyk.jpg", "JPEG", quality=95)
    decoded = decode_rgb(path)
    assert (decoded.original_mode, decoded.converted) == ("CMYK", True)
    assert np.abs(pixels_hwc(decoded).astype(int) - photo_rgb().astype(int)).mean() < 3


def test_rgba_png_drops_alpha(tmp_path):
    rgba = Image.open(PHOTO).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))  # a real, varying alpha channel
    decoded = decode_rgb(save(rgba, tmp_path / "alpha.png", "PNG"))
    assert (decoded.original_mode, decoded.converted) == ("RGBA", True)
    np.testing.assert_array_equal(pixels_hwc(decoded), photo_rgb())


def test_palette_png_and_the_official_gif_named_jpg(tmp_path):
    palette = Image.open(PHOTO).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    decoded = decode_rgb(save(palette, tmp_path / "palette.png", "PNG"))
    assert (decoded.original_mode, decoded.converted) == ("P", True)
    np.testing.assert_array_equal(pixels_hwc(decoded), np.asarray(palette.convert("RGB")))
    gif = decode_rgb(GIF_NAMED_JPG)
    assert (gif.original_mode, gif.converted) == ("P", True)
    assert gif.pixels.shape[0] == 3


def test_16bit_grayscale_png_keeps_the_top_8_bits(tmp_path):
    gray = np.asarray(Image.open(PHOTO).convert("L"))
    path = save(Image.fromarray(gray.astype(np.uint16) * 257), tmp_path / "gray16.png", "PNG")
    decoded = decode_rgb(path)
    assert (decoded.original_mode, decoded.converted) == ("I;16", True)
    np.testing.assert_array_equal(pixels_hwc(decoded)[..., 1], gray)


def test_16bit_rgb_png_is_flagged_as_converted(tmp_path):
    """Pillow opens 48-bit PNGs as plain "RGB"; the decoder must still report (and count) them."""
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_rgb16(photo_rgb()))
    decoded = decode_rgb(path)
    assert (decoded.original_mode, decoded.converted) == ("RGB;16", True)
    np.testing.assert_array_equal(pixels_hwc(decoded), photo_rgb())


def test_tar_member_bytes_decode_and_errors_name_the_member():
    shard = next(SAMPLE_PRETRAIN.glob("*.tar"))
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.isfile())
        data = tar.extractfile(member).read()
    where = f"{shard}:{member.name}"
    assert decode_rgb(where, data).pixels.shape == (3, 64, 64)
    with pytest.raises(BadInputError) as err:
        decode_rgb(where, data[: len(data) // 2])
    assert err.value.path == where and "truncated" in str(err.value)


@pytest.mark.parametrize("kind, message", [
    ("truncated", "image file is truncated"),
    ("corrupt_scan", "broken data stream"),
    ("corrupt_header", "not a recognised image format"),
    ("empty", "file is empty (0 bytes)"),
    ("not_an_image", "not a recognised image format"),
])
def test_unusable_files_name_the_file_and_the_problem(tmp_path, kind, message):
    path = tmp_path / f"{kind}.jpg"
    path.write_bytes(damaged(kind))
    with pytest.raises(BadInputError) as err:
        decode_rgb(path)
    assert err.value.path == str(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_missing_file_and_folder_in_place_of_a_file(tmp_path):
    with pytest.raises(BadInputError, match="file does not exist"):
        decode_rgb(tmp_path / "gone.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(BadInputError, match="is a folder, not an image file"):
        decode_rgb(tmp_path / "dir.jpg")


def test_decompression_bomb_is_a_bad_input(monkeypatch):
    """Pillow's pixel limit, lowered below this real photo's size, stands in for a huge image."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadInputError, match="too many pixels"):
        decode_rgb(PHOTO)


def test_official_trimap_decodes_to_values_1_2_3_and_resizes_without_new_values():
    trimap = decode_trimap(TRIMAP)
    assert set(trimap.unique().tolist()) == {1, 2, 3}
    resized = resize_mask(trimap, 37)
    assert set(resized.unique().tolist()) <= {1, 2, 3}
    assert set(trimap_to_classes(resized).unique().tolist()) <= {0, 1, 2}


def edited_trimap(tmp_path: Path, edit) -> Path:
    values = np.asarray(Image.open(TRIMAP)).copy()
    path = tmp_path / "trimap.png"
    Image.fromarray(edit(values)).save(path)
    return path


def test_trimap_values_outside_1_2_3_are_named(tmp_path):
    def paint(values):
        values[:5, :5], values[-5:, -5:] = 0, 4
        return values

    with pytest.raises(BadInputError, match=r"trimap has values \[0, 4\] outside the official 1 \(pet\)") as err:
        decode_trimap(edited_trimap(tmp_path, paint))
    assert err.value.path == str(tmp_path / "trimap.png")


def test_trimap_already_mapped_to_0_1_2_gets_a_hint(tmp_path):
    with pytest.raises(BadInputError, match="looks already mapped to 0/1/2"):
        decode_trimap(edited_trimap(tmp_path, lambda v: (v - 1).astype(np.uint8)))


def test_rgb_trimap_is_refused_and_16bit_trimap_accepted(tmp_path):
    rgb_path = tmp_path / "rgb.png"
    Image.open(TRIMAP).convert("RGB").save(rgb_path)
    with pytest.raises(BadInputError, match="trimap has mode RGB; expected a single-channel PNG"):
        decode_trimap(rgb_path)
    wide = edited_trimap(tmp_path, lambda v: v.astype(np.uint16))
    np.testing.assert_array_equal(decode_trimap(wide).numpy(), np.asarray(Image.open(TRIMAP)))


def test_truncated_trimap_is_named(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(TRIMAP.read_bytes()[:200])
    with pytest.raises(BadInputError) as err:
        decode_trimap(path)
    assert err.value.path == str(path) and "corrupt or truncated" in str(err.value)

