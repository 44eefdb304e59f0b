"""Reading a server's `/metrics`: scrapes, and what changed between two of them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from audiotext.server.metrics import REFUSALS

Key = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Scrape:
    """One scrape of `/metrics`: every sample by name and labels."""

    samples: dict[Key, float]

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 for a series not seen yet (counters start at 0)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str) -> float:
        """A metric's samples summed over every label set (0 where none is seen yet)."""
        return sum(v for (n, _), v in self.samples.items() if n == name)

    def __sub__(self, before: Scrape) -> Delta:
        return Delta(self, before)


@dataclass(frozen=True)
class Delta:
    """What changed between two scrapes."""

    after: Scrape
    before: Scrape

    def __call__(self, name: str, **labels: str) -> float:
        return self.after.value(name, **labels) - self.before.value(name, **labels)

    def refused(self) -> dict[str, float]:
        """Refusals counted between the scrapes, by reason (only those that moved)."""
        moved = {r: self("audiotext_requests_refused_total", reason=r) for r in REFUSALS}
        return {reason: n for reason, n in moved.items() if n}


def parse(text: str) -> Scrape:
    """A scrape from the text `/metrics` answered."""
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return Scrape(samples)


def scrape(http: httpx.Client) -> Scrape:
    response = http.get("/metrics")
    response.raise_for_status()
    return parse(response.text)


def scrape_when(
    http: httpx.Client, ready: Callable[[Scrape], bool], within_s: float = 5.0
) -> Scrape:
    """A scrape once `ready` holds. A request's end-of-request series are recorded just
    after its last byte is sent, so a scrape right after the reply may precede them."""
    deadline = time.monotonic() + within_s
    current = scrape(http)
    while not ready(current) and time.monotonic() < deadline:
        time.sleep(0.05)
        current = scrape(http)
    return current
