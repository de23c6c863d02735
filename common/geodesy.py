"""WGS84 geodetic ↔ local East-North-Up (ENU) coordinates, in metres.

The server solves in a flat local frame around an origin (the network's centroid);
over a few kilometres the ENU frame is exact (it is a rigid rotation of ECEF), so no
map projection error enters the solution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_A = 6378137.0                 # WGS84 semi-major axis (m)
_F = 1.0 / 298.257223563       # flattening
_E2 = _F * (2.0 - _F)          # first eccentricity squared
_B = _A * (1.0 - _F)
_EP2 = (_A**2 - _B**2) / _B**2


def geodetic_to_ecef(lat_deg, lon_deg, alt_m) -> np.ndarray:
    """(lat °, lon °, alt m above ellipsoid) → ECEF (..., 3) m."""
    lat = np.radians(np.asarray(lat_deg, dtype=float))
    lon = np.radians(np.asarray(lon_deg, dtype=float))
    h = np.asarray(alt_m, dtype=float)
    n = _A / np.sqrt(1.0 - _E2 * np.sin(lat) ** 2)
    x = (n + h) * np.cos(lat) * np.cos(lon)
    y = (n + h) * np.cos(lat) * np.sin(lon)
    z = (n * (1.0 - _E2) + h) * np.sin(lat)
    return np.stack([x, y, z], axis=-1)


def ecef_to_geodetic(ecef: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ECEF (..., 3) m → (lat °, lon °, alt m); Bowring's method plus two refinements."""
    ecef = np.asarray(ecef, dtype=float)
    x, y, z = ecef[..., 0], ecef[..., 1], ecef[..., 2]
    p = np.hypot(x, y)
    lon = np.arctan2(y, x)
    theta = np.arctan2(z * _A, p * _B)
    lat = np.arctan2(z + _EP2 * _B * np.sin(theta) ** 3, p - _E2 * _A * np.cos(theta) ** 3)
    for _ in range(2):
        n = _A / np.sqrt(1.0 - _E2 * np.sin(lat) ** 2)
        h = p / np.cos(lat) - n
        lat = np.arctan2(z, p * (1.0 - _E2 * n / (n + h)))
    n = _A / np.sqrt(1.0 - _E2 * np.sin(lat) ** 2)
    h = p / np.cos(lat) - n
    return np.degrees(lat), np.degrees(lon), h


@dataclass(frozen=True)
class LocalFrame:
    """A local ENU frame tangent to WGS84 at (lat0, lon0, alt0)."""

    lat0: float
    lon0: float
    alt0: float = 0.0

    def _rotation(self) -> np.ndarray:
        lat, lon = np.radians(self.lat0), np.radians(self.lon0)
        sl, cl, sp, cp = np.sin(lon), np.cos(lon), np.sin(lat), np.cos(lat)
        return np.array([[-sl, cl, 0.0], [-sp * cl, -sp * sl, cp], [cp * cl, cp * sl, sp]])

    def to_enu(self, lat_deg, lon_deg, alt_m) -> np.ndarray:
        """WGS84 → ENU (..., 3) m relative to the frame's origin."""
        d = geodetic_to_ecef(lat_deg, lon_deg, alt_m) - geodetic_to_ecef(self.lat0, self.lon0, self.alt0)
        return d @ self._rotation().T

    def to_wgs84(self, enu: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ENU (..., 3) m → (lat °, lon °, alt m)."""
        enu = np.asarray(enu, dtype=float)
        ecef = enu @ self._rotation() + geodetic_to_ecef(self.lat0, self.lon0, self.alt0)
        return ecef_to_geodetic(ecef)

    @classmethod
    def around(cls, lat_deg, lon_deg, alt_m) -> "LocalFrame":
        """A frame at the mean of the given points (e.g. all node positions)."""
        return cls(float(np.mean(lat_deg)), float(np.mean(lon_deg)), float(np.mean(alt_m)))
