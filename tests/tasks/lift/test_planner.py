"""The DP planner: the ELBO edge cost formula, and the optimum against brute force over all paths."""
import itertools

import numpy as np
import pytest

from ditlab.tasks.lift.planner import elbo_edge_costs, path_cost, plan_path


def all_paths(n, budget):
    """Every monotone path from (0, 0) to (n-1, n-1) with at most ``budget`` steps (any step length)."""
    out = []

    def walk(node, nodes):
        if node == (n - 1, n - 1):
            out.append(list(nodes))
            return
        if len(nodes) - 1 == budget:
            return
        for i2, j2 in itertools.product(range(node[0], n), range(node[1], n)):
            if (i2, j2) != node:
                walk((i2, j2), nodes + [(i2, j2)])

    walk((0, 0), [(0, 0)])
    return out


def random_costs(n, seed):
    rng = np.random.default_rng(seed)
    snr_hi = np.cumsum(rng.uniform(0, 2, n))
    snr_lo = np.cumsum(rng.uniform(0, 2, n))
    return elbo_edge_costs(snr_hi, snr_lo, rng.uniform(0, 1, (n, n)), rng.uniform(0, 1, (n, n)))


@pytest.mark.parametrize("n,budget,seed", [(3, 1, 0), (3, 2, 1), (3, 4, 2), (4, 2, 3), (4, 3, 4), (4, 6, 5)])
def test_matches_brute_force(n, budget, seed):
    cost = random_costs(n, seed)
    nodes, total = plan_path(cost, budget)
    brute = min(path_cost(cost, p) for p in all_paths(n, budget))
    assert total == pytest.approx(brute, rel=1e-12)
    assert path_cost(cost, nodes) == pytest.approx(total, rel=1e-12)
    assert nodes[0] == (0, 0) and nodes[-1] == (n - 1, n - 1) and len(nodes) - 1 <= budget
    assert all(b[0] >= a[0] and b[1] >= a[1] and a != b for a, b in zip(nodes[:-1], nodes[1:]))


def test_finds_a_known_optimum():
    # Errors are zero on the L-path's corner column (t_lo already clean) and large elsewhere: with
    # enough steps the cheapest path finishes the low resolution first, then the high one.
    n = 4
    snr = np.array([0.0, 1.0, 2.0, 3.0])
    w_hi = np.full((n, n), 10.0)
    w_hi[:, n - 1] = 0.0  # high-res error vanishes once the low resolution is clean
    w_lo = np.zeros((n, n))
    nodes, total = plan_path(elbo_edge_costs(snr, snr, w_hi, w_lo), budget=6)
    assert total == 0.0
    assert nodes[1] == (0, 1) or nodes[1][1] == n - 1  # the low resolution moves first
    assert all(j == n - 1 for i, j in nodes if i > 0)  # the high resolution moves only once lo is clean


def test_edge_cost_is_half_snr_gain_times_error():
    snr_hi, snr_lo = np.array([0.0, 2.0, 5.0]), np.array([0.0, 1.0, 4.0])
    w_hi, w_lo = np.arange(9.0).reshape(3, 3), np.arange(9.0).reshape(3, 3)[::-1].copy()
    c = elbo_edge_costs(snr_hi, snr_lo, w_hi, w_lo)
    # (0, 1) -> (2, 2): hi gains 5, lo gains 3, errors taken at the start node (0, 1)
    assert c[0, 1, 2, 2] == pytest.approx(0.5 * (5 * w_hi[0, 1] + 3 * w_lo[0, 1]))
    assert c[1, 1, 1, 1] == np.inf and c[1, 1, 0, 2] == np.inf  # staying put, moving back


def test_budget_too_small_or_bad_input():
    cost = random_costs(3, 0)
    nodes, _ = plan_path(cost, 1)
    assert nodes == [(0, 0), (2, 2)]  # one step: straight to the end
    with pytest.raises(ValueError, match="budget"):
        plan_path(cost, 0)
    with pytest.raises(ValueError, match="must not decrease"):
        elbo_edge_costs(np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.zeros((2, 2)), np.zeros((2, 2)))
