"""Shared test fixtures: where the real data lives, and synthetic impulses.

``EARWITNESS_NO_SKIP=1`` (set by ``.ci/run``) turns every skip — ``pytest.skip``,
``skip``/``skipif`` marks, ``pytest.importorskip``, a module skipped at
collection — into a failure naming the skip's reason: CI installs everything,
so a skip there is something missing, not something to pass over. Expected
failures (``xfail``) are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"

#: The environment variable that forbids skips (see the module docstring).
NO_SKIP_ENV = "EARWITNESS_NO_SKIP"


def _no_skip() -> bool:
    return os.environ.get(NO_SKIP_ENV, "").strip() not in ("", "0")


def _skip_reason(report) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:          # (path, line from 1, "Skipped: reason")
        path, line, msg = lr
        return f"{msg} ({path}:{line})"
    return str(lr)


def _fail_skip(report, what: str) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        report.outcome = "failed"
        report.longrepr = (f"{what} was skipped, but {NO_SKIP_ENV}=1 forbids skips (CI installs "
                           f"everything a test needs): {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if _no_skip():
        _fail_skip(outcome.get_result(), f"test {item.nodeid}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    if _no_skip():
        _fail_skip(outcome.get_result(), f"collecting {collector.nodeid or collector.name}")


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
