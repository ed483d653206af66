"""The bake's second signal: the new release's own Prometheus counters (strategy.bake.metrics).

The access log counts what nginx saw; the app's request counter counts what the app says it
answered, so a release whose 5xx answers the access log cannot see (the signal off, or the log
unreadable) is still caught. The bake reads the counter on the new slot's own port at its start
and at each round, and judges the difference: a counter is cumulative since its process
started, so a value lower than at the start means the process restarted (or another process
answered the read) — a failure signal, never a negative count.

Parsing is prometheus_client's text parser; everything else here is pure (text in, verdict
out), so the unit tests feed it synthetic text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from smoke.answer import UnusableAnswer
from smoke.answer import get as bounded_get

# A scrape longer than this is not a metrics page (a misconfigured path serving a file).
MAX_BYTES = 4 * 1024 * 1024

SeriesKey = tuple[tuple[str, str], ...]  # the labels of one series, sorted


class MetricsUnreadable(Exception):
    """The metrics page cannot be used: unreachable, not Prometheus text, no such counter.
    The message is one line of evidence for the bake, never a traceback."""


@dataclass(frozen=True)
class Reading:
    """One read of the request counter: each series' value, and its status label."""

    series: dict[SeriesKey, float]
    status_label: str

    def status_of(self, key: SeriesKey) -> str:
        return dict(key).get(self.status_label, "")


@dataclass(frozen=True)
class Delta:
    """What the new release answered between two readings, by its own count."""

    requests: float
    server_errors: float

    @property
    def ratio(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0

    def line(self) -> str:
        return (
            f"metrics: {_n(self.requests)} requests since the bake started, "
            f"{_n(self.server_errors)} 5xx (ratio {self.ratio:.2f})"
        )


def parse(text: str, counter: str, status_label: str) -> Reading:
    """The series of `counter` that carry `status_label`. MetricsUnreadable when the text is
    not Prometheus text or has no such series."""
    if len(text) > MAX_BYTES:
        raise MetricsUnreadable(f"the metrics page is {len(text)} bytes, not a metrics page")
    # The parser names a counter's family without `_total` and keeps it on the samples.
    wanted = {counter, counter.removesuffix("_total") + "_total"}
    series: dict[SeriesKey, float] = {}
    seen: list[str] = []
    try:
        for family in text_string_to_metric_families(text):
            if len(seen) < 8:
                seen.append(family.name)
            for sample in family.samples:
                if sample.name in wanted and status_label in sample.labels:
                    key = tuple(sorted(sample.labels.items()))
                    series[key] = series.get(key, 0.0) + float(sample.value)
    except Exception as exc:  # the parser raises ValueError, IndexError, … on bad text
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise MetricsUnreadable(
            f"the metrics page is not Prometheus text ({type(exc).__name__}: {first})"
        ) from None
    if not series:
        names = ", ".join(seen) if seen else "none"
        raise MetricsUnreadable(
            f"no {counter} series with a {status_label!r} label on the metrics page "
            f"(metrics found: {names})"
        )
    return Reading(series, status_label)


def compare(start: Reading, end: Reading) -> Delta:
    """Requests and 5xx answers between two readings. MetricsUnreadable when a series went
    down or vanished: the counter restarted from zero (a crash, a restart) or another process
    answered the read — the bake treats that as a failure, not as a negative count."""
    for key, before in start.series.items():
        after = end.series.get(key)
        if after is None or after < before:
            labels = ",".join(f'{k}="{v}"' for k, v in key)
            now = "gone" if after is None else _n(after)
            raise MetricsUnreadable(
                f"the counter went backwards ({{{labels}}} {_n(before)} -> {now}): the new "
                f"release restarted, or another process answered the read"
            )
    requests = errors = 0.0
    for key, after in end.series.items():
        grew = after - start.series.get(key, 0.0)
        requests += grew
        if end.status_of(key).startswith("5"):
            errors += grew
    return Delta(requests, errors)


@dataclass(frozen=True)
class MetricsPolicy:
    counter: str
    status_label: str
    max_error_ratio: float
    min_requests: int


class MetricsWatch:
    """The bake's view of the counter: a baseline at the start, then a verdict per round."""

    def __init__(self, read: Callable[[], str], policy: MetricsPolicy) -> None:
        self._read = read
        self.policy = policy
        self._start: Reading | None = None
        self.last: Delta | None = None

    def _reading(self) -> Reading:
        return parse(self._read(), self.policy.counter, self.policy.status_label)

    def begin(self) -> str | None:
        """Read the baseline; the failure (one line) when it cannot be read."""
        try:
            self._start = self._reading()
        except MetricsUnreadable as exc:
            return f"metrics: {exc}"
        return None

    def check(self, *, done: bool) -> str | None:
        """The failure of this round (one line), or None. The ratio is judged once the new
        release counted min_requests, and at the end over whatever it counted."""
        if self._start is None:
            raise AssertionError("MetricsWatch.check before begin")
        try:
            delta = compare(self._start, self._reading())
        except MetricsUnreadable as exc:
            return f"metrics: {exc}"
        self.last = delta
        p = self.policy
        judged = done or delta.requests >= p.min_requests
        if judged and delta.requests and delta.ratio > p.max_error_ratio:
            return (
                f"metrics: 5xx ratio {_ratio(delta.ratio, p.max_error_ratio)} > "
                f"{p.max_error_ratio:g} over "
                f"{_n(delta.requests)} requests"
            )
        return None

    def line(self) -> str:
        return self.last.line() if self.last is not None else "metrics: not read yet"


# A metrics page of many series is bigger than a contract answer, but still bounded: a page
# that streams forever must not hold the bake.
METRICS_MAX_BYTES = 16 * 1024 * 1024


def http_reader(client: httpx.Client, path: str) -> Callable[[], str]:
    """GET the metrics page with `client` (its base URL the slot's port through the tunnel,
    its timeout the probe's); anything but a 2xx text answer is MetricsUnreadable."""

    def read() -> str:
        try:
            answer = bounded_get(client, path, max_bytes=METRICS_MAX_BYTES)
        except httpx.HTTPError as exc:
            raise MetricsUnreadable(f"no answer from {path}: {type(exc).__name__}") from None
        except UnusableAnswer as exc:
            raise MetricsUnreadable(f"{path}: {exc.detail}") from None
        if not 200 <= answer.response.status_code < 300:
            raise MetricsUnreadable(f"{path} answered {answer.response.status_code}")
        return answer.text

    return read


def _ratio(value: float, limit: float) -> str:
    """Two decimals, more when two would print it equal to (or below) the limit."""
    for digits in (2, 3, 4):
        text = f"{value:.{digits}f}"
        if float(text) > limit:
            return text
    return f"{value:.6f}"


def _n(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"
