"""Batched, per-sample augmentations and masks on tensors, on whatever device the batch lives on.

torchvision's v2 transforms draw one set of random parameters per call, so a batch of SimCLR
views would need a Python loop over samples; these draw parameters per sample and apply them in
one tensor operation. Every function takes a `torch.Generator` so runs are reproducible.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) in [0, 255] -> float in [0, 1]."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def crop_boxes(
    n: int,
    generator: torch.Generator,
    device=None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """(N, 2, 3) affine maps of random crops, a random area fraction in `scale` with aspect ratio in `ratio`
    each: a crop's pixel at normalised position (x, y) in [-1, 1] comes from (w x + cx, h y + cy) of the image."""
    area = _uniform(n, *scale, generator, device)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = log_ratio.exp()
    # Width and height as fractions of the image side, clipped to fit.
    w = (area * aspect).sqrt().clamp(max=1.0)
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=generator, device=device) * (1 - w) + w / 2) * 2 - 1
    cy = (torch.rand(n, generator=generator, device=device) * (1 - h) + h / 2) * 2 - 1
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return theta


def crop(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """The crops `theta` (from `crop_boxes`) of each image, resized to `size` (bilinear)."""
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Like torchvision's RandomResizedCrop, but per sample."""
    return crop(images, crop_boxes(images.shape[0], generator, images.device, scale, ratio), size)


def random_horizontal_flip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype)
    return (images * weights[None, :, None, None]).sum(1, keepdim=True)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    maxc, _ = rgb.max(1)
    minc, _ = rgb.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    k = lambda n: (n + h[:, None] * 6) % 6  # noqa: E731
    offsets = torch.tensor([5.0, 3.0, 1.0], device=hsv.device)[None, :, None, None]
    kk = k(offsets)
    return v[:, None] - v[:, None] * s[:, None] * kk.minimum(4 - kk).clamp(0, 1)


def color_jitter(
    images: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.8,
    contrast: float = 0.8,
    saturation: float = 0.8,
    hue: float = 0.2,
    p: float = 0.8,
) -> torch.Tensor:
    """SimCLR's colour distortion on float images in [0, 1], applied to each image with probability
    `p`; factors are drawn per sample from [1 - s, 1 + s] (hue shift from [-hue, hue])."""
    n, device = images.shape[0], images.device
    apply = (torch.rand(n, generator=generator, device=device) < p)[:, None, None, None]
    out = images
    b = _uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator, device)[:, None, None, None]
    out = (out * b).clamp(0, 1)
    c = _uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator, device)[:, None, None, None]
    mean = _grayscale(out).mean(dim=(1, 2, 3), keepdim=True)
    out = (c * out + (1 - c) * mean).clamp(0, 1)
    s = _uniform(n, max(0.0, 1 - saturation), 1 + saturation, generator, device)[:, None, None, None]
    out = (s * out + (1 - s) * _grayscale(out)).clamp(0, 1)
    shift = _uniform(n, -hue, hue, generator, device)
    hsv = _rgb_to_hsv(out)
    hsv = torch.stack([(hsv[:, 0] + shift[:, None, None]) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    out = _hsv_to_rgb(hsv).clamp(0, 1)
    return torch.where(apply, out, images)


def simclr_view(images: torch.Tensor, size: int, generator: torch.Generator,
                jitter: dict | None = None) -> torch.Tensor:
    """One SimCLR view of a uint8 or float batch: random resized crop, horizontal flip, colour jitter."""
    x = random_resized_crop(to_float(images), size, generator)
    x = random_horizontal_flip(x, generator)
    return color_jitter(x, generator, **(jitter or {}))


def dense_views(images: torch.Tensor, size: int, generator: torch.Generator, points: int,
                jitter: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two SimCLR views of every image of a batch that share part of it, and `points` places in that shared part
    as each view sees them: views (2N, 3, size, size) stacked as in `simclr_views`, and (2N, points, 2) (x, y) in
    the views' normalised coordinates (`grid_sample`'s, align_corners=False): row i + N is the same spot as row i.

    Where the two crops of an image do not meet, the second view takes the first one's crop (its own flip and
    colours), so every image gives `points` pairs (a fixed count, as gathering over processes needs)."""
    n, device = images.shape[0], images.device
    theta_a = crop_boxes(n, generator, device)
    theta_b = crop_boxes(n, generator, device)
    (centre_a, half_a), (centre_b, half_b) = _centre_and_half(theta_a), _centre_and_half(theta_b)
    low = torch.maximum(centre_a - half_a, centre_b - half_b)  # (N, 2): the shared box in image coordinates
    high = torch.minimum(centre_a + half_a, centre_b + half_b)
    apart = (low >= high).any(1)
    theta_b = torch.where(apart[:, None, None], theta_a, theta_b)
    low = torch.where(apart[:, None], centre_a - half_a, low)
    high = torch.where(apart[:, None], centre_a + half_a, high)
    spots = low[:, None] + torch.rand(n, points, 2, generator=generator, device=device) * (high - low)[:, None]
    x = to_float(images)
    views, coords = [], []
    for theta in (theta_a, theta_b):
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        view = crop(x, theta, size)
        view = torch.where(flip[:, None, None, None], view.flip(-1), view)
        views.append(color_jitter(view, generator, **(jitter or {})))
        centre, half = _centre_and_half(theta)
        seen = (spots - centre[:, None]) / half[:, None]
        coords.append(torch.where(flip[:, None, None], seen * torch.tensor([-1.0, 1.0], device=device), seen))
    return torch.cat(views), torch.cat(coords)


def _centre_and_half(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A crop's centre (x, y) and half its width and height, (N, 2) each, in the image's normalised coordinates."""
    return theta[:, :, 2], theta.diagonal(dim1=1, dim2=2)


def patch_mask(n: int, height: int, width: int, generator: torch.Generator, patch: int = 20,
               ratio: float = 0.75, device=None) -> torch.Tensor:
    """(N, 1, H, W) mask, 1 where hidden: whole patches of a `patch`-pixel grid (partial patches at the
    border allowed). Patches are visited in random order and each is hidden when that brings the hidden
    area closer to `ratio` of the image, so the hidden share is within half a patch of `ratio` (stopping
    at the first patch past it would overshoot by up to one patch: about 85% at 64 px with 20-px patches)."""
    rows, cols = math.ceil(height / patch), math.ceil(width / patch)
    heights = torch.tensor([min(patch, height - r * patch) for r in range(rows)], device=device)
    widths = torch.tensor([min(patch, width - c * patch) for c in range(cols)], device=device)
    areas = (heights[:, None] * widths[None, :]).reshape(-1).float()
    order = torch.rand(n, rows * cols, generator=generator, device=device).argsort(1)
    target = ratio * height * width
    covered = torch.zeros(n, device=device)
    chosen = torch.zeros(n, rows * cols, dtype=torch.bool, device=device)
    for j in range(rows * cols):
        area = areas[order[:, j]]
        take = covered + area / 2 < target  # hiding it ends nearer the target than leaving it
        covered += area * take
        chosen[torch.arange(n, device=device), order[:, j]] = take
    grid = chosen.reshape(n, 1, rows, cols).float()
    full = grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return full[:, :, :height, :width]


def pixel_mask(n: int, height: int, width: int, generator: torch.Generator, ratio: float = 0.75,
               device=None) -> torch.Tensor:
    """(N, 1, H, W) mask hiding exactly round(ratio * H * W) single pixels per image."""
    k = round(ratio * height * width)
    order = torch.rand(n, height * width, generator=generator, device=device).argsort(1)
    mask = torch.zeros(n, height * width, device=device)
    mask.scatter_(1, order[:, :k], 1.0)
    return mask.reshape(n, 1, height, width)


def make_mask(kind: str, n: int, height: int, width: int, generator: torch.Generator, patch: int = 20,
              ratio: float = 0.75, device=None) -> torch.Tensor:
    """Mask for a masked-autoencoder variant: 'patch', 'pixel' or 'none' (nothing hidden)."""
    if kind == "patch":
        return patch_mask(n, height, width, generator, patch, ratio, device)
    if kind == "pixel":
        return pixel_mask(n, height, width, generator, ratio, device)
    if kind == "none":
        return torch.zeros(n, 1, height, width, device=device)
    raise ValueError(f"unknown mask kind {kind!r}; expected 'patch', 'pixel' or 'none'")


def paired_flip_crop(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator,
                     crop: bool = False, scale: tuple[float, float] = (0.5, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random horizontal flip (and, with `crop`, the same random resized crop) for each
    float image (N, 3, H, W) and its label map (N, H, W); labels are resampled nearest-neighbour."""
    n, device = images.shape[0], images.device
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
    if not crop:
        return images, masks
    side = _uniform(n, *scale, generator, device).sqrt()
    cx = (torch.rand(n, generator=generator, device=device) * (1 - side) + side / 2) * 2 - 1
    cy = (torch.rand(n, generator=generator, device=device) * (1 - side) + side / 2) * 2 - 1
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = side, cx, side, cy
    h, w = images.shape[-2:]
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    masks = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="border", align_corners=False)
    return images, masks[:, 0].to(torch.long)
