"""Multilateration: exact data, noise, one bad arrival, uncertainty calibration."""

from __future__ import annotations

import numpy as np
import pytest

from server.solver import initial_guess, solve

C = 343.0


def _net(seed: int, n: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(-600, 600, (n, 2)), rng.uniform(4, 8, n)])


@pytest.mark.parametrize("seed", range(5))
def test_exact_arrivals_give_sub_centimetre_2d(seed):
    rec = _net(seed)
    rng = np.random.default_rng(seed + 50)
    src = np.array([*rng.uniform(-500, 500, 2), 1.5])
    t = 12.345 + np.linalg.norm(rec - src, axis=1) / C
    sol = solve(rec, t, 2e-5, C, z_source=1.5)
    assert np.linalg.norm(sol.pos - src) < 0.01
    assert abs(sol.t0_s - 12.345) < 1e-7


def test_exact_arrivals_3d():
    rec = np.array([[0, 0, 5], [800, 0, 30], [0, 800, 12], [800, 800, 6], [400, -300, 45], [-300, 400, 20]], float)
    src = np.array([350.0, 420.0, 8.0])
    t = np.linalg.norm(rec - src, axis=1) / C
    sol = solve(rec, t, 1e-5, C)
    assert np.linalg.norm(sol.pos - src) < 0.01


def test_source_outside_the_network():
    rec = _net(3)
    src = np.array([900.0, -850.0, 1.5])
    t = np.linalg.norm(rec - src, axis=1) / C
    sol = solve(rec, t, 2e-5, C, z_source=1.5)
    assert np.linalg.norm(sol.pos - src) < 0.01


def test_one_echo_is_rejected():
    rec = _net(1)
    src = np.array([100.0, -200.0, 1.5])
    t = np.linalg.norm(rec - src, axis=1) / C
    t[2] += 0.035                                   # an echo 12 m longer
    sol = solve(rec, t, 1e-4, C, z_source=1.5)
    assert not sol.used[2] and sol.used.sum() == 7
    assert np.linalg.norm(sol.pos - src) < 0.01


def test_too_few_arrivals():
    rec = _net(2, n=2)
    assert solve(rec, np.zeros(2), 1e-4, C, z_source=1.5) is None


def test_initial_guess_is_near():
    rec = _net(4)
    src = np.array([200.0, 100.0, 1.5])
    t = np.linalg.norm(rec - src, axis=1) / C
    assert np.linalg.norm(initial_guess(rec, t, C)[:2] - src[:2]) < 50


def test_error_radius_is_calibrated_for_gaussian_timing_noise():
    """The 95 % radius contains the true source in ≥ 90 % of noisy trials."""
    rng = np.random.default_rng(9)
    inside = 0
    trials = 300
    sigma = 2e-4
    for k in range(trials):
        rec = _net(k % 7)
        src = np.array([*rng.uniform(-400, 400, 2), 1.5])
        t = np.linalg.norm(rec - src, axis=1) / C + rng.normal(0, sigma, len(rec))
        sol = solve(rec, t, sigma, C, z_source=1.5, max_reject=0)
        inside += np.linalg.norm(sol.pos[:2] - src[:2]) <= sol.error95_m
    assert inside / trials >= 0.90
