"""Acoustics shared by node, server and simulation."""

from __future__ import annotations

import math

import numpy as np

#: Temperature assumed when none is known (°C): a mild day; 10 °C of error is ~1.8 %
#: of range, so the server should be told the real temperature when it can be.
DEFAULT_TEMPERATURE_C = 15.0


def speed_of_sound(temperature_c: float | None = None, humidity_pct: float = 50.0) -> float:
    """Speed of sound in air (m/s) at ``temperature_c`` (°C).

    Ideal-gas dry-air law c = 331.3 * sqrt(1 + T / 273.15) plus the common linear
    humidity term 0.0124 m/s per % relative humidity (≈ +0.6 m/s at 50 %).
    ``None`` means :data:`DEFAULT_TEMPERATURE_C`.
    """
    t = DEFAULT_TEMPERATURE_C if temperature_c is None else float(temperature_c)
    if not -60.0 <= t <= 70.0:
        raise ValueError(f"air temperature {t} °C is outside -60..70 °C; check the units")
    return 331.3 * math.sqrt(1.0 + t / 273.15) + 0.0124 * float(humidity_pct)


def air_absorption_db_per_m(freq_hz: np.ndarray, temperature_c: float = 20.0,
                            humidity_pct: float = 50.0, pressure_kpa: float = 101.325) -> np.ndarray:
    """Atmospheric absorption coefficient (dB/m) per ISO 9613-1 for ``freq_hz`` (array)."""
    f = np.asarray(freq_hz, dtype=float)
    t_k = temperature_c + 273.15
    t0 = 293.15
    t01 = 273.16
    pa = pressure_kpa / 101.325
    c_sat = -6.8346 * (t01 / t_k) ** 1.261 + 4.6151
    h = humidity_pct * 10.0 ** c_sat / pa
    fr_o = pa * (24.0 + 4.04e4 * h * (0.02 + h) / (0.391 + h))
    fr_n = pa * (t_k / t0) ** -0.5 * (9.0 + 280.0 * h * np.exp(-4.170 * ((t_k / t0) ** (-1 / 3) - 1.0)))
    alpha = 8.686 * f**2 * (
        1.84e-11 / pa * (t_k / t0) ** 0.5
        + (t_k / t0) ** -2.5
        * (0.01275 * np.exp(-2239.1 / t_k) / (fr_o + f**2 / fr_o)
           + 0.1068 * np.exp(-3352.0 / t_k) / (fr_n + f**2 / fr_n))
    )
    return alpha
