import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from flowmatch.kmeans import batched_kmeans, kmeans_plusplus


def _planted(seed: int, k: int = 6, per: int = 80, p: int = 12):
    """Rows of ``k`` tight, well-separated clusters and their true centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, p)) * 5
    x = np.concatenate([c + 0.1 * rng.standard_normal((per, p)) for c in centres])
    return torch.from_numpy(x), torch.from_numpy(centres)


def _inertia(x: torch.Tensor, c: torch.Tensor) -> float:
    return float(torch.cdist(x.double(), c.double()).min(1).values.pow(2).sum())


def _recovered(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Largest distance from a true centre to the nearest found one."""
    return float(torch.cdist(truth.double(), found.double()).min(1).values.max())


def test_a_planted_mixture_is_recovered_by_every_run_with_shared_rows():
    x, truth = _planted(0)
    centres = batched_kmeans(x, 6, n_runs=5, generator=torch.Generator().manual_seed(1))
    assert centres.shape == (5, 6, 12)
    assert centres.dtype == torch.float64  # float64 rows stay float64
    assert max(_recovered(c, truth) for c in centres) < 0.1


def test_a_planted_mixture_is_recovered_by_every_run_with_its_own_rows():
    x, truth = _planted(1)
    rng = np.random.default_rng(0)
    own = torch.stack([x[np.sort(rng.choice(len(x), 300, replace=False))] for _ in range(4)])
    centres = batched_kmeans(own, 6, n_runs=4, generator=torch.Generator().manual_seed(2))
    assert centres.shape == (4, 6, 12)
    assert max(_recovered(c, truth) for c in centres) < 0.1


def test_the_seeds_are_rows_and_spread_over_the_clusters():
    x, truth = _planted(2)
    seeds = kmeans_plusplus(x, 6, n_runs=3, generator=torch.Generator().manual_seed(0))
    assert all(bool((s[:, None, :] == x[None]).all(-1).any(1).all()) for s in seeds)
    # one seed in each planted cluster: every true centre has a seed within the cluster's spread
    assert max(_recovered(s, truth) for s in seeds) < 1.0


def test_the_centres_fit_as_well_as_scikit_learns_on_unclustered_rows():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 20)) * np.linspace(3, 0.2, 20)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ours = batched_kmeans(
        torch.from_numpy(x), 8, n_runs=10, generator=torch.Generator().manual_seed(0)
    )
    theirs = [KMeans(8, n_init=1, random_state=s).fit(x).cluster_centers_ for s in range(10)]
    mean_ours = np.mean([_inertia(torch.from_numpy(x), c) for c in ours])
    mean_theirs = np.mean([_inertia(torch.from_numpy(x), torch.from_numpy(c)) for c in theirs])
    assert mean_ours <= 1.01 * mean_theirs


def test_the_same_generator_seed_gives_the_same_centres():
    x, _ = _planted(4)
    noisy = x + torch.from_numpy(np.random.default_rng(0).standard_normal(x.shape))
    a, b = (
        batched_kmeans(noisy, 6, n_runs=3, generator=torch.Generator().manual_seed(7)) for _ in "ab"
    )
    c = batched_kmeans(noisy, 6, n_runs=3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_duplicate_rows_do_not_break_the_seeding():
    x = torch.ones(10, 3)
    centres = batched_kmeans(x, 3, n_runs=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(centres, torch.ones(2, 3, 3))


@pytest.mark.parametrize(
    ("x", "k", "n_runs", "match"),
    [
        (torch.zeros(5), 2, 1, "shape"),
        (torch.zeros(3, 5, 2), 2, 2, "3 runs"),
        (torch.zeros(4, 2), 5, 1, "clusters"),
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1, 1, "NaN"),
    ],
)
def test_bad_input_is_named(x, k, n_runs, match):
    with pytest.raises(ValueError, match=match):
        batched_kmeans(x, k, n_runs=n_runs)
