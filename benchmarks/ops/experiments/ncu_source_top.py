"""The instructions a kernel's warps stall on most, from an Nsight Compute source-page CSV (`ncu --import REP --page
source --csv --print-source sass`, a report taken with `--section SourceCounters`): one row per SASS instruction with
its share of the warp-state samples and the reasons behind them, the most sampled first; then the samples summed per
opcode.

    python benchmarks/ops/experiments/ncu_source_top.py source.csv [--top 40]

The column names differ between ncu versions: the samples column is the first whose name holds "Stall Sampling"
and "All", the reason columns those holding "stall" in other words (their names are printed as read). ncu 2025.x
(the H100 lease, session 36) names them "Warp Stall Sampling (All Samples)" and "stall_long_sb" etc., after a
"Kernel Name" line.
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import sys
from pathlib import Path

from ncu_summary import csv_text
from ncu_summary import number as _number


def number(text: str) -> float:
    return _number(text, missing=0.0)  # a blank sample count is none


def summarise(text: str, top: int) -> list[str]:
    """The report's lines: a header, the `top` most sampled instructions (share, address, SASS, three largest
    reasons), then the share per opcode (predicates and modifiers dropped)."""
    lines = csv_text(text).splitlines()
    # ncu 2025 opens the page with a "Kernel Name","<name>" line before the header
    start = next((i for i, line in enumerate(lines) if "Stall Sampling" in line), 0)
    reader = csv.DictReader(io.StringIO("\n".join(lines[start:])))
    names, rows = list(reader.fieldnames or []), list(reader)
    samples = next((n for n in names if "Stall Sampling" in n and "All" in n), None)
    if samples is None or not rows:
        raise ValueError(f"no instruction rows with a samples column; columns: {names}")
    source = next((n for n in names if n.lower() in ("source", "sass")), names[1] if len(names) > 1 else names[0])
    address = next((n for n in names if "Address" in n), names[0])
    reasons = [
        n for n in names if "stall" in n.lower() and n != samples and "not issued" not in n.lower().replace("-", " ")
    ]
    total = sum(number(row[samples]) for row in rows) or 1.0
    out = [f"# {len(rows)} instructions, {total:.0f} samples; reasons: {[r.removeprefix('stall_') for r in reasons]}"]
    by_opcode: dict[str, float] = collections.defaultdict(float)
    for row in rows:
        words = [w for w in row[source].split() if not w.startswith("@")]
        by_opcode[words[0].split(".")[0] if words else "?"] += number(row[samples])
    for row in sorted(rows, key=lambda r: -number(r[samples]))[:top]:
        largest = sorted(((number(row[n]), n) for n in reasons), reverse=True)[:3]
        why = ", ".join(f"{n.replace('Warp Stall Sampling', '').strip(' ()').removeprefix('stall_')} {v:.0f}"
                        for v, n in largest if v)  # fmt: skip
        out.append(f"{100 * number(row[samples]) / total:5.1f}%  {row[address]:>8s}  {row[source][:60]:60s}  {why}")
    out.append("# samples per opcode")
    for op, value in sorted(by_opcode.items(), key=lambda item: -item[1])[:20]:
        out.append(f"{100 * value / total:5.1f}%  {op}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    try:
        print("\n".join(summarise(args.csv.read_text(errors="replace"), args.top)))
    except ValueError as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
