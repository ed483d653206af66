"""The bake's metrics signal: the app's request counter read as Prometheus text at the start of
the bake and at each round, judged on the difference (deploy/metrics.py, deploy/bake.py)."""

from __future__ import annotations

import httpx
import pytest

from deploy import bake, metrics
from deploy.errors import GateFailed
from deploy.model import ProcessSnapshot
from deploy.proxy import TrafficSample
from tests.fakehost import FakeClock

POLICY = metrics.MetricsPolicy(
    counter="http_requests_total", status_label="status", max_error_ratio=0.05, min_requests=20
)


def page(ok: int, errors: int = 0, *, not_found: int = 0) -> str:
    lines = [
        "# HELP http_requests_total Requests answered, by status.",
        "# TYPE http_requests_total counter",
        f'http_requests_total{{method="GET",route="/api/items",status="200"}} {ok}',
    ]
    if errors:
        lines.append(
            f'http_requests_total{{method="GET",route="/api/items",status="500"}} {errors}'
        )
    if not_found:
        lines.append(f'http_requests_total{{method="GET",route="other",status="404"}} {not_found}')
    lines += ["# TYPE process_uptime_seconds gauge", "process_uptime_seconds 12.5", ""]
    return "\n".join(lines)


def reading(text: str) -> metrics.Reading:
    return metrics.parse(text, "http_requests_total", "status")


def test_the_delta_counts_requests_and_5xx_since_the_start():
    delta = metrics.compare(reading(page(100, 2)), reading(page(250, 40, not_found=10)))
    assert delta.requests == 150 + 38 + 10
    assert delta.server_errors == 38
    assert delta.ratio == pytest.approx(38 / 198)


def test_the_counter_name_may_be_given_without_its_total_suffix():
    r = metrics.parse(page(5, 1), "http_requests", "status")
    assert sum(r.series.values()) == 6


def test_a_counter_that_went_backwards_is_a_restart_not_a_negative_count():
    with pytest.raises(metrics.MetricsUnreadable, match=r"went backwards.*500.*40 -> 3"):
        metrics.compare(reading(page(500, 40)), reading(page(600, 3)))
    # a series that vanished (a new process that has not answered a 500 yet) is the same
    with pytest.raises(metrics.MetricsUnreadable, match=r"went backwards.*-> gone"):
        metrics.compare(reading(page(500, 40)), reading(page(600)))


def test_a_missing_counter_names_what_the_page_has():
    with pytest.raises(metrics.MetricsUnreadable) as exc:
        reading(
            "# TYPE up gauge\nup 1\n# TYPE process_uptime_seconds gauge\nprocess_uptime_seconds 3\n"
        )
    assert "no http_requests_total series with a 'status' label" in str(exc.value)
    assert "metrics found: up, process_uptime_seconds" in str(exc.value)
    # the counter without the status label is missing too
    with pytest.raises(metrics.MetricsUnreadable, match="no http_requests_total series"):
        reading('http_requests_total{code="200"} 4\n')


@pytest.mark.parametrize(
    "text",
    [
        "<html><body>Not Found</body></html>",
        'http_requests_total{status="200"} many\n',
        'http_requests_total{status="200 12\n',
        "\x00\x01binary",
    ],
)
def test_malformed_text_is_one_line_of_evidence(text: str):
    with pytest.raises(metrics.MetricsUnreadable) as exc:
        reading(text)
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(("the metrics page is not Prometheus text", "no http_requests"))


def test_the_http_reader_turns_transport_and_status_failures_into_evidence():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(401 if request.url.path == "/auth" else 200, text=page(3))

    client = httpx.Client(base_url="http://slot", transport=httpx.MockTransport(handler))
    assert "http_requests_total" in metrics.http_reader(client, "/metrics")()
    with pytest.raises(metrics.MetricsUnreadable, match="/auth answered 401"):
        metrics.http_reader(client, "/auth")()
    with pytest.raises(metrics.MetricsUnreadable, match="no answer from /down: ConnectError"):
        metrics.http_reader(client, "/down")()


# ---------------------------------------------------------------------------- in the bake


class App:
    """The new release's counter as the bake reads it, moved by the test between rounds."""

    def __init__(self, pages: list[str]) -> None:
        self.pages = pages
        self.reads = 0

    def read(self) -> str:
        text = self.pages[min(self.reads, len(self.pages) - 1)]
        self.reads += 1
        return text


def run_bake(app: App, seconds: float = 3) -> list[str]:
    snap = ProcessSnapshot(status="online", pids=(10,), restarts=0)
    return bake.watch(
        lambda: ("ok", "200"),
        lambda: snap,
        lambda: TrafficSample(0, 0),  # the access log shows nothing: only the counter speaks
        bake.BakePolicy(seconds=seconds, interval=1, max_error_ratio=0.01, min_requests=20),
        FakeClock(),
        bake.Traffic(3002, 3001),
        instances=1,
        metrics=metrics.MetricsWatch(app.read, POLICY),
    )


def test_a_release_answering_500s_fails_the_bake_by_its_own_counter():
    app = App([page(10), page(30), page(156, 66)])
    with pytest.raises(GateFailed) as exc:
        run_bake(app)
    assert exc.value.gate == "bake"
    assert str(exc.value.reason) == "metrics: 5xx ratio 0.31 > 0.05 over 212 requests"
    assert any("FAIL metrics: 5xx ratio 0.31" in line for line in exc.value.evidence)


def test_a_healthy_release_passes_with_the_count_in_the_evidence():
    app = App([page(10), page(50, 1), page(90, 1), page(130, 2)])
    lines = run_bake(app)
    assert any("metrics: 122 requests since the bake started, 2 5xx" in line for line in lines)


def test_a_ratio_just_above_the_limit_is_not_printed_as_equal_to_it():
    app = App([page(10), page(80, 4)])
    with pytest.raises(GateFailed, match=r"metrics: 5xx ratio 0.054 > 0.05 over 74 requests"):
        run_bake(app)


def test_too_few_requests_are_judged_only_at_the_end():
    # 1 request in 2 answered 500 after one round: not judged yet (min_requests 20) …
    app = App([page(0), page(1, 1), page(9, 1)])
    with pytest.raises(GateFailed, match=r"metrics: 5xx ratio 0.10 > 0.05 over 10 requests"):
        run_bake(app)
    assert app.reads == 5  # the baseline + 4 rounds (t = 0, 1, 2, 3): judged at the end


def test_a_restart_during_the_bake_fails_it_with_the_counter_as_evidence():
    app = App([page(300, 2), page(340, 2), page(12)])
    with pytest.raises(GateFailed, match="metrics: the counter went backwards"):
        run_bake(app)


def test_a_metrics_page_that_cannot_be_read_at_the_start_fails_the_bake_before_it_waits():
    app = App(["<html>oops</html>"])
    with pytest.raises(GateFailed, match="metrics: the metrics page is not Prometheus text"):
        run_bake(app)
    assert app.reads == 1
