"""Receiving one answer within bounds: a deadline for the whole answer, a cap on its size, and
redirects followed only on the base URL's own origin.

httpx's timeouts are per network read, so an answer that trickles one byte at a time never
times out, and `Response.read()` keeps whatever the server sends (an endless body, a gzip
bomb) in memory. Here the body is read raw, chunk by chunk, against the check's deadline and
a byte cap, and decoded (gzip, deflate) with the same cap, so a hostile server costs at most
`max_bytes` of memory and about one read timeout past the deadline. Redirects are followed by
hand: httpx reads every hop's body in full, and would follow one to any host (a cloud
metadata address, say) with the check's headers.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import httpx

from smoke.clock import Clock, SystemClock
from smoke.model import Check

# Far more than any contract check needs to judge an answer; a body beyond it is a fail.
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class UnusableAnswer(Exception):
    """The server's answer cannot be judged as sent. `outcome` "error" means no complete
    answer (worth a retry); "fail" means the server said something wrong."""

    def __init__(
        self,
        detail: str,
        *,
        outcome: Literal["fail", "error"] = "fail",
        status: int | None = None,
        cut: Literal["", "size", "time"] = "",
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.outcome: Literal["fail", "error"] = outcome
        self.status = status
        self.cut = cut  # the body was still coming at the size cap or at the deadline


@dataclass(frozen=True)
class Received:
    response: httpx.Response  # closed; its body was read here, use `text`
    text: str
    url: httpx.URL  # where the answer came from (after redirects)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


def receive(
    client: httpx.Client,
    base: str,
    check: Check,
    clock: Clock,
    *,
    max_bytes: int = MAX_BODY_BYTES,
) -> Received:
    """Send the check's request and read its answer whole, within `check.timeout` seconds
    from now. Raises httpx.HTTPError when there is no answer, UnusableAnswer when the answer
    is too slow, too big, undecodable, or redirects off the base URL's origin."""
    req = check.request
    deadline = clock.monotonic() + check.timeout
    method = req.method
    url = httpx.URL(base + req.path)
    home, shown_home = _origin(url), f"{url.scheme}://{url.netloc.decode()}"
    params: tuple[tuple[str, str], ...] | None = req.query or None
    json_body, content = (req.json_body if req.has_json else None), req.content
    for _ in range(MAX_REDIRECTS + 1):
        with client.stream(
            method,
            url,
            params=params,
            headers=list(req.headers),
            json=json_body,
            content=content,
            timeout=check.timeout,
            follow_redirects=False,
        ) as response:
            status = response.status_code
            location = response.headers.get("location")
            if not (req.follow_redirects and status in REDIRECT_STATUSES and location):
                return _read(response, deadline, clock, max_bytes, check.timeout)
            try:
                target = response.url.join(location)
            except httpx.InvalidURL:
                raise UnusableAnswer(
                    f"expected a redirect to a valid URL got {status} to an invalid Location",
                    status=status,
                ) from None
        if _origin(target) != home:
            raise UnusableAnswer(
                f"expected redirects to stay on {shown_home} got {status} "
                f"to {target.scheme}://{target.netloc.decode()} (not followed)",
                status=status,
            )
        if status == 303 or (status in (301, 302) and method == "POST"):
            method, json_body, content = ("HEAD" if method == "HEAD" else "GET"), None, None
        url, params = target, None
        if clock.monotonic() >= deadline:
            raise UnusableAnswer(
                f"expected an answer within {check.timeout:g} s got redirects until then",
                outcome="error",
            )
    raise UnusableAnswer(
        f"expected an answer within {MAX_REDIRECTS} redirects got more (a redirect loop?)",
        status=status,
    )


def get(
    client: httpx.Client,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> Received:
    """GET `url` with `client` (no redirects followed), its read timeout the deadline of the
    whole answer: the deploy gate's probes use this, so a release that streams forever or
    trickles its answer fails its gate instead of holding the deploy. Raises as receive()."""
    clock = clock or SystemClock()
    within = client.timeout.read or 30.0
    deadline = clock.monotonic() + within
    with client.stream("GET", url, headers=headers, follow_redirects=False) as response:
        return _read(response, deadline, clock, max_bytes, within)


def _read(
    response: httpx.Response, deadline: float, clock: Clock, max_bytes: int, timeout: float
) -> Received:
    status = response.status_code
    if response.is_stream_consumed:
        # An in-process transport (httpx.MockTransport) hands over a body already read and
        # decoded; no network is involved.
        body = response.content
    else:
        raw = bytearray()
        # The deadline holds in real time too: the network does not run on an injected clock.
        real_deadline = time.monotonic() + (deadline - clock.monotonic())
        for chunk in response.iter_raw():
            raw += chunk
            if len(raw) > max_bytes:
                raise UnusableAnswer(
                    f"expected a body that ends within {_size(max_bytes)} got {status} still "
                    f"sending (stopped reading there)",
                    status=status,
                    cut="size",
                )
            if clock.monotonic() > deadline or time.monotonic() > real_deadline:
                raise UnusableAnswer(
                    f"expected a body that ends within {timeout:g} s got {status} still "
                    f"sending ({len(raw)} bytes by then)",
                    status=status,
                    cut="time",
                )
        encoding = response.headers.get("content-encoding", "")
        body = _decode(bytes(raw), encoding, max_bytes, status)
    charset = response.charset_encoding or "utf-8"
    try:
        text = body.decode(charset, errors="replace")
    except LookupError:
        text = body.decode("utf-8", errors="replace")
    return Received(response=response, text=text, url=response.url)


def _decode(body: bytes, encoding: str, max_bytes: int, status: int) -> bytes:
    """Undo Content-Encoding (the last coding applied first), each layer capped."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip", "deflate"):
            body = _inflate(body, coding, max_bytes, status)
            continue
        raise UnusableAnswer(
            f"expected a body in an encoding smoke reads (gzip, deflate) got Content-Encoding "
            f"{coding[:40]!r}",
            status=status,
        )
    return body


def _inflate(body: bytes, coding: str, max_bytes: int, status: int) -> bytes:
    # wbits 47 reads a gzip or zlib header; a "deflate" body is sometimes raw deflate (-15).
    tries = (zlib.MAX_WBITS | 32,) + ((-zlib.MAX_WBITS,) if coding == "deflate" else ())
    for wbits in tries:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, max_bytes + 1)
        except zlib.error:
            continue
        if len(out) > max_bytes:
            raise UnusableAnswer(
                f"expected a body that ends within {_size(max_bytes)} got {status} with more "
                f"once decompressed ({coding}; stopped there)",
                status=status,
                cut="size",
            )
        return out
    raise UnusableAnswer(
        f"expected a body in valid {coding} (its Content-Encoding) got bytes that do not "
        f"decompress",
        status=status,
    )
