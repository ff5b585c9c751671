"""Measurement arithmetic for load tests: pure, no sockets, no clocks.

* :class:`Histogram`: a log-bucketed histogram of non-negative integers
  (microseconds here) with at most 1/32 (~3 %) relative error, mergeable
  across worker processes, giving percentiles without keeping samples.
* :class:`Jitter`: the RFC 3550 §6.4.1 interarrival jitter estimator
  ``J += (|D(i-1, i)| - J) / 16``.
* :class:`SeqTracker`: loss, duplicates and reordering of numbered packets
  (a packet is *reordered* when it arrives after one with a higher sequence
  number, RFC 4737's "reordered" in its simplest form).
* :class:`FrameClock`: a media worker's schedule (frames owed to its
  sessions, what was skipped when it fell behind), counted in packets.
* :func:`percentile`, :func:`loss_pct`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_SUB_BITS = 5
_SUB = 1 << _SUB_BITS  # 32 sub-buckets per power of two: relative error <= 1/32
_LINEAR = 2 * _SUB  # values below 64 have a bucket each


def bucket_of(value: int) -> int:
    """The bucket index of a non-negative integer (negative values count as 0)."""
    if value < _LINEAR:
        return max(0, value)
    e = value.bit_length() - _SUB_BITS - 1
    return _LINEAR + (e - 1) * _SUB + ((value >> e) - _SUB)


def bucket_value(index: int) -> float:
    """A representative value (the middle) of bucket ``index``."""
    if index < _LINEAR:
        return float(index)
    e = (index - _LINEAR) // _SUB + 1
    low = ((index - _LINEAR) % _SUB + _SUB) << e
    return low + ((1 << e) - 1) / 2


class Histogram:
    """Counts of integer values (e.g. microseconds) in log buckets.

    ``add(v)``, ``merge(other)``, ``percentile(p)`` (p in 0..100),
    ``count``, ``max``, ``min``, ``mean``; ``to_dict()`` / ``from_dict()``
    give a sparse ``{bucket: count}`` form that crosses process boundaries.
    """

    __slots__ = ("buckets", "count", "max", "min", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.max: int | None = None
        self.min: int | None = None

    def add(self, value: int) -> None:
        value = int(value)
        b = bucket_of(value)
        self.buckets[b] = self.buckets.get(b, 0) + 1
        self.count += 1
        self.total += value
        if self.max is None or value > self.max:
            self.max = value
        if self.min is None or value < self.min:
            self.min = value

    def merge(self, other: Histogram) -> Histogram:
        for b, n in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + n
        self.count += other.count
        self.total += other.total
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        return self

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def percentile(self, p: float) -> float | None:
        """The value below which ``p`` percent of the counts lie (None when empty).

        Nearest-rank on the buckets; the top percentile is the exact maximum.
        """
        if not self.count or self.min is None or self.max is None:
            return None
        if p >= 100:
            return float(self.max)
        rank = max(1, -(-self.count * p // 100))  # ceil(count * p / 100)
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                value = bucket_value(b)
                return min(max(value, float(self.min)), float(self.max))
        return float(self.max)

    def to_dict(self) -> dict:
        return {"buckets": dict(self.buckets), "count": self.count, "total": self.total, "max": self.max, "min": self.min}

    @classmethod
    def from_dict(cls, data: Mapping) -> Histogram:
        h = cls()
        h.buckets = {int(k): int(v) for k, v in data.get("buckets", {}).items()}
        h.count, h.total = int(data.get("count", 0)), int(data.get("total", 0))
        h.max, h.min = data.get("max"), data.get("min")
        return h


class Jitter:
    """RFC 3550 §6.4.1 interarrival jitter of one stream, in the units fed in.

    ``update(transit)`` with each packet's transit time (arrival minus send
    time, any constant clock offset cancels), in arrival order.
    """

    __slots__ = ("_last", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._last: float | None = None

    def update(self, transit: float) -> float:
        if self._last is not None:
            d = abs(transit - self._last)
            self.value += (d - self.value) / 16.0
        self._last = transit
        return self.value


class SeqTracker:
    """Arrivals of packets numbered 0, 1, 2 ...: received, duplicates, reordered.

    Keeps one bit per sequence number up to ``capacity`` (numbers beyond it
    are counted but not checked for duplicates).
    """

    __slots__ = ("_bits", "_capacity", "duplicates", "highest", "received", "reordered")

    def __init__(self, capacity: int = 1 << 20) -> None:
        self.received = 0
        self.duplicates = 0
        self.reordered = 0
        self.highest = -1
        self._capacity = capacity
        self._bits = bytearray((min(capacity, 1 << 16) + 7) // 8)

    def add(self, seq: int) -> bool:
        """Record ``seq``; False when it is a duplicate (not counted as received)."""
        if 0 <= seq < self._capacity:
            byte, bit = seq >> 3, 1 << (seq & 7)
            if byte >= len(self._bits):
                self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
            if self._bits[byte] & bit:
                self.duplicates += 1
                return False
            self._bits[byte] |= bit
        self.received += 1
        if seq < self.highest:
            self.reordered += 1
        else:
            self.highest = seq
        return True


class FrameClock:
    """The schedule of ``n`` media sessions sending ``packets_per_frame`` packets every ``interval`` seconds.

    :meth:`due` turns elapsed time into frames owed (``n / interval`` per
    second, whatever ``n`` is at the time; fractions carry over). When more
    than ``max_behind`` seconds of frames are owed, the excess is skipped: the
    generator fell behind. Every count is in **packets**, so a video frame of
    3 packets skipped is 3: ``offered`` is everything the schedule asked for
    (sent or not), ``skipped`` what it gave up on (``offered`` minus the
    packets of the frames :meth:`due` returned).
    """

    __slots__ = ("_credit", "_last", "interval", "max_behind", "offered", "packets_per_frame", "skipped")

    def __init__(self, interval: float, packets_per_frame: int, now: float, max_behind: float = 0.25) -> None:
        self.interval = interval
        self.packets_per_frame = packets_per_frame
        self.max_behind = max_behind
        self.offered = 0
        self.skipped = 0
        self._last = now
        self._credit = 0.0

    def due(self, now: float, n: int) -> int:
        """Frames to send now for ``n`` sessions (at most ``max(n, max_behind`` s of frames``)``)."""
        self._credit += (now - self._last) * n / self.interval
        self._last = now
        due = int(self._credit)
        self._credit -= due
        k = self.packets_per_frame
        self.offered += due * k
        limit = max(n, int(self.max_behind * n / self.interval))
        if due > limit:
            self.skipped += (due - limit) * k
            due = limit
        return due


def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when empty)."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * p // 100))
    return float(ordered[min(len(ordered), int(rank)) - 1])


def loss_pct(sent: int, received: int) -> float | None:
    """Percentage of ``sent`` that did not arrive (None when nothing was sent)."""
    if sent <= 0:
        return None
    return max(0.0, 100.0 * (sent - received) / sent)
