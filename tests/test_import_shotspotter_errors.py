"""server/import_shotspotter.py: a test folder whose files cannot be read (a
directory where a JSON file belongs, a file that is not UTF-8) and an output
folder that cannot be written get errors that name the file — no traceback,
and no blaming the output folder for a read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.recording_set import load_set
from server.import_shotspotter import ShotSpotterError, load_test, main


def _pulse(uid: str, serial: str, x: float, t: str) -> dict:
    return {"pulse_uuid": uid, "serial_number": serial, "location": {"x": x, "y": 0.0, "z": 5.0},
            "location_error": 1.0, "arrival_time_utc": t, "signal_to_noise_dB": 20.0}


def _test_folder(root: Path) -> Path:
    """A minimal ShotSpotter test folder: FP1/test_001 with three sensors."""
    d = root / "FP1" / "test_001"
    d.mkdir(parents=True)
    files = {
        "survey": {"firing_position": "FP1", "num_rounds": 1, "survey_location": {"x": 0.0, "y": 0.0, "z": 1.0}},
        "weather": {"temperature": 10.0, "speed": 2.0, "direction": 180.0},
        "allpulses": [_pulse("p1", "S1", 100.0, "2018-12-18T15:00:00.300Z"),
                      _pulse("p2", "S2", 200.0, "2018-12-18T15:00:00.600Z"),
                      _pulse("p3", "S3", 300.0, "2018-12-18T15:00:00.900Z")],
        "nlos-tuples": [],
    }
    for kind, value in files.items():
        (d / f"test_001.{kind}.json").write_text(json.dumps(value), encoding="utf-8")
    return d


def test_the_minimal_folder_converts(tmp_path, capsys):
    _test_folder(tmp_path / "src")
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), "--mode", "picks"]) == 0
    assert len(load_set(tmp_path / "out" / "FP1" / "test_001").nodes) == 3


def test_a_directory_where_a_json_file_belongs_is_a_read_error(tmp_path, capsys):
    d = _test_folder(tmp_path / "src")
    weather = d / "test_001.weather.json"
    weather.unlink()
    weather.mkdir()
    with pytest.raises(ShotSpotterError, match="a directory, not a JSON file") as e:
        load_test(d)
    assert str(weather) in str(e.value)
    assert main([str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(weather) in err and "cannot write" not in err
    assert not (tmp_path / "out").exists()


def test_a_json_file_that_is_not_utf8_is_a_clear_error(tmp_path, capsys):
    d = _test_folder(tmp_path / "src")
    survey = d / "test_001.survey.json"
    survey.write_bytes(b'{"firing_position": "FP\xff1"}')
    with pytest.raises(ShotSpotterError, match="not UTF-8 text") as e:
        load_test(d)
    assert str(survey) in str(e.value)
    assert main([str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(survey) in err and "not UTF-8" in err and "Traceback" not in err


def test_an_output_folder_that_cannot_be_written_says_so(tmp_path, capsys):
    _test_folder(tmp_path / "src")
    (tmp_path / "out").write_text("a file, not a folder")
    assert main([str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot write the recording set under" in err and str(tmp_path / "out") in err
