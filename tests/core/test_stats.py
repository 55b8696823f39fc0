"""Paired bootstrap of the dataset-level Jaccard difference over seeds and test images."""
import numpy as np
import pytest
import torch

from unet_ssl.core.metrics import scores_from_confusion
from unet_ssl.core.stats import (
    NO_VERDICT,
    confusion_from_record,
    confusion_record,
    dataset_jaccard,
    describe,
    paired_bootstrap,
    paired_text,
    per_image_confusion,
)


def noisy_runs(error: float, seeds: int = 3, images: int = 30, size: int = 24) -> np.ndarray:
    """(seeds, images, 3, 3) matrices of predictions that differ from fixed targets on `error` of the pixels."""
    target = torch.randint(0, 3, (images, size, size), generator=torch.Generator().manual_seed(0))
    out = []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(100 + seed)
        wrong = torch.rand(target.shape, generator=g) < error
        pred = torch.where(wrong, (target + torch.randint(1, 3, target.shape, generator=g)) % 3, target)
        out.append(per_image_confusion(pred, target, 3).numpy())
    return np.stack(out)


def test_per_image_matrices_sum_to_the_dataset_matrix_and_survive_a_json_record():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randint(0, 3, (5, 8, 8), generator=g), torch.randint(0, 3, (5, 8, 8), generator=g)
    per_image = per_image_confusion(pred, target, 3)
    assert per_image.shape == (5, 3, 3) and per_image.dtype == torch.int64 and (per_image.sum((1, 2)) == 64).all()
    assert torch.equal(per_image.sum(0), torch.bincount((target * 3 + pred).reshape(-1), minlength=9).reshape(3, 3))
    index, back = confusion_from_record(confusion_record(torch.tensor([4, 7, 9, 11, 12]), per_image))
    assert index.tolist() == [4, 7, 9, 11, 12] and np.array_equal(back, per_image.numpy())


def test_dataset_jaccard_matches_the_metrics_module_and_leaves_absent_classes_out():
    m = torch.tensor([[50, 3, 2], [4, 30, 1], [0, 0, 0]])  # class 2 never true; predicted twice+once
    assert dataset_jaccard(m.numpy()) == pytest.approx(scores_from_confusion(m)["jaccard"])
    absent = torch.tensor([[5, 1, 0], [2, 7, 0], [0, 0, 0]])
    assert dataset_jaccard(absent.numpy()) == pytest.approx(scores_from_confusion(absent)["jaccard"])


def test_identical_configurations_get_an_interval_around_zero_and_no_verdict():
    a = noisy_runs(0.3)
    c = paired_bootstrap(a, a.copy(), resamples=200)
    assert c.difference == 0 and c.low <= 0 <= c.high and c.verdict == NO_VERDICT
    assert "better" not in describe(c) and "worse" not in describe(c)


def test_a_clearly_better_configuration_is_better_and_the_reverse_worse():
    a, b = noisy_runs(0.3), noisy_runs(0.1)
    better = paired_bootstrap(a, b, resamples=500)
    assert better.verdict == "better" and 0 < better.low <= better.difference <= better.high
    assert (better.seeds, better.images, better.resamples) == (3, 30, 500)
    worse = paired_bootstrap(b, a, resamples=500)
    assert worse.verdict == "worse" and worse.difference == pytest.approx(-better.difference)
    assert describe(better).startswith(f"{better.difference:+.3f} (95% CI ") and describe(better).endswith(", better)")


def test_a_small_difference_within_seed_noise_gets_no_verdict():
    a, b = noisy_runs(0.30, seeds=2), noisy_runs(0.30, seeds=3)[1:]  # same error rate, other draws
    assert paired_bootstrap(a, b, resamples=500).verdict == NO_VERDICT


def test_deterministic_given_a_seed():
    a, b = noisy_runs(0.3), noisy_runs(0.28)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert paired_bootstrap(a, b, seed=3) != paired_bootstrap(a, b, seed=4)


def test_one_resample_agrees_with_a_plain_numpy_reference():
    a, b = noisy_runs(0.3, images=12), noisy_runs(0.2, images=12)
    rng = np.random.default_rng(7)
    seeds, images = rng.integers(0, 3, size=3), rng.integers(0, 12, size=12)
    reference = np.mean([scores_from_confusion(torch.from_numpy(b[s][images].sum(0)))["jaccard"]
                         - scores_from_confusion(torch.from_numpy(a[s][images].sum(0)))["jaccard"] for s in seeds])
    c = paired_bootstrap(a, b, resamples=1, seed=7)
    assert c.low == pytest.approx(reference) and c.high == pytest.approx(reference)


def test_unpaired_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap(noisy_runs(0.3, seeds=2), noisy_runs(0.3, seeds=3))


def test_paired_text_gives_an_interval_only_for_recorded_per_image_scores_of_the_same_images():
    a, b = noisy_runs(0.3, seeds=2), noisy_runs(0.1, seeds=2)
    index = np.arange(30)
    runs_a, runs_b = [(index, m) for m in a], [(index, m) for m in b]
    assert paired_text(runs_a, runs_b, 0.2, resamples=200).endswith(", better)")
    assert paired_text([runs_a[0], None], runs_b, 0.2) == "+0.200, no interval (per-image scores not recorded)"
    assert paired_text(runs_a, [runs_b[0], (index + 1, b[1])], 0.2) == "+0.200, no interval (different test images)"
