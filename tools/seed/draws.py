"""Draws: random values from one seeded Random, instants in Paris time.

random.choice/randrange draw integers by rejection sampling in Python; one float draw is several
times faster and just as deterministic (most of a seed is spent here). Every value of the data
set comes from these draws, in the order the generator asks for them: the same seed and
arguments give the same data.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Sequence
from decimal import Decimal
from typing import TypeVar

T = TypeVar("T")

ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class Draws:
    def __init__(self, rng: random.Random, tz: dt.tzinfo):
        self.rng = rng
        self.tz = tz

    def pick(self, options: Sequence[T]) -> T:
        return options[int(self.rng.random() * len(options))]

    def integer(self, low: int, high: int) -> int:
        """An int in [low, high)."""
        return low + int(self.rng.random() * (high - low))

    def weighted(self, options: Sequence[T], weights: Sequence[int]) -> T:
        draw = self.rng.random() * sum(weights)
        for option, weight in zip(options, weights, strict=True):
            draw -= weight
            if draw < 0:
                return option
        return options[-1]

    def between(self, start: dt.datetime, end: dt.datetime) -> dt.datetime:
        """A random instant in [start, end), to the second, in Paris time."""
        low, high = math.ceil(start.timestamp()), math.floor(end.timestamp())
        if high <= low:
            return start
        return dt.datetime.fromtimestamp(self.integer(low, high), self.tz)

    def recent_biased(self, start: dt.datetime, end: dt.datetime) -> dt.datetime:
        """An instant in [start, end), more likely recent (a growing business)."""
        span = (end - start).total_seconds()
        age = span * (1 - math.sqrt(1 - self.rng.random()))
        return dt.datetime.fromtimestamp(int(end.timestamp() - age), self.tz)

    def days(self, low: float, high: float) -> dt.timedelta:
        return dt.timedelta(seconds=self.integer(int(low * 86400), int(high * 86400) + 1))

    def poisson(self, mean: float) -> int:
        threshold, count, product = math.exp(-mean), 0, self.rng.random()
        while product > threshold:
            count += 1
            product *= self.rng.random()
        return count

    def cents(self, low: int, high: int) -> Decimal:
        return Decimal(self.integer(low, high)).scaleb(-2)

    def digits(self, n: int) -> str:
        return f"{self.integer(0, 10**n):0{n}d}"

    def token(self, prefix: str, n: int) -> str:
        return prefix + "".join(self.rng.choices(ALPHANUMERIC, k=n))
