"""Charts of a locust run as one self-contained SVG (no plotting library needed).

Reads locust's `<prefix>_stats_history.csv` (written with `--csv-full-history`) and
`<prefix>_stats.csv`, and draws, over time: requests/s (answers, 429s, failures), response
time percentiles of the answered requests, TTFT percentiles of the streams, and users; then a
bar chart of p50/p95/p99 per request kind.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape

WIDTH, PANEL_H, MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 900, 220, 70, 190, 30, 30
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as source:
        return list(csv.DictReader(source))


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _panel(
    top: float, title: str, xs: list[float], series: dict[str, list[float]], unit: str
) -> list[str]:
    """One line chart at vertical offset `top`."""
    plot_w = WIDTH - MARGIN_L - MARGIN_R
    plot_h = PANEL_H - MARGIN_T - MARGIN_B
    values = [v for vs in series.values() for v in vs if v == v]
    y_max = max(values, default=1.0) * 1.1 or 1.0
    x_max = max(xs, default=1.0) or 1.0
    out = [
        f'<text x="{MARGIN_L}" y="{top + 18}" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{MARGIN_L}" y="{top + MARGIN_T}" width="{plot_w}" height="{plot_h}" '
        'fill="none" stroke="#999"/>',
    ]
    for i in range(5):
        y_value = y_max * i / 4
        y = top + MARGIN_T + plot_h - plot_h * i / 4
        out.append(
            f'<text x="{MARGIN_L - 6}" y="{y + 4}" font-size="11" text-anchor="end">'
            f"{y_value:,.0f}{escape(unit) if i == 4 else ''}</text>"
        )
        out.append(
            f'<line x1="{MARGIN_L}" y1="{y}" x2="{MARGIN_L + plot_w}" y2="{y}" stroke="#eee"/>'
        )
    out.append(
        f'<text x="{MARGIN_L + plot_w}" y="{top + PANEL_H - 8}" font-size="11" '
        f'text-anchor="end">{x_max:,.0f} s</text>'
    )
    for index, (label, ys) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        points = " ".join(
            f"{MARGIN_L + plot_w * x / x_max:.1f},{top + MARGIN_T + plot_h - plot_h * y / y_max:.1f}"
            for x, y in zip(xs, ys, strict=False)
            if y == y
        )
        out.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>'
        )
        legend_y = top + MARGIN_T + 14 * index + 10
        out.append(
            f'<text x="{MARGIN_L + plot_w + 10}" y="{legend_y}" font-size="11" fill="{colour}">'
            f"{escape(label)}</text>"
        )
    return out


def _bars(top: float, rows: list[dict[str, str]]) -> tuple[list[str], float]:
    """p50/p95/p99 per request kind, horizontal bars; (svg parts, height)."""
    kinds = [r for r in rows if r["Name"] != "Aggregated" and r["Type"] in ("POST", "TTFT")]
    height = MARGIN_T + 24 * len(kinds) + 40
    plot_w = WIDTH - MARGIN_L - MARGIN_R - 110
    peak = max((_float(r["99%"]) for r in kinds), default=1.0) or 1.0
    out = [
        f'<text x="{MARGIN_L}" y="{top + 18}" font-size="14" font-weight="bold">'
        "Response time per request kind: p50 / p95 / p99 (ms)</text>"
    ]
    for index, row in enumerate(kinds):
        y = top + MARGIN_T + 24 * index
        out.append(
            f'<text x="{MARGIN_L + 175}" y="{y + 14}" font-size="11" text-anchor="end">'
            f"{escape(row['Name'])}</text>"
        )
        for pct, colour, h in (
            ("99%", "#c6dbef", 18),
            ("95%", "#6baed6", 12),
            ("50%", "#08519c", 6),
        ):
            value = _float(row[pct])
            w = plot_w * (value / peak) if value == value else 0
            out.append(
                f'<rect x="{MARGIN_L + 180}" y="{y + (18 - h) / 2 + 2}" width="{w:.1f}" '
                f'height="{h}" fill="{colour}"/>'
            )
        out.append(
            f'<text x="{MARGIN_L + 185 + plot_w}" y="{y + 14}" font-size="11">'
            f"{_float(row['50%']):,.0f} / {_float(row['95%']):,.0f} / {_float(row['99%']):,.0f}"
            "</text>"
        )
    return out, height


def render(prefix: Path, title: str) -> Path:
    """Write `<prefix>_charts.svg` from the run's CSV files; its path."""
    history = read_csv(Path(f"{prefix}_stats_history.csv"))
    stats = read_csv(Path(f"{prefix}_stats.csv"))
    if not history:
        raise ValueError(f"{prefix}_stats_history.csv is empty")
    start = _float(history[0]["Timestamp"])
    by_time: dict[float, list[dict[str, str]]] = defaultdict(list)
    for row in history:
        by_time[_float(row["Timestamp"]) - start].append(row)
    xs = sorted(by_time)

    def series(select: Callable[[dict[str, str]], bool], column: str) -> list[float]:
        return [sum(_float(r[column]) for r in by_time[x] if select(r)) for x in xs]

    def pct(select: Callable[[dict[str, str]], bool], column: str) -> list[float]:
        out = []
        for x in xs:
            rows = [r for r in by_time[x] if select(r) and r[column] not in ("N/A", "")]
            out.append(max((_float(r[column]) for r in rows), default=float("nan")))
        return out

    def answered(row: dict[str, str]) -> bool:
        return row["Type"] == "POST"

    def throttled(row: dict[str, str]) -> bool:
        return row["Type"] == "THROTTLED"

    def ttft(row: dict[str, str]) -> bool:
        return row["Type"] == "TTFT"

    users = [_float(by_time[x][0]["User Count"]) for x in xs]
    panels = [
        (
            "Requests per second",
            {
                "answered/s": series(answered, "Requests/s"),
                "429 (Retry-After honoured)/s": series(throttled, "Requests/s"),
                "failures/s": series(answered, "Failures/s"),
            },
            "",
        ),
        (
            "Response time of answered requests, worst kind (ms)",
            {"p50": pct(answered, "50%"), "p95": pct(answered, "95%"), "p99": pct(answered, "99%")},
            "",
        ),
        (
            "Streams: time to first token, worst kind (ms)",
            {"p50": pct(ttft, "50%"), "p95": pct(ttft, "95%")},
            "",
        ),
        ("Users", {"users": users}, ""),
    ]
    parts: list[str] = []
    top = 40.0
    for name, data, unit in panels:
        parts += _panel(top, name, xs, data, unit)
        top += PANEL_H
    bars, height = _bars(top, stats)
    parts += bars
    total_h = top + height
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total_h:.0f}" '
        f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
        f'<text x="{MARGIN_L}" y="24" font-size="16" font-weight="bold">{escape(title)}</text>'
        + "".join(parts)
        + "</svg>"
    )
    out = Path(f"{prefix}_charts.svg")
    out.write_text(svg)
    return out
