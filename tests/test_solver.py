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


def test_jacobian_matches_finite_differences():
    """Analytic derivatives of the travel time with wind, speed of sound, height."""
    from server.solver import _Layout

    rec = _net(3)
    lay = _Layout(None, 340.0, 2.0, 1.5, 3.0, 4.0)
    q = np.array([100.0, 50.0, 2.0, 0.01, 341.0, 1.5, -2.0])
    _, J = lay.model(q, rec)
    for k in range(len(q)):
        dq = np.zeros_like(q)
        dq[k] = 1e-6 * max(1.0, abs(q[k]))
        num = (lay.model(q + dq, rec, False)[0] - lay.model(q - dq, rec, False)[0]) / (2 * dq[k])
        assert np.allclose(J[:, k], num, rtol=1e-5, atol=1e-12), k


def test_wind_is_fitted_and_removes_the_bias():
    """Sound drifts with the air: 2 m/s of wind moves an uncorrected fix by metres;
    fitting the wind (8 nodes) recovers both the wind and the position."""
    rng = np.random.default_rng(11)
    c = 340.0
    bias, fitted, winds = [], [], []
    for k in range(30):
        rec = _net(k % 7)
        src = np.array([*rng.uniform(-400, 400, 2), 1.5])
        w = np.array([2.0 * np.cos(k), 2.0 * np.sin(k), 0.0])
        d = rec - src
        r = np.linalg.norm(d, axis=1)
        t = r / (c + d @ w / r) + rng.normal(0, 2e-5, len(rec))
        plain = solve(rec, t, 5e-4, c, z_prior=(1.5, 3.0), max_reject=0)
        sol = solve(rec, t, 5e-4, c, z_prior=(1.5, 3.0), max_reject=0, wind_sigma=4.0)
        bias.append(np.linalg.norm(plain.pos[:2] - src[:2]))
        fitted.append(np.linalg.norm(sol.pos[:2] - src[:2]))
        winds.append(np.linalg.norm(np.array(sol.wind_mps) - w[:2]))
    assert np.median(bias) > 1.0
    assert np.median(fitted) < 0.1 and np.median(winds) < 0.1
    # a known wind (no fit) is used as given
    sol = solve(rec, t, 5e-4, c, z_prior=(1.5, 3.0), max_reject=0, wind0=(float(w[0]), float(w[1])))
    assert np.linalg.norm(sol.pos[:2] - src[:2]) < 0.1 and sol.wind_mps == (float(w[0]), float(w[1]))


def test_radius_covers_an_unknown_wind_and_speed_of_sound():
    """A shot with too few nodes to fit the wind is located in still air: a wind
    of 2 m/s then moves it by metres that no residual shows. With the wind's
    and the speed of sound's prior uncertainty (``unfitted_sigma``) the radius
    covers that: ≥ 90 % of the sources inside, where the timing-only radius
    holds about half of them. The position is the same either way."""
    rng = np.random.default_rng(21)
    c = 340.0
    trials = 200
    inside_plain = inside = 0
    for k in range(trials):
        rec = _net(k % 7, n=6)
        src = np.array([*rng.uniform(-300, 300, 2), 1.5])
        w = np.array([*rng.normal(0.0, 2.0, 2), 0.0])            # the wind: 2 m/s per component
        c_true = c + rng.normal(0.0, 1.0)                          # the air: ± 1 m/s (± 1.7 °C)
        d = rec - src
        r = np.linalg.norm(d, axis=1)
        t = r / (c_true + d @ w / r) + rng.normal(0, 1e-4, len(rec))
        plain = solve(rec, t, 1e-4, c, z_source=1.5, max_reject=0)
        sol = solve(rec, t, 1e-4, c, z_source=1.5, max_reject=0, unfitted_sigma=(1.0, 2.0))
        assert np.allclose(sol.pos, plain.pos) and sol.error95_m > plain.error95_m
        err = np.linalg.norm(sol.pos[:2] - src[:2])
        inside_plain += err <= plain.error95_m
        inside += err <= sol.error95_m
    assert inside / trials >= 0.90
    assert inside_plain / trials < 0.7
    # a fitted wind and speed of sound are in the covariance already: nothing is added
    fit = solve(rec, t, 1e-4, c, z_source=1.5, max_reject=0, c_sigma=1.0, wind_sigma=2.0)
    same = solve(rec, t, 1e-4, c, z_source=1.5, max_reject=0, c_sigma=1.0, wind_sigma=2.0,
                 unfitted_sigma=(1.0, 2.0))
    assert same.error95_m == fit.error95_m


def test_unfitted_jacobian_matches_the_fitted_one():
    """The derivatives by the speed of sound and the wind when they are not fitted
    are those the model uses when they are."""
    from server.solver import _Layout

    rec = _net(3)
    fitted = _Layout(1.5, 340.0, 2.0, wind_sigma=4.0)
    _, J = fitted.model(np.array([100.0, 50.0, 0.01, 340.0, 0.0, 0.0]), rec)
    bare = _Layout(1.5, 340.0, None)
    G, which = bare.unfitted_jac(np.array([100.0, 50.0, 0.01]), rec)
    assert list(which) == [0, 1, 2]
    assert np.allclose(G, J[:, 3:6])
    assert fitted.unfitted_jac(np.array([100.0, 50.0, 0.01, 340.0, 0.0, 0.0]), rec)[0].shape == (len(rec), 0)


def test_speed_of_sound_is_fitted_with_its_prior():
    rec = _net(5)
    src = np.array([120.0, -80.0, 1.5])
    t = np.linalg.norm(rec - src, axis=1) / 331.0
    sol = solve(rec, t, 2e-5, 343.0, z_source=1.5, c_sigma=8.0, max_reject=0)
    assert abs(sol.c_mps - 331.0) < 0.2
    assert np.linalg.norm(sol.pos - src) < 0.1


def test_uniformly_poor_timing_keeps_every_arrival():
    """When every arrival is several times worse than its stated σ (1 ms picks of
    an urban network with 6 ms errors), the data's own scale widens acceptance:
    nothing is thrown away, and the radius grows with the scatter."""
    rng = np.random.default_rng(4)
    rec = _net(6, n=16)
    src = np.array([50.0, 60.0, 1.5])
    t = np.linalg.norm(rec - src, axis=1) / C + rng.normal(0, 0.006, 16)
    sol = solve(rec, t, 0.001, C, z_source=1.5)
    assert sol.n_used == 16
    assert 4.0 < sol.scale < 9.0
    told_right = solve(rec, t, 0.006, C, z_source=1.5)       # as if σ had been stated correctly
    assert told_right.n_used == 16
    assert 0.7 < sol.error95_m / told_right.error95_m < 1.4
    assert np.linalg.norm(sol.pos[:2] - src[:2]) <= sol.error95_m


def test_residual_scale():
    from server.solver import residual_scale

    e = np.random.default_rng(0).normal(0, 3.0, 400)
    assert 2.7 < residual_scale(e, 4) < 3.3
    assert residual_scale(np.full(10, 0.1), 4) == 1.0          # never below 1
    assert residual_scale(np.full(5, 9.0), 4) == 1.0           # too few spare arrivals to tell
