import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score

from unet_ssl.core.metrics import ConfusionMatrix, PaperStyleScores, segmentation_scores


def random_maps(seed: int, n: int = 4, size: int = 16, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, classes, (n, size, size), generator=g),
            torch.randint(0, classes, (n, size, size), generator=g))


@pytest.mark.parametrize("seed", range(3))
def test_dataset_level_scores_agree_with_scikit_learn(seed):
    pred, target = random_maps(seed)
    s = segmentation_scores(pred, target, 3)
    y_true, y_pred = target.flatten().numpy(), pred.flatten().numpy()
    f1 = f1_score(y_true, y_pred, labels=[0, 1, 2], average=None)
    jac = jaccard_score(y_true, y_pred, labels=[0, 1, 2], average=None)
    np.testing.assert_allclose(s["per_class"]["f1"], f1, rtol=1e-12)
    np.testing.assert_allclose(s["per_class"]["jaccard"], jac, rtol=1e-12)
    assert s["f1"] == pytest.approx(f1.mean()) and s["jaccard"] == pytest.approx(jac.mean())


def test_a_class_absent_from_prediction_and_target_is_left_out_of_the_means():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    s = segmentation_scores(pred, target, 3)
    assert math.isnan(s["per_class"]["f1"][2]) and math.isnan(s["per_class"]["jaccard"][2])
    present = f1_score(target.flatten(), pred.flatten(), labels=[0, 1], average=None)
    assert s["f1"] == pytest.approx(present.mean())


def test_a_class_only_in_the_prediction_counts_as_zero():
    target = torch.tensor([[0, 0, 0, 0]])
    pred = torch.tensor([[0, 0, 0, 2]])
    s = segmentation_scores(pred, target, 3)
    assert s["per_class"]["jaccard"][2] == 0.0
    assert s["jaccard"] == pytest.approx((0.75 + 0.0) / 2)


def test_confusion_matrix_accumulates_to_the_same_result_as_one_call():
    pred, target = random_maps(7, n=6)
    cm = ConfusionMatrix(3)
    for i in range(0, 6, 2):
        cm.update(pred[i:i + 2], target[i:i + 2])
    assert cm.scores() == segmentation_scores(pred, target, 3)


def test_paper_style_is_the_mean_over_batches_of_per_batch_class_means():
    pred, target = random_maps(9, n=4)
    paper = PaperStyleScores(3)
    expected_f1 = []
    for i in range(0, 4, 2):
        paper.update(pred[i:i + 2], target[i:i + 2])
        y_t, y_p = target[i:i + 2].flatten(), pred[i:i + 2].flatten()
        expected_f1.append(f1_score(y_t, y_p, labels=[0, 1, 2], average="macro"))
    assert paper.scores()["f1"] == pytest.approx(np.mean(expected_f1))


def test_labels_outside_the_classes_are_rejected():
    with pytest.raises(ValueError, match="target labels"):
        segmentation_scores(torch.tensor([0, 1]), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="differs"):
        segmentation_scores(torch.zeros(2, 2), torch.zeros(2, 3), 3)
