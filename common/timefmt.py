"""Time types: UTC instants are integer nanoseconds since the Unix epoch (``*_utc_ns``).

Integers keep microsecond timing exact over decades; floats in seconds would lose
sub-microsecond resolution at today's epoch values.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

NS_PER_S = 1_000_000_000

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$"
)


def iso_to_ns(text: str) -> int:
    """Parse an ISO-8601 UTC timestamp (``2018-12-19T00:49:26.000123Z``) to UTC ns.

    Nanosecond fractions are kept exactly. A missing zone means UTC; an explicit
    offset is applied.
    """
    m = _ISO_RE.match(text.strip())
    if not m:
        raise ValueError(
            f"not an ISO-8601 UTC time: {text!r} (expected e.g. 2018-12-19T00:49:26.000Z)"
        )
    y, mo, d, h, mi, s, frac, zone = m.groups()
    base = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc)
    ns = int(base.timestamp()) * NS_PER_S
    if frac:
        ns += int(frac.ljust(9, "0"))
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        hh, mm = int(zone[1:3]), int(zone[-2:])
        ns -= sign * (hh * 3600 + mm * 60) * NS_PER_S
    return ns


def ns_to_iso(t_utc_ns: int, digits: int = 6) -> str:
    """Format UTC ns as ISO-8601 with ``digits`` fractional digits and a ``Z``."""
    t_utc_ns = int(t_utc_ns)
    sec, frac = divmod(t_utc_ns, NS_PER_S)
    base = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if digits <= 0:
        return base + "Z"
    return f"{base}.{str(frac).rjust(9, '0')[:digits]}Z"


def ns_to_s(t_utc_ns: int) -> float:
    """UTC ns → float Unix seconds (for display and JSON; loses sub-µs precision)."""
    return int(t_utc_ns) / NS_PER_S
