import pytest
import torch

from unet_ssl.core import augment


def images(n=4, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_simclr_views_have_the_requested_size_and_range_and_are_seeded():
    x = images()
    a = augment.simclr_view(x, 24, torch.Generator().manual_seed(5))
    b = augment.simclr_view(x, 24, torch.Generator().manual_seed(5))
    c = augment.simclr_view(x, 24, torch.Generator().manual_seed(6))
    assert a.shape == (4, 3, 24, 24) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_whole_image_crop_is_the_identity():
    x = augment.to_float(images(size=16))
    out = augment.random_resized_crop(x, 16, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_crops_are_drawn_per_sample():
    x = augment.to_float(images(n=1, size=32)).repeat(8, 1, 1, 1)
    out = augment.random_resized_crop(x, 16, torch.Generator().manual_seed(0))
    assert len({tuple(o.flatten()[:20].tolist()) for o in out}) == 8


def test_flip_flips_some_samples_exactly():
    x = augment.to_float(images(n=64))
    out = augment.random_horizontal_flip(x, torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54


def test_colour_jitter_with_zero_strength_is_the_identity_and_hsv_round_trips():
    x = augment.to_float(images())
    same = augment.color_jitter(x, torch.Generator().manual_seed(0), brightness=0, contrast=0, saturation=0, hue=0,
                                p=1.0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(augment._hsv_to_rgb(augment._rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


def test_colour_jitter_is_applied_to_about_p_of_the_images():
    x = augment.to_float(images(n=200, size=8))
    out = augment.color_jitter(x, torch.Generator().manual_seed(0), p=0.8)
    changed = sum(not torch.allclose(o, i) for o, i in zip(out, x))
    assert 140 < changed < 185


def test_paired_flip_crop_moves_image_and_labels_together():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(32, 3, 1, 1)
    labels = torch.arange(16).reshape(1, 4, 4).repeat(32, 1, 1)
    out_x, out_y = augment.paired_flip_crop(x, labels, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_x[:, 0], out_y.float())
    cx, cy = augment.paired_flip_crop(x, labels, torch.Generator().manual_seed(0), crop=True)
    assert cy.dtype == torch.long and set(cy.unique().tolist()) <= set(range(16))


# Masked-autoencoder masks (the paper: 75% of the image set to black, in 20-px patches or single pixels).

@pytest.mark.parametrize("size", [128, 64])  # 128 = 6 * 20 + 8, 64 = 3 * 20 + 4: the last patches are partial
def test_patch_masks_hide_75_percent_in_whole_20px_patches_aligned_to_the_grid(size):
    patch = 20
    mask = augment.patch_mask(64, size, size, torch.Generator().manual_seed(0), patch=patch, ratio=0.75)
    assert mask.shape == (64, 1, size, size) and set(mask.unique().tolist()) == {0.0, 1.0}
    hidden = mask.mean(dim=(1, 2, 3))
    assert ((hidden - 0.75).abs() <= patch * patch / 2 / size ** 2).all()  # within half a patch of 75%
    assert abs(hidden.mean().item() - 0.75) < 0.01, hidden.mean().item()  # 75% on average, as configured
    for r in range(0, size, patch):
        for c in range(0, size, patch):
            block = mask[:, 0, r:r + patch, c:c + patch].flatten(1)
            assert torch.equal(block.min(1).values, block.max(1).values)  # every grid patch all hidden or all shown
    assert torch.unique(mask.flatten(1), dim=0).shape[0] == 64  # drawn per image


def test_pixel_masks_hide_exactly_75_percent_of_single_pixels_and_none_hides_nothing():
    g = torch.Generator().manual_seed(0)
    mask = augment.make_mask("pixel", 8, 128, 128, g)
    assert (mask.sum(dim=(1, 2, 3)) == round(0.75 * 128 * 128)).all()
    isolated = mask[:, 0, 1:-1, 1:-1] * (1 - mask[:, 0, :-2, 1:-1]) * (1 - mask[:, 0, 2:, 1:-1])
    assert isolated.sum() > 0  # not patches: single hidden pixels between shown ones occur
    assert augment.make_mask("none", 8, 128, 128, g).sum() == 0


def test_masks_are_seeded():
    a = augment.make_mask("patch", 4, 64, 64, torch.Generator().manual_seed(3))
    b = augment.make_mask("patch", 4, 64, 64, torch.Generator().manual_seed(3))
    c = augment.make_mask("patch", 4, 64, 64, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dense_views_name_the_same_spot_of_the_photo_in_both_views():
    """Without colour jitter, the two views agree at the places they are given (up to bilinear resampling of a
    smooth photo) and disagree when the places are mismatched."""
    smooth = torch.nn.functional.interpolate(torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                                             size=64, mode="bicubic", align_corners=False).clamp(0, 1)
    views, coords = augment.dense_views(smooth, 32, torch.Generator().manual_seed(1), 16, jitter={"p": 0.0})
    assert views.shape == (32, 3, 32, 32) and coords.shape == (32, 16, 2) and coords.abs().max() <= 1

    def at(rows: slice, places: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.grid_sample(views[rows], places[:, :, None], align_corners=False)

    same = (at(slice(0, 16), coords[:16]) - at(slice(16, 32), coords[16:])).abs().mean()
    mismatched = (at(slice(0, 16), coords[:16]) - at(slice(16, 32), coords[16:].roll(1, 1))).abs().mean()
    assert same < 0.03 and mismatched > 5 * same


def test_dense_views_are_seeded_and_drawn_per_image():
    x = images(n=32)
    a = augment.dense_views(x, 16, torch.Generator().manual_seed(2), 4)
    b = augment.dense_views(x, 16, torch.Generator().manual_seed(2), 4)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    _, coords = a
    assert len({round(float(c), 4) for c in coords[:, 0, 0]}) == 64
