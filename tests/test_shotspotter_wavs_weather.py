"""server/shotspotter_wavs.py: malformed weather in a sensor's smj0 metadata is
a clear error naming the file and field, never a traceback."""

from __future__ import annotations

import re

import pytest

from common.recording_set import RecordingSetError
from server.locate import main as locate_main
from server.shotspotter_wavs import set_from_wavs
from tests.test_shotspotter_wavs import _meta, _write


def _weather(**kw) -> dict:
    w = {"medium": "air", "temperature": 21.5, "speed": 3.08666, "direction": 270.0}
    w.update(kw)
    return w


@pytest.mark.parametrize("weather,field", [
    (_weather(speed=[3.0]), "weather.speed"),             # a list: was an uncaught TypeError (unhashable)
    (_weather(direction={"deg": 270}), "weather.direction"),
    (_weather(temperature="21 C"), "weather.temperature"),
    (_weather(speed=float("nan")), "weather.speed"),
    (_weather(direction=True), "weather.direction"),
    ([1, 2], "weather is [1, 2], expected a JSON object"),
])
def test_malformed_weather_names_the_file_and_field(tmp_path, capsys, weather, field):
    _write(tmp_path / "a.wav", _meta("SCP-A", 41.69, -87.62))
    _write(tmp_path / "z.wav", _meta("SCP-Z", 41.70, -87.63, weather=weather))
    with pytest.raises(RecordingSetError, match=re.escape(field)) as e:
        set_from_wavs(tmp_path)
    assert "z.wav" in str(e.value)
    assert locate_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "z.wav" in err and field in err and "Traceback" not in err


def test_weather_not_given_is_not_an_error(tmp_path):
    _write(tmp_path / "a.wav", _meta("SCP-A", 41.69, -87.62, weather=_weather(speed=None, temperature=None)))
    _write(tmp_path / "b.wav", _meta("SCP-B", 41.70, -87.63, weather=None))
    rs = set_from_wavs(tmp_path)
    assert rs.temperature_c is None and rs.wind is None
    _write(tmp_path / "b.wav", _meta("SCP-B", 41.70, -87.63, weather=_weather(medium="water", speed=[1])))
    rs = set_from_wavs(tmp_path)          # another medium's weather is not the air's
    assert rs.wind is None
