import numpy as np
import pytest

from flowmatch.qap import qap_objective, qap_search, swap_gains, two_opt, two_opt_batch


def _problem(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    a = x @ x.T
    a[np.diag_indices(n)] += rng.standard_normal(n)
    b = rng.standard_normal((n, n))
    return a, b + b.T, rng


@pytest.mark.parametrize("n", [4, 11])
def test_swap_gains_are_the_changes_of_the_objective(n):
    a, b, rng = _problem(n)
    perm = rng.permutation(n)
    gains = swap_gains(a, b[np.ix_(perm, perm)][None])[0]
    base = qap_objective(a, b, perm)[0]
    for r in range(n):
        for s in range(r + 1, n):
            q = perm.copy()
            q[r], q[s] = q[s], q[r]
            assert gains[r, s] == pytest.approx(qap_objective(a, b, q)[0] - base, abs=1e-9)


@pytest.mark.parametrize("n", [12, 70])
def test_two_opt_stops_at_a_local_optimum_and_agrees_with_the_batched_search(n):
    a, b, rng = _problem(n, seed=n)
    start = rng.permutation(n)
    perm = two_opt(a, b, start)
    best = qap_objective(a, b, perm)[0]
    for r in range(n):
        for s in range(r + 1, n):
            q = perm.copy()
            q[r], q[s] = q[s], q[r]
            assert qap_objective(a, b, q)[0] <= best + 1e-9
    batched, values = two_opt_batch(a, b, start[None])
    np.testing.assert_array_equal(batched[0], perm)
    assert values[0] == pytest.approx(best)


def test_each_batched_search_ends_where_it_ends_alone():
    """Searches that stop early leave the batch; the others' swaps do not change."""
    a, b, rng = _problem(15, seed=4)
    starts = np.stack([rng.permutation(15) for _ in range(12)])
    perms, values = two_opt_batch(a, b, starts)
    alone = [two_opt_batch(a, b, s[None]) for s in starts]
    np.testing.assert_array_equal(perms, np.concatenate([p for p, _ in alone]))
    np.testing.assert_array_equal(values, np.concatenate([v for _, v in alone]))
    assert len({tuple(p) for p in perms}) > 1  # the searches end in different optima
    steps = [two_opt_batch(a, b, s[None], max_steps=1)[0] for s in starts]
    assert any((p != s).any() for p, s in zip(steps, starts))  # one step moves some of them


def test_qap_search_recovers_a_planted_permutation():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 6))
    a = x @ x.T
    truth = rng.permutation(20)
    noisy = x[np.argsort(truth)] + 0.05 * rng.standard_normal((20, 6))
    b = noisy @ noisy.T  # item i of a is item truth[i] of b
    perm, value = qap_search(a, b, 30, rng)
    np.testing.assert_array_equal(perm, truth)
    assert value == pytest.approx(qap_objective(a, b, truth)[0])
    with pytest.raises(ValueError, match="square"):
        qap_search(a, b[:5, :5], 3, rng)
