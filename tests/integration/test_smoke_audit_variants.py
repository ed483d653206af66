"""Each readiness-audit check shown failing against a misbehaving variant of the app.

The variants are a tiny Python http.server app, served over real HTTPS (a throwaway
self-signed certificate, so HSTS is judged too): the well-behaved variant passes every check,
and each variant breaks exactly one item of the seed checklists and fails exactly its check.
"""

from __future__ import annotations

import io
import json
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from smoke.commands import run_smoke
from smoke.config import AUDIT_CHECKS, AuditSettings, MutationSettings

pytestmark = pytest.mark.integration

TOKENS = {"READY_TOKEN": "ready-secret-1111", "METRICS_TOKEN": "metrics-secret-2222"}
ALLOWED = "https://app.example.com"
AUDIT = AuditSettings(
    enabled=True,
    ready_token_env="READY_TOKEN",
    metrics_token_env="METRICS_TOKEN",
    headers_path="/api/items",
    cors_allowed_origin=ALLOWED,
    mutation=MutationSettings(path="/api/items", body={"name": "a", "price_cents": 1}),
)


@dataclass(frozen=True)
class Behaviour:
    """How the variant behaves; the defaults are the well-behaved app."""

    live_needs_auth: bool = False
    ready_protected: bool = True
    ready_accepts_token: bool = True
    nosniff: bool = True
    frame_options: str | None = "DENY"
    referrer_policy: str | None = "no-referrer"
    hsts: str | None = "max-age=63072000; includeSubDomains"
    cors: str = "allowlist"  # allowlist | none | wildcard | reflect
    echo_request_id: bool = True
    generate_request_id: bool = True
    metrics_protected: bool = True
    metrics_prometheus: bool = True
    strict_bodies: bool = True


def make_handler(b: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if b.nosniff:
                self.send_header("X-Content-Type-Options", "nosniff")
            if b.frame_options:
                self.send_header("X-Frame-Options", b.frame_options)
            if b.referrer_policy:
                self.send_header("Referrer-Policy", b.referrer_policy)
            if b.hsts:
                self.send_header("Strict-Transport-Security", b.hsts)
            sent = self.headers.get("X-Request-Id")
            if sent and b.echo_request_id:
                self.send_header("X-Request-Id", sent)
            elif sent or b.generate_request_id:  # a fresh id instead of the one sent
                self.send_header("X-Request-Id", str(uuid.uuid4()))
            origin = self.headers.get("Origin")
            if origin and ((b.cors == "allowlist" and origin == ALLOWED) or b.cors == "reflect"):
                self.send_header("Access-Control-Allow-Origin", origin)
            elif origin and b.cors == "wildcard":
                self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/health/live":
                if b.live_needs_auth and not self.headers.get("Authorization"):
                    return self.reply(401, b'{"error":"unauthorized"}')
                return self.reply(200, b'{"status":"live"}')
            if path == "/health/ready":
                token = self.headers.get("X-Health-Token")
                good = token == TOKENS["READY_TOKEN"] and b.ready_accepts_token
                if b.ready_protected and not good:
                    return self.reply(401, b'{"error":"unauthorized"}')
                return self.reply(200, b'{"status":"ready"}')
            if path == "/metrics":
                auth = self.headers.get("Authorization")
                if b.metrics_protected and auth != f"Bearer {TOKENS['METRICS_TOKEN']}":
                    return self.reply(401, b'{"error":"unauthorized"}')
                if b.metrics_prometheus:
                    text = b"# HELP up Up.\n# TYPE up gauge\nup 1\n"
                    return self.reply(200, text, "text/plain; version=0.0.4")
                return self.reply(200, b'{"up": 1}')
            if path == "/api/items":
                return self.reply(200, b'{"items":[]}')
            return self.reply(404, b'{"error":"not_found"}')

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            if self.path == "/api/items":
                if b.strict_bodies and set(body) - {"name", "price_cents"}:
                    return self.reply(400, b'{"error":"validation"}')
                return self.reply(201, b'{"item":{"id":9}}')
            return self.reply(404, b'{"error":"not_found"}')

    return Handler


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return Cert(cert, key)


@pytest.fixture
def serve(cert: Cert) -> Iterator:
    servers: list[ThreadingHTTPServer] = []

    def start(behaviour: Behaviour, tls: bool = True) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(behaviour))
        server.daemon_threads = True
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert.cert, cert.key)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def audit(base_url: str, cert: Cert) -> dict:
    out = io.StringIO()
    client = httpx.Client(verify=ssl.create_default_context(cafile=str(cert.cert)))
    with client:
        code = run_smoke(
            base_url=base_url, audit=AUDIT, out=out, json_out=True, client=client, environ=TOKENS
        )
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    summary = records[-1]["smoke"]
    checks = {r["check"]: r for r in records[:-1]}
    return {"code": code, "summary": summary, "checks": checks, "text": out.getvalue()}


def test_well_behaved_variant_passes_every_check(serve, cert: Cert) -> None:
    got = audit(serve(Behaviour()), cert)
    assert got["code"] == 0, got["text"]
    assert list(got["checks"]) == list(AUDIT_CHECKS)
    assert got["checks"]["header-hsts"]["detail"].startswith("200 in")  # judged over https
    for secret in TOKENS.values():
        assert secret not in got["text"]


def test_hsts_is_not_judged_over_plain_http(serve, cert: Cert) -> None:
    got = audit(serve(Behaviour(hsts=None), tls=False), cert)
    assert got["code"] == 0, got["text"]
    assert "not applicable over http" in got["checks"]["header-hsts"]["detail"]


GOOD = Behaviour()
VARIANTS = {
    "live-open": (replace(GOOD, live_needs_auth=True), "got 401"),
    "ready-refuses-anonymous": (replace(GOOD, ready_protected=False), "got 200"),
    "ready-with-token": (replace(GOOD, ready_accepts_token=False), "got 401"),
    "header-nosniff": (replace(GOOD, nosniff=False), "X-Content-Type-Options"),
    "header-frame-policy": (replace(GOOD, frame_options=None), "expected a frame policy"),
    "header-referrer-policy": (replace(GOOD, referrer_policy="unsafe-url"), "full URLs leak"),
    "header-hsts": (replace(GOOD, hsts=None), "Strict-Transport-Security"),
    "cors-allowed-origin": (replace(GOOD, cors="none"), "got no such header"),
    "cors-other-origin": (replace(GOOD, cors="reflect"), "it is reflected"),
    "request-id-echoed": (replace(GOOD, echo_request_id=False), "X-Request-Id = 'rg-audit-"),
    "request-id-generated": (replace(GOOD, generate_request_id=False), "no such header"),
    "metrics-refuses-anonymous": (replace(GOOD, metrics_protected=False), "got 200"),
    "metrics-prometheus": (replace(GOOD, metrics_prometheus=False), "Content-Type"),
    "mutation-rejects-unknown-fields": (replace(GOOD, strict_bodies=False), "got 201"),
}


def test_every_audit_check_has_a_variant() -> None:
    assert set(VARIANTS) == set(AUDIT_CHECKS)


@pytest.mark.parametrize("check", list(VARIANTS))
def test_each_variant_fails_exactly_its_check(serve, cert: Cert, check: str) -> None:
    behaviour, detail = VARIANTS[check]
    got = audit(serve(behaviour), cert)
    assert got["code"] == 1, got["text"]
    assert got["summary"]["failed_checks"] == [check], got["text"]
    assert detail in got["checks"][check]["detail"]


def test_wildcard_cors_fails_the_other_origin_check(serve, cert: Cert) -> None:
    got = audit(serve(replace(GOOD, cors="wildcard")), cert)
    assert got["summary"]["failed_checks"] == ["cors-other-origin"]
    assert "any origin may read responses" in got["checks"]["cors-other-origin"]["detail"]
