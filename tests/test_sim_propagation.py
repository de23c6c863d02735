"""sim/propagation.py: what an Arrival may be, and the low-pass its docstring
describes (a causal first-order RC response, not a zero-phase one)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim.propagation import ARRIVAL_KINDS, NLOS_LOWPASS_HZ, Arrival, arrival_kernel, arrivals
from sim.world import Scenario
from tests.test_sim_render import FS, T0, one_node_town, shot


def test_an_arrival_kind_is_one_of_the_arrival_kinds():
    for kind in ARRIVAL_KINDS:
        assert Arrival("g", T0, 1.0, 10.0, kind, 0.03).kind == kind
    with pytest.raises(ValueError, match="'reflected' is not one of direct, echo, blocked, diffracted"):
        Arrival("g", T0, 1.0, 10.0, "reflected", 0.03)


def test_the_arrival_lowpass_is_the_causal_first_order_response():
    """The kernel with ``lowpass_hz`` is the one without, times 1 / (1 + j f/fc)
    at every frequency: its phase lags (-45° at the corner), so it delays the
    onset — a zero-phase filter would leave the phase alone."""
    sc = Scenario((shot((300.0, 0.0, 1.5)),), T0, 2.0)
    (a,) = arrivals(sc, one_node_town(), 0)
    plain = arrival_kernel(a, sc.sources[0], FS, T0, absorption=False)
    low = arrival_kernel(dataclasses.replace(a, lowpass_hz=NLOS_LOWPASS_HZ), sc.sources[0], FS, T0,
                         absorption=False)
    assert low.start_frame == plain.start_frame and low.samples.size == plain.samples.size
    n = plain.samples.size
    freq = np.fft.rfftfreq(n, 1.0 / FS)
    p, q = np.fft.rfft(plain.samples), np.fft.rfft(low.samples)
    band = (freq > 50.0) & (freq < 0.35 * FS) & (np.abs(p) > 1e-6 * np.abs(p).max())
    expected = 1.0 / (1.0 + 1j * freq[band] / NLOS_LOWPASS_HZ)
    assert np.allclose(q[band] / p[band], expected, rtol=1e-6, atol=1e-9)
    corner = np.argmin(np.abs(freq - NLOS_LOWPASS_HZ))
    assert np.degrees(np.angle(q[corner] / p[corner])) == pytest.approx(-45.0, abs=0.5)
    # the energy arrives later: the RC filter's group delay
    t = np.arange(n)
    centroid = [float(np.sum(t * k.samples ** 2) / np.sum(k.samples ** 2)) for k in (plain, low)]
    assert centroid[1] > centroid[0]
