"""The figures every benchmark here reports: a table of rows (measure, scale, laterbased,
baseline, ratio, goal, verdict) with notes and raw data, and the helpers they share.

Used by bench/run.py and bench/pitr.py (standalone or as run.py --pitr)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    measure: str
    scale: str
    value: str
    baseline: str
    ratio: str
    goal: str
    verdict: str


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, measure: str, scale: object, value: str, baseline: str = "",
            ratio: str = "", goal: str = "", verdict: str = "info") -> None:
        self.rows.append(Row(measure, str(scale), value, baseline, ratio, goal, verdict))
        print(f"  -> {measure} [{scale}]: {value} | {baseline} | {ratio} | {goal} | {verdict}",
              flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def table(self) -> str:
        header = ("measure", "scale", "laterbased", "baseline", "ratio", "goal", "verdict")
        rows = [header] + [
            (r.measure, r.scale, r.value, r.baseline, r.ratio, r.goal, r.verdict)
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(row) for row in rows[1:]]
        return "\n".join(out)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 80 samples is their maximum: conservative)."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def phase(title: str) -> None:
    print(f"\n== {title} ({time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.1f})",
          flush=True)
