"""Load for the benchmark: `deploy.traffic`'s new-connection load (re-exported here), and
`KeepAliveLoad`, the same over one persistent connection.
"""

from __future__ import annotations

import http.client
import time

from deploy.traffic import (
    Hit,
    Load,
    Recorder,
    Tally,
    check_target,
    fetch,
    final_run_start,
    release_of,
    tail_is,
)

__all__ = [
    "Hit",
    "KeepAliveLoad",
    "Load",
    "Tally",
    "check_target",
    "fetch",
    "final_run_start",
    "tail_is",
]

_CLOSED_BEFORE_ANSWER = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class KeepAliveLoad(Recorder):
    """GET requests at `rate` per second over one persistent HTTP/1.1 connection, the way an
    API client or a browser with a connection pool sends them, recorded as `Hit`s.

    The connection is reopened when the server closes it. A request sent on a *reused*
    connection that the server closed before answering is retried once on a new connection:
    HTTP allows exactly that for idempotent requests (RFC 9112, 9.3.1), clients do it, and a
    graceful nginx reload relies on it when it closes idle keep-alive connections. Those
    retries are counted (`retried`); a failure on a fresh connection is a failed request.
    Bounded in count and time like `Load`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        path: str = "/version",
        *,
        rate: float = 20.0,
        max_seconds: float = 120.0,
        timeout: float = 2.0,
    ) -> None:
        check_target(host)
        if not 0 < rate <= 200 or not 0 < max_seconds <= 600:
            raise ValueError("rate must be in (0, 200] req/s and max_seconds in (0, 600]")
        super().__init__("bench-keepalive")
        self._host, self._port, self._path = host, port, path
        self._interval = 1.0 / rate
        self._max_requests = int(rate * max_seconds)
        self._timeout = timeout
        self.retried = 0
        self.connections = 0

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            for n in range(self._max_requests):
                due = self.started + n * self._interval
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                sent = time.monotonic()
                hit, conn = self._request(conn, sent, retry=True)
                self._record(hit)
        finally:
            if conn is not None:
                conn.close()

    def _request(
        self, conn: http.client.HTTPConnection | None, sent: float, *, retry: bool
    ) -> tuple[Hit, http.client.HTTPConnection | None]:
        reused = conn is not None
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self.connections += 1
        try:
            conn.request("GET", self._path)
            response = conn.getresponse()
            body = response.read()
        except _CLOSED_BEFORE_ANSWER as exc:
            conn.close()
            if reused and retry:
                self.retried += 1
                return self._request(None, sent, retry=False)
            return Hit(sent, time.monotonic(), None, None, f"{type(exc).__name__}: {exc}"), None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            return Hit(sent, time.monotonic(), None, None, f"{type(exc).__name__}: {exc}"), None
        keep = None if response.will_close else conn
        if keep is None:
            conn.close()
        return Hit(sent, time.monotonic(), response.status, release_of(body)), keep
