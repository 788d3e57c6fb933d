"""Fixed-memory summaries of a stream of values, for reports over runs of any size.

`Distribution` keeps exact count, mean, min and max and a reservoir sample for percentiles and
histograms; `FrequentItems` keeps the most frequent keys (Misra-Gries). Both are deterministic given
their seed, so a report rebuilt from the same run shows the same numbers.
"""

from __future__ import annotations

import random

import numpy as np

PERCENTILES: tuple[int, ...] = (5, 25, 50, 75, 95)


class Reservoir:
    """A uniform sample of at most `size` items of a stream (Algorithm R), the whole stream while it
    has no more; `seen` counts every item offered."""

    def __init__(self, size: int, rng: random.Random):
        self.size, self.rng = size, rng
        self.seen = 0
        self.items: list = []

    def add(self, item) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.size:
                self.items[j] = item


class Distribution:
    """Exact count, mean, min and max; percentiles and histogram values from a reservoir sample
    (Algorithm R), which is the whole data while it holds no more than `size` values."""

    def __init__(self, size: int, rng: random.Random):
        self.size = size
        self.count, self.total = 0, 0.0
        self.min: float | None = None
        self.max: float | None = None
        self.reservoir = Reservoir(size, rng)

    @property
    def sample(self) -> list[float]:
        return self.reservoir.items

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)
        self.reservoir.add(value)

    def result(self) -> dict:
        out: dict = {"count": self.count, "mean": None, "min": self.min}
        out.update({f"p{p}": None for p in PERCENTILES})
        out["max"] = self.max
        if self.count:
            out["mean"] = self.total / self.count
            for p, v in zip(PERCENTILES, np.percentile(self.sample, PERCENTILES), strict=True):
                out[f"p{p}"] = float(v)
        out["values"] = list(self.sample)
        out["exact_percentiles"] = self.count <= self.size
        return out


class FrequentItems:
    """Misra-Gries summary: every key more frequent than n/(capacity+1) is kept, its count short by at
    most that much; exact while there were never more than `capacity` distinct keys."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.exact = True

    def add(self, key: str) -> None:
        if key in self.counts:
            self.counts[key] += 1
        elif len(self.counts) < self.capacity:
            self.counts[key] = 1
        else:
            self.exact = False
            self.counts = {k: c - 1 for k, c in self.counts.items() if c > 1}

    def top(self, n: int) -> list[tuple[str, int]]:
        """The `n` most frequent keys with their counts, ties by key."""
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
