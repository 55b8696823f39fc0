import math

import numpy as np
import pytest
import torch

from unet_ssl.core.losses import dice_loss, nt_xent_loss, reconstruction_loss


def nt_xent_by_hand(z_a: torch.Tensor, z_b: torch.Tensor, t: float) -> float:
    """SimCLR's loss written anchor by anchor, as in the paper's Algorithm 1."""
    z = torch.cat([z_a, z_b]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        positive = (i + n) % n2
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[positive]) / t) / sum(sims))
    return total / n2


@pytest.mark.parametrize("temperature", [0.2, 0.5, 1.0])
def test_nt_xent_matches_the_per_anchor_formula(temperature):
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert nt_xent_loss(z_a, z_b, temperature).item() == pytest.approx(nt_xent_by_hand(z_a, z_b, temperature), rel=1e-5)


def test_nt_xent_is_low_for_identical_views_and_high_for_swapped_pairs():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, 32, generator=g)
    aligned = nt_xent_loss(z, z, 0.2).item()
    shuffled = nt_xent_loss(z, z.roll(1, 0), 0.2).item()
    assert aligned < shuffled


def test_nt_xent_gradients_flow_to_both_views():
    z_a, z_b = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    nt_xent_loss(z_a, z_b, 0.2).backward()
    assert z_a.grad.abs().sum() > 0 and z_b.grad.abs().sum() > 0


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.randn(4, 8), torch.randn(5, 8), 0.2)


def dice_by_hand(logits: np.ndarray, target: np.ndarray, eps: float = 1.0) -> float:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    scores = []
    for c in range(logits.shape[1]):
        g = (target == c).astype(np.float64)
        scores.append((2 * (p[:, c] * g).sum() + eps) / (p[:, c].sum() + g.sum() + eps))
    return 1 - float(np.mean(scores))


def test_dice_loss_matches_a_numpy_formulation():
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(3, 3, 8, 8, generator=g), torch.randint(0, 3, (3, 8, 8), generator=g)
    by_hand = dice_by_hand(logits.double().numpy(), target.numpy())
    assert dice_loss(logits, target).item() == pytest.approx(by_hand, rel=1e-5)


def test_dice_loss_is_near_zero_for_a_confident_correct_prediction_and_high_for_a_wrong_one():
    target = torch.randint(0, 3, (2, 16, 16), generator=torch.Generator().manual_seed(3))
    right = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50
    assert dice_loss(right, target).item() < 1e-3
    assert dice_loss(wrong, target).item() > 0.99


def test_reconstruction_loss_whole_image_and_masked_only():
    original = torch.zeros(1, 3, 4, 4)
    recon = torch.zeros(1, 3, 4, 4)
    recon[..., :2, :] = 1.0  # wrong in the top half only
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1.0
    assert reconstruction_loss(recon, original).item() == pytest.approx(0.5)
    assert reconstruction_loss(recon, original, mask, masked_only=True).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs a mask"):
        reconstruction_loss(recon, original, masked_only=True)
