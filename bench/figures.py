"""Deciding code of the benchmark: summaries, targets and tables. No I/O here."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str  # "s" or "count"


# Every figure the benchmark produces, in the order of the table. The smoke test checks that
# each one is in the JSON with a median, a min and a max.
FIGURES: tuple[Figure, ...] = (
    Figure("cold_deploy_s", "cold first deploy (empty root, PM2 daemon not running)", "s"),
    Figure("warm_deploy_s", "warm redeploy (new commit, same lockfile)", "s"),
    Figure("warm_deploy_wan_s", "warm redeploy through the 25 ms proxy", "s"),
    Figure("rollback_ready_s", "manual rollback: start → first ready answer of previous", "s"),
    Figure("rollback_serving_s", "manual rollback: start → only previous answers ready", "s"),
    Figure("rollback_command_s", "manual rollback: whole command (gated, unlocked)", "s"),
    Figure("boot_crash_restore_s", "boot_crash: activation → previous release serves again", "s"),
    Figure("boot_crash_detect_s", "boot_crash: activation → rollback starts", "s"),
    Figure("boot_crash_rollback_s", "boot_crash: rollback starts → previous serves again", "s"),
    Figure("ready_503_restore_s", "ready_503: activation → previous release serves again", "s"),
    Figure("ready_503_detect_s", "ready_503: activation → rollback starts", "s"),
    Figure("ready_503_rollback_s", "ready_503: rollback starts → previous serves again", "s"),
    Figure("failed_requests_good", "failed requests at 50 req/s, good deploy", "count"),
    Figure("failed_requests_boot_crash", "failed requests at 50 req/s, boot_crash deploy", "count"),
    Figure("failed_requests_ready_503", "failed requests at 50 req/s, ready_503 deploy", "count"),
    Figure("requests_good", "requests sent during a good deploy", "count"),
    Figure("ssh_connections_warm", "SSH connections per warm redeploy (sshd journal)", "count"),
    Figure("ssh_connections_wan", "SSH connections per warm redeploy (proxy accepts)", "count"),
    Figure("remote_commands_cold", "remote commands per cold deploy", "count"),
    Figure("remote_commands_warm", "remote commands per warm redeploy", "count"),
    Figure("remote_commands_rollback", "remote commands per manual rollback", "count"),
    Figure("remote_commands_bad", "remote commands per bad deploy (ready_503)", "count"),
    Figure("uploads_warm", "file uploads (SFTP) per warm redeploy", "count"),
    Figure("round_trips_warm", "round trips per warm redeploy (commands + uploads)", "count"),
    Figure("probes_warm", "readiness probes per warm redeploy (through the tunnel)", "count"),
    Figure("wire_turns_wan", "request→reply turns on the wire per warm redeploy", "count"),
    Figure("app_start_s", "sample app start (node server.js → listening)", "s"),
)
BY_KEY = {f.key: f for f in FIGURES}


def summary(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        raise ValueError("no values to summarise")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "runs": list(values),
    }


def summarise(samples: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    missing = [f.key for f in FIGURES if not samples.get(f.key)]
    if missing:
        raise ValueError(f"figures without samples: {', '.join(missing)}")
    return {f.key: {"label": f.label, "unit": f.unit, **summary(samples[f.key])} for f in FIGURES}


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "measured": self.measured, "met": self.met}


def judge(figures: dict[str, dict[str, Any]]) -> list[Verdict]:
    """The targets of issue 6. Met means met by the worst run (max), not only the median."""
    trips = figures["round_trips_warm"]
    failed = figures["failed_requests_good"]
    budget = 1.0 + figures["app_start_s"]["median"]
    manual = figures["rollback_serving_s"]
    auto = [figures["boot_crash_rollback_s"], figures["ready_503_rollback_s"]]
    auto_median = max(f["median"] for f in auto)
    auto_worst = max(f["max"] for f in auto)
    lost = sum(failed["runs"])
    sent = sum(figures["requests_good"]["runs"])
    return [
        Verdict(
            "at most 12 remote round trips per deploy",
            f"{trips['median']:g} per warm redeploy (worst run {trips['max']:g})",
            trips["max"] <= 12,
        ),
        Verdict(
            "0 failed requests during a good deploy of a cluster-mode app",
            f"{lost:g} of {sent:g} requests in {failed['n']} deploys (worst run {failed['max']:g})",
            failed["max"] == 0,
        ),
        Verdict(
            f"manual rollback within 1 s + app start ({budget:.2f} s)",
            f"median {manual['median']:.2f} s, worst {manual['max']:.2f} s (from the command's "
            f"start until only the previous release answers ready)",
            manual["max"] <= budget,
        ),
        Verdict(
            f"automatic rollback within 1 s + app start ({budget:.2f} s)",
            f"median {auto_median:.2f} s, worst {auto_worst:.2f} s (from the rollback's start "
            f"until the previous release serves again; slower of boot_crash and ready_503)",
            auto_worst <= budget,
        ),
    ]


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:g}"


def rows(figures: dict[str, dict[str, Any]]) -> list[list[str]]:
    out = []
    for f in FIGURES:
        fig = figures[f.key]
        unit = "s" if f.unit == "s" else ""
        out.append(
            [
                f.label,
                _fmt(fig["median"], f.unit) + (f" {unit}" if unit else ""),
                f"{_fmt(fig['min'], f.unit)}-{_fmt(fig['max'], f.unit)}",
                str(fig["n"]),
            ]
        )
    return out


COLUMNS = ["figure", "median", "range (min-max)", "runs"]


def text_table(figures: dict[str, dict[str, Any]]) -> str:
    body = rows(figures)
    widths = [max(len(r[i]) for r in [COLUMNS, *body]) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [COLUMNS, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(figures: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---:|---:|---:|",
        *("| " + " | ".join(row) + " |" for row in rows(figures)),
    ]
    return "\n".join(lines)


def markdown_targets(verdicts: list[Verdict]) -> str:
    lines = ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {v.target} | {v.measured} | {'yes' if v.met else '**no**'} |" for v in verdicts]
    return "\n".join(lines)


def markdown_machine(machine: dict[str, Any]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in machine.items())
