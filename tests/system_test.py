"""specexec.system: the one timestamp format."""

from __future__ import annotations

import time

from specexec.system import utc_iso, utc_stamp


def test_utc_iso_is_the_same_text_whatever_was_stamped_before() -> None:
    # Across second boundaries, back and forth: the cached second never leaks into
    # another second's stamp.
    for t in (0.0, 0.999, 1.0, 1764633600.5, 1764633599.999, 1764633600.0, -0.5, 1.0):
        want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t // 1)))
        assert utc_iso(t) == want + "Z"
        assert utc_iso(t, ms=True) == f"{want}.{int(t * 1000) % 1000:03d}Z"
    assert utc_iso(1764633600.25, ms=True) == "2025-12-02T00:00:00.250Z"
    assert utc_stamp(1764633600.25) == "20251202T000000Z"
