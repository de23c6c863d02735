"""CI's rule that nothing is skipped (tests/conftest.py, EARWITNESS_NO_SKIP=1):
every kind of skip becomes a failure naming its reason; without the variable
skips stay skips; expected failures are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NO_SKIP_ENV

TESTS = Path(__file__).resolve().parent

SAMPLE = '''
import pytest

def test_skip_call():
    pytest.skip("no widget here")

@pytest.mark.skipif(True, reason="never on this box")
def test_skipif_mark():
    pass

@pytest.mark.skip(reason="switched off")
def test_skip_mark():
    pass

def test_importorskip():
    pytest.importorskip("no_such_module_for_earwitness")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_xfail():
    assert False

def test_passes():
    pass
'''

MODULE_SKIP = 'import pytest\npytest.importorskip("another_missing_module_for_earwitness")\n'


def _run(tmp_path: Path, no_skip: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "test_sample.py").write_text(SAMPLE, encoding="utf-8")
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != NO_SKIP_ENV and not k.startswith("PYTEST_")}
    if no_skip is not None:
        env[NO_SKIP_ENV] = no_skip
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_every_skip_fails_with_its_reason_when_skips_are_forbidden(tmp_path):
    r = _run(tmp_path, "1")
    out = r.stdout
    assert r.returncode != 0, out
    for name, reason in (("test_skip_call", "no widget here"), ("test_skipif_mark", "never on this box"),
                         ("test_skip_mark", "switched off"),
                         ("test_importorskip", "no_such_module_for_earwitness"),
                         ("test_module_skip.py", "another_missing_module_for_earwitness")):
        lines = [ln for ln in out.splitlines() if (ln.startswith("FAILED") or ln.startswith("ERROR"))
                 and name in ln]
        assert lines, f"{name} did not fail:\n{out}"
        assert reason in out and f"{NO_SKIP_ENV}=1 forbids skips" in out, out
    assert "SKIPPED" not in out, out
    assert "XFAIL" in out and "PASSED test_sample.py::test_passes" in out, out


@pytest.mark.parametrize("value", [None, "0"])
def test_skips_stay_skips_without_the_variable(tmp_path, value):
    r = _run(tmp_path, value)
    out = r.stdout
    assert r.returncode == 0, out
    assert "5 skipped" in out and "1 passed" in out and "1 xfailed" in out, out
