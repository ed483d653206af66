"""The perf trend as a picture: Markdown with one Mermaid `xychart-beta` per endpoint, p95 over
the runs of the history (and the baseline's p95 as a flat second line). GitHub renders Mermaid
in step summaries, issues and pull requests. Deciding code only: runs in, text out."""

from __future__ import annotations

import re
from collections.abc import Sequence

from smoke.baseline import Baseline, Run

UNSAFE = re.compile(r"[^A-Za-z0-9 ._:/+()#-]")


def _label(text: str) -> str:
    """A Mermaid string: double quotes, so nothing in it may close or break the string."""
    return '"' + UNSAFE.sub("_", text)[:60] + '"'


def _when(at: str) -> str:
    """2026-11-30T02:17:05+00:00 -> 11-30 02:17 (short axis labels)."""
    return f"{at[5:10]} {at[11:16]}" if len(at) >= 16 else at


def _axis(times: Sequence[str]) -> list[str]:
    """Short labels, made unique (runs in the same minute get #2, #3 …)."""
    labels: list[str] = []
    for at in times:
        label = _when(at)
        n = sum(1 for x in labels if x == label or x.startswith(f"{label} #"))
        labels.append(f"{label} #{n + 1}" if n else label)
    return labels


def _number(value: float) -> str:
    return f"{value:.1f}"


def chart(key: str, runs: Sequence[Run], baseline: Baseline | None) -> list[str]:
    points = [(r, r.endpoints[key].p95_ms) for r in runs if key in r.endpoints]
    shown = [(r, v) for r, v in points if v is not None]
    if not shown:
        return []
    base = baseline.endpoints.get(key) if baseline is not None else None
    base_p95 = base.p95_ms if base is not None else None
    top = max([v for _, v in shown] + ([base_p95] if base_p95 is not None else []))
    endpoint = key.partition("/")[2] or key
    lines = [
        "```mermaid",
        "xychart-beta",
        f"    title {_label(f'{endpoint} p95 (ms)')}",
        "    x-axis [" + ", ".join(_label(x) for x in _axis([r.at for r, _ in shown])) + "]",
        f'    y-axis "p95 (ms)" 0 --> {_number(top * 1.2 + 1)}',
        "    line [" + ", ".join(_number(v) for _, v in shown) + "]",
    ]
    if base_p95 is not None:
        lines.append("    line [" + ", ".join(_number(base_p95) for _ in shown) + "]")
    lines.append("```")
    return lines


def markdown(runs: Sequence[Run], baseline: Baseline | None = None) -> str:
    """The trend section: a heading, then a chart per endpoint seen in the runs."""
    out = [f"### perf trend: p95 per endpoint over the last {len(runs)} run(s)", ""]
    if not runs:
        return "\n".join([*out, "No runs in the history yet.", ""]) + "\n"
    if baseline is not None:
        out += [
            f"Second line: the baseline's p95 ({baseline.source}, saved {baseline.saved_at}).",
            "",
        ]
    keys = list(dict.fromkeys(k for r in runs for k in r.endpoints))
    for key in keys:
        drawn = chart(key, runs, baseline)
        if drawn:
            out += [*drawn, ""]
        else:
            out += [f"{key.partition('/')[2] or key}: no successful request in any run", ""]
    return "\n".join(out) + "\n"
