"""Results JSON -> the tables of BENCHMARKS.md, between its `<!-- table: NAME -->` and `<!-- end -->` markers (the
prose around them is written by hand). `marport bench --report-only` rewrites them from the last results."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from marport.workspace import current


def results_dir() -> Path:
    return current().root / "bench" / "results"  # in the workdir


def table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def sentiment_served(r: dict) -> str:
    return table([[c, f"{v['throughput']:.1f}", f"{v['p50_ms']:.0f}", f"{v['p90_ms']:.0f}", f"{v['p99_ms']:.0f}",
                   v["errors"]] for c, v in sorted(r["sentiment"]["served"].items(), key=lambda kv: int(kv[0]))],
                 ["concurrency", "texts/s", "p50 ms", "p90 ms", "p99 ms", "errors"])


def served_checks(r: dict) -> str:
    return table([[k, "yes" if v["match"] else "**no**", f"{v['max_abs_diff']:.1e}",
                   "labels only" if v["tolerance"] is None else f"{v['tolerance']:.0e}", v["label_mismatches"]]
                  for k, v in r["sentiment"]["checks"].items()],
                 ["run", "answers = in-process", "max abs diff", "tolerance", "label mismatches"])


def precision(r: dict) -> str:
    rows = []
    for name, v in r["precision"]["served_c32"].items():
        layout = v["layout"]
        settings = ", ".join(f"{k}: {s}" for k, s in v["settings"].items()) or "as shipped"
        rows.append([f"`{name}`", settings, f"{layout['workers']} x {layout['threads']}, batch {layout['batchSize']}",
                     f"{v['throughput']:.1f}", f"{v['speedup']:.2f}x", f"{v['p99_ms']:.0f}",
                     "n/a" if v["padding_efficiency"] is None else f"{v['padding_efficiency']:.2f}"])
    return table(rows, ["run", "handler settings", "workers x threads, batchSize", "texts/s", "over fp32", "p99 ms",
                        "padding efficiency"])


def respiratory_served(r: dict) -> str:
    return table([[x["workers"], x["threads"], f"{x['c1']['p50_ms']:.0f}", f"{x['c8']['throughput']:.2f}",
                   f"{x['c8']['p99_ms']:.0f}", "yes" if x["check"]["match"] else "no"] for x in r["respiratory"]["served"]],
                 ["workers", "threads", "c1 p50 ms", "c8 recordings/s", "c8 p99 ms", "answers = in-process"])


def ray(r: dict) -> str:
    sides = [("all cores", r["ray"])] + ([("model on core 0", r["ray"]["pinned"])] if "pinned" in r["ray"] else [])
    return table([[where, c, f"{ts[c]['throughput']:.1f}", f"{ray[c]['throughput']:.1f}",
                   f"{ray[c]['throughput'] / ts[c]['throughput']:.2f}", f"{ts[c]['p99_ms']:.0f}", f"{ray[c]['p99_ms']:.0f}"]
                  for where, side in sides for ts, ray in [(side["torchserve"], side["ray"])] for c in ts if c.isdigit()],
                 ["cores", "concurrency", "TorchServe texts/s", "Ray Serve texts/s", "ratio", "TorchServe p99 ms",
                  "Ray Serve p99 ms"])


def cold_start(r: dict) -> str:
    return table([[k, f"{v['start_to_ready_s']:.1f}"] for k, v in r["precision"]["served_c32"].items()],
                 ["run", "seconds from start to ready"])


TABLES: dict[str, Callable[[dict], str]] = {
    "sentiment-served": sentiment_served, "served-checks": served_checks,
    "precision": precision, "respiratory-served": respiratory_served, "ray": ray, "cold-start": cold_start,
}
MARKED = re.compile(r"(<!-- table: ([\w-]+) -->\n).*?(<!-- end -->)", re.DOTALL)


def write_tables(result: dict, report: Path | None = None) -> Path:
    """Each marked table of the report rewritten from `result`; a table this run did not measure is kept."""
    report = report or current().root / "BENCHMARKS.md"

    def fill(match: re.Match) -> str:
        try:
            return f"{match.group(1)}{TABLES[match.group(2)](result)}\n{match.group(3)}"
        except KeyError:
            return match.group(0)

    report.write_text(MARKED.sub(fill, report.read_text()))
    return report
