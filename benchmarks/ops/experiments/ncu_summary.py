"""One table per kernel launch from an Nsight Compute raw-page CSV (`ncu --csv --page raw --metrics ...`): time,
issue-slot use, active warps per scheduler, DRAM throughput, L2 hit rate, registers, and the largest warp stall reasons (cycles a
warp spends stalled on each, per issued instruction).

    python benchmarks/ops/experiments/ncu_summary.py ncu.csv [--top 6]

The raw page's first row names the columns (launch fields, then one metric each), the second gives their units,
then one row per profiled launch. ncu's own messages (lines starting with "==") are skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

STALL_PREFIX = "smsp__average_warps_issue_stalled_"
STALL_SUFFIX = "_per_issue_active.ratio"
COLUMNS = {  # metric -> short name
    "gpu__time_duration.sum": "time",
    "smsp__issue_active.avg.pct_of_peak_sustained_active": "issue %",
    "smsp__warps_active.avg.per_cycle_active": "warps/sched",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed": "dram %",
    "lts__t_sector_hit_rate.pct": "L2 hit %",
    "launch__registers_per_thread": "regs",
}


def csv_text(text: str) -> str:
    """An ncu CSV page without ncu's own messages (lines starting with "==") and blank lines."""
    return "\n".join(line for line in text.splitlines() if line.strip() and not line.startswith("=="))


def read_rows(text: str) -> tuple[list[str], list[str], list[list[str]]]:
    """(header, units, value rows) of a raw-page CSV."""
    rows = list(csv.reader(io.StringIO(csv_text(text))))
    if len(rows) < 3:
        raise ValueError(f"expected a header, a units row and at least one launch, got {len(rows)} rows")
    return rows[0], rows[1], rows[2:]


def summarise(text: str, top: int) -> list[str]:
    header, units, launches = read_rows(text)
    index = {name: i for i, name in enumerate(header)}
    name_col = index.get("Kernel Name", index.get("Function Name"))
    stalls = [name for name in header if name.startswith(STALL_PREFIX) and name.endswith(STALL_SUFFIX)]
    out = []
    for row in launches:
        kernel = row[name_col] if name_col is not None else "?"
        fields = [f"{short} {row[index[m]]}{' ' + units[index[m]] if units[index[m]] else ''}"
                  for m, short in COLUMNS.items() if m in index]  # fmt: skip
        ranked = sorted(((number(row[index[s]]), s[len(STALL_PREFIX) : -len(STALL_SUFFIX)]) for s in stalls),
                        reverse=True)  # fmt: skip
        out.append(f"{kernel[:60]}: " + ", ".join(fields))
        out.append("    stalls per issue: " + ", ".join(f"{name} {value:.2f}" for value, name in ranked[:top]))
    return out


def number(text: str, missing: float = float("nan")) -> float:
    """An ncu value ("1,234.5" -> 1234.5); `missing` where it is not a number."""
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--top", type=int, default=6, help="stall reasons shown per launch")
    args = parser.parse_args()
    try:
        lines = summarise(args.csv.read_text(), args.top)
    except (ValueError, KeyError, IndexError) as error:
        print(f"ncu_summary: cannot read {args.csv}: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
