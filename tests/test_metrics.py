import numpy as np
import pytest
import torch
from torch import nn

from flowmatch import metrics


def test_perfect_prediction_scores(gen):
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    assert metrics.r2_score(x, x) == pytest.approx(1.0)
    assert metrics.mean_cosine(x, x) == pytest.approx(1.0)
    assert metrics.top1_retrieval(x, x) == 1.0
    assert metrics.linear_cka(
        x, x @ torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))[0] * 3
    ) == pytest.approx(1.0)


def test_reference_values():
    true = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    pred = true + np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    # SS_res = 1, SS_tot = 8 → R² = 7/8
    assert metrics.r2_score(pred, true) == pytest.approx(7 / 8)
    assert metrics.top1_retrieval(true[::-1].copy(), true) == 0.0
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    # argmax rows: 0 (tie), 0, 1, 0 (tie) → one of four labels wrong
    assert metrics.stitched_accuracy(true, head, [0, 1, 1, 0]) == pytest.approx(0.75)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.r2_score(np.zeros((3, 2)), np.zeros((3, 3)))
