"""Steady HTTP traffic, recorded request by request: what a user of the app would have seen
during a deploy. The demo counts failed requests with it (a new TCP connection per request,
through the front door); the benchmark and the tests use the same stream as their outside
observer ("which release answers now?") and as their failed-request counter.

`Load` sends GET requests at a fixed rate from a scheduler thread to a small worker pool (so
a slow answer never shifts the schedule), with `Connection: close`. It is bounded both in count
and in time. Each request becomes a `Hit` (when it was sent, how it ended, which release
answered).

Only loopback and private addresses (the sandbox VPS) are accepted as targets.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Self


@dataclass(frozen=True)
class Hit:
    sent: float  # time.monotonic() when the request was started
    done: float
    status: int | None  # None: no HTTP answer (refused, reset, timed out)
    release: str | None  # "release" field of a JSON answer
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def check_target(host: str) -> None:
    ip = ipaddress.ip_address(host)
    if not (ip.is_loopback or ip.is_private):
        raise ValueError(f"load target {host} is neither loopback nor private: refused")


def fetch(host: str, port: int, path: str, timeout: float) -> Hit:
    """One request on a fresh connection."""
    sent = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return Hit(sent, time.monotonic(), None, None, f"{type(exc).__name__}: {exc}"[:160])
    finally:
        conn.close()
    return Hit(sent, time.monotonic(), response.status, release_of(body))


def release_of(body: bytes) -> str | None:
    """The "release" field of a JSON answer (the sample app's /version), if any."""
    try:
        loaded = json.loads(body)
    except ValueError:
        return None
    if isinstance(loaded, dict) and isinstance(loaded.get("release"), str):
        return str(loaded["release"])
    return None


class Recorder:
    """What every load shares: a thread started on entry (`_run`, given by the subclass),
    the hits it records, a bounded wait on them and a stop."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._hits: list[Hit] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self.started = 0.0

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)

    def hits(self) -> list[Hit]:
        with self._lock:
            return sorted(self._hits, key=lambda h: h.sent)

    def wait_for(self, accept: Callable[[list[Hit]], bool], deadline: float) -> bool:
        """Until `accept(hits)` holds or `deadline` seconds pass (polls the recorded hits)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if accept(self.hits()):
                return True
            if self._stop.wait(0.05) or not self._thread.is_alive():
                return accept(self.hits())
        return False

    def stop(self) -> list[Hit]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.hits()


class Load(Recorder):
    """`rate` requests per second to http://host:port/path until stopped, at most
    `max_seconds` and `rate * max_seconds` requests."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str = "/version",
        *,
        rate: float = 50.0,
        max_seconds: float = 120.0,
        timeout: float = 2.0,
        workers: int = 16,
    ) -> None:
        check_target(host)
        if not 0 < rate <= 500 or not 0 < max_seconds <= 600:
            raise ValueError("rate must be in (0, 500] req/s and max_seconds in (0, 600]")
        super().__init__("rg-traffic-rate")
        self._host, self._port, self._path = host, port, path
        self._interval = 1.0 / rate
        self._max_requests = int(rate * max_seconds)
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rg-traffic")

    def _run(self) -> None:
        for n in range(self._max_requests):
            due = self.started + n * self._interval
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self._pool.submit(self._one)

    def _one(self) -> None:
        self._record(fetch(self._host, self._port, self._path, self._timeout))

    def stop(self) -> list[Hit]:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True)
        return self.hits()


def tail_is(release: str, count: int) -> Callable[[list[Hit]], bool]:
    """The last `count` answers all came from `release`."""

    def accept(hits: list[Hit]) -> bool:
        last = hits[-count:]
        return len(last) == count and all(h.ok and h.release == release for h in last)

    return accept


def final_run_start(hits: Iterable[Hit], release: str) -> Hit | None:
    """The first request of the last unbroken run of successful answers from `release`
    (None: the last answer is not from it)."""
    start = None
    for hit in hits:
        if hit.ok and hit.release == release:
            if start is None:
                start = hit
        else:
            start = None
    return start


@dataclass(frozen=True)
class Tally:
    """What users saw in a stretch of traffic: requests, failed ones, who answered."""

    requests: int
    failed: int  # no 2xx answer: refused, reset, timed out, or an error status
    by_release: dict[str, int]  # successful answers per release id

    @classmethod
    def of(cls, hits: Iterable[Hit]) -> Tally:
        hits = list(hits)
        by_release: dict[str, int] = {}
        for hit in hits:
            if hit.ok and hit.release is not None:
                by_release[hit.release] = by_release.get(hit.release, 0) + 1
        return cls(len(hits), sum(1 for h in hits if not h.ok), by_release)

    def served_by(self, release: str | None) -> int:
        return self.by_release.get(release, 0) if release else 0
