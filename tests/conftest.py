"""Shared test fixtures: where the real data lives, and synthetic impulses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p} (the shared data folder sits beside the project)")
    return p


def friedlander(n: int, onset: float, amp: float, fs: float, t_pos_s: float = 0.001, b: float = 1.5) -> np.ndarray:
    """A gunshot-like blast wave (n,) sampled at ``fs`` starting at fractional
    sample ``onset``: amp·(1 − t/T)·exp(−b·t/T) for t ≥ 0."""
    t = (np.arange(n) - onset) / fs
    tt = np.maximum(t, 0.0)
    y = amp * (1.0 - tt / t_pos_s) * np.exp(-b * tt / t_pos_s)
    return np.where(t >= 0, y, 0.0)
