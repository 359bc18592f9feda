"""Per-identity token buckets: `rate` requests a second, bursts of `burst`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """One bucket per key (token id, certificate URI or client address), at most `max_keys` kept.

    `take` answers None when the request may proceed, else the seconds until it would.
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float], max_keys: int = 100_000):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, cost: float = 1.0) -> float | None:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._evict_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return None
        return (cost - bucket.tokens) / self.rate

    def _evict_full(self, now: float) -> None:
        # A bucket that has refilled completely carries no memory; dropping it changes nothing.
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:
            self._buckets.clear()


def retry_after_header(wait_s: float) -> str:
    """Retry-After is whole seconds; never 0, which would invite an immediate retry."""
    return str(max(1, math.ceil(wait_s)))
