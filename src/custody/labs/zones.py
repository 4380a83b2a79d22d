"""Which time zone a result's times are in, when the sender wrote them without an offset.

HL7 v2 times without their own offset are local to the sender, and FHIR dateTimes without a
zone are local to whoever wrote them. Reading them as UTC silently moves every collection and
report time by hours, which breaks CLIA timeliness and every report by hour. The rule, in order
(the first that applies wins, and the stored result records which one it was):

1. ``field``: the time carries its own offset (``20220806050000-0600``, ``...T05:00:00-06:00``);
2. ``msh7``: HL7 only, the message header's time (MSH-7) carries the sender's offset;
3. ``sender``: HL7, a per-sender IANA zone from settings, keyed by MSH-4 (sending facility),
   applied with daylight saving time for the date of each time;
4. ``source``: FHIR and CSV, a per-source IANA zone from settings, keyed by the ingestion
   source (an inbox directory or ``store:`` prefix);
5. ``default``: the zone the run was given (the flow's ``timezone`` parameter).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from custody.errors import ConfigError
from custody.labs.model import LabResult

ZoneSource = Literal["field", "msh7", "sender", "source", "default"]
_TIMES = ("collected_at", "resulted_at")


def zone_named(name: str, setting: str) -> ZoneInfo:
    """An IANA zone, or a ConfigError naming the setting (zone names are not PHI)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{setting}: {name!r} is not an IANA time zone name") from None


@dataclass(frozen=True)
class ZonePolicy:
    """The zones a run places naive times in: per sender, per source, then the default."""

    default: ZoneInfo
    senders: Mapping[str, ZoneInfo] = field(default_factory=dict)
    source: ZoneInfo | None = None

    def place(self, result: LabResult) -> LabResult:
        """The result with every naive time made aware, and ``time_zone_source`` recorded."""
        naive = [n for n in _TIMES if _is_naive(getattr(result, n))]
        if not naive:
            if result.time_zone_source is None and any(getattr(result, n) for n in _TIMES):
                return result.model_copy(update={"time_zone_source": "field"})
            return result
        zone, used = self._zone_for(result)
        updates: dict[str, object] = {n: getattr(result, n).replace(tzinfo=zone) for n in naive}
        updates["time_zone_source"] = used
        return result.model_copy(update=updates)

    def _zone_for(self, result: LabResult) -> tuple[ZoneInfo, ZoneSource]:
        if result.sender is not None and result.sender in self.senders:
            return self.senders[result.sender], "sender"
        if self.source is not None:
            return self.source, "source"
        return self.default, "default"


def source_zone(zones: Mapping[str, str], source: str) -> ZoneInfo | None:
    """The zone configured for the longest configured source that ``source`` is inside."""
    best: tuple[int, str] | None = None
    for key, name in zones.items():
        root = key.rstrip("/")
        inside = source in (root, key) or source.startswith(root + "/")
        if inside and (best is None or len(root) > best[0]):
            best = (len(root), name)
    return None if best is None else zone_named(best[1], "CUSTODY_LAB_SOURCE_ZONES")


def _is_naive(value: object) -> bool:
    return isinstance(value, datetime) and value.tzinfo is None
