import numpy as np
import pytest
import torch

from flowmatch.alignment import apply_map, fit_affine, fit_orthogonal, fit_similarity, refine_map


def _rotation(k, gen):
    q, _ = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))
    return q


def test_fit_affine_recovers_an_exact_affine_map(gen):
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    m = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    c = torch.randn(3, generator=gen, dtype=torch.float64)
    matrix, bias = fit_affine(x, x @ m.T + c, ridge=0.0)
    torch.testing.assert_close(matrix, m)
    torch.testing.assert_close(bias, c)


def test_fit_similarity_recovers_rotation_and_scale(gen):
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    q, c = _rotation(4, gen), torch.randn(4, generator=gen, dtype=torch.float64)
    matrix, bias = fit_similarity(x, 2.5 * x @ q.T + c)
    torch.testing.assert_close(matrix, 2.5 * q)
    torch.testing.assert_close(apply_map(x, matrix, bias), 2.5 * x @ q.T + c)


def test_fit_orthogonal_recovers_a_rotation_with_uniform_or_given_weights(gen):
    x = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    q = _rotation(6, gen)
    noisy = x @ q.T + 0.05 * torch.randn(50, 6, generator=gen, dtype=torch.float64)
    plain = fit_orthogonal(x, noisy)
    torch.testing.assert_close(plain @ plain.T, torch.eye(6, dtype=torch.float64))
    assert float((plain - q).abs().max()) < 0.05
    torch.testing.assert_close(fit_orthogonal(x, noisy, weights=np.full(50, 3.0)), plain)
    skewed = np.r_[np.ones(25), np.full(25, 1e-6)]  # the first half's fit only
    torch.testing.assert_close(
        fit_orthogonal(x, noisy, weights=skewed),
        fit_orthogonal(x[:25], noisy[:25]),
        atol=1e-4,
        rtol=0,
    )


def test_refine_map_recovers_a_rotation_without_pairs(gen):
    k = 4
    centres = torch.randn(6, k, generator=gen, dtype=torch.float64) * 5

    def draw(n):
        labels = torch.randint(0, 6, (n,), generator=gen)
        return centres[labels] + 0.3 * torch.randn(n, k, generator=gen, dtype=torch.float64)

    q, c = _rotation(k, gen), torch.randn(k, generator=gen, dtype=torch.float64)
    xa, xb = draw(600), draw(600) @ q.T + c  # different samples: no pairs
    m0 = q + 0.15 * torch.randn(k, k, generator=gen, dtype=torch.float64)
    before = (m0 - q).abs().max()
    matrix, bias = refine_map(xa, xb, m0, c + 0.5, n_iter=8, max_exact=400, kind="similarity")
    assert (matrix - q).abs().max() < 0.25 * before
    assert (matrix - q).abs().max() < 0.05


def test_refine_map_validates_inputs(gen):
    x = torch.randn(10, 3, generator=gen)
    with pytest.raises(ValueError, match="expected"):
        refine_map(x, x, torch.eye(2), torch.zeros(2))
    with pytest.raises(KeyError, match="unknown map kind"):
        refine_map(x, x, torch.eye(3), torch.zeros(3), kind="spline")
    with pytest.raises(ValueError, match="weights"):
        fit_affine(x, x, weights=np.ones(4))


def test_pooled_refit_averages_the_subsample_draw_out_of_the_map(gen):
    k = 3
    scales = torch.tensor([3.0, 1.5, 0.7], dtype=torch.float64)
    q, c = _rotation(k, gen), torch.randn(k, generator=gen, dtype=torch.float64)
    xa = torch.randn(3000, k, generator=gen, dtype=torch.float64) * scales
    xb = (torch.randn(3000, k, generator=gen, dtype=torch.float64) * scales) @ q.T + c

    def spread(pool):
        maps = [
            refine_map(xa, xb, q, c, n_iter=2, max_exact=120, kind="similarity", seed=s, pool=pool)
            for s in range(6)
        ]
        matrices = torch.stack([m for m, _ in maps])
        return float((matrices - matrices.mean(0)).pow(2).sum((1, 2)).mean().sqrt())

    single, pooled = spread(1), spread(16)
    assert pooled < 0.5 * single  # sixteen subsamples: about a quarter of the spread
    with pytest.raises(ValueError, match="pool must be a positive integer"):
        refine_map(xa, xb, q, c, pool=0)
