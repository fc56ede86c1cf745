"""Small helpers every benchmark shares: percentiles and a plain-text table."""

from __future__ import annotations

import math
import platform
from typing import Any


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_summary(latencies: list[float]) -> dict[str, float | None]:
    return {f"p{p}_latency_s": _round(percentile(latencies, p)) for p in (50, 95, 99)}


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if v < 10 else f"{v:,.1f}"
    return str(v)


def machine() -> dict[str, Any]:
    import os
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
