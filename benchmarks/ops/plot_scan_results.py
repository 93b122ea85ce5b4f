"""Plot a selective-scan benchmark JSON: GPU time per (image, channel, step) against L, per provider.

    python benchmarks/ops/plot_scan_results.py benchmarks/results/selective_scan_20261122T202127Z.json
Writes <json stem>.png beside the JSON. Normalising by batch*D*L puts the different MambaVision/VMamba shapes on
one axis; the N (state size) of each point is in its label.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def elements(shape: str) -> int:
    b, d, length = (int(re.search(rf"{k}(\d+)", shape).group(1)) for k in ("B", "D", "L"))
    return b * d * length


def main(path: Path) -> Path:
    data = json.loads(path.read_text())
    rows = [r for r in data["rows"] if r["timer"] == "graph" and r["dtype"] == "bf16"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, mode in zip(axes, ("fwd", "fwdbwd")):
        for prov in ("sfmamba-BLD", "sfmamba-BDL", "mamba_ssm"):
            pts = sorted(
                (r["length"], 1e3 * r["median_us"] / elements(r["shape"]), r["shape"])
                for r in rows
                if r["provider"] == prov and r["mode"] == mode
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=prov)
        ax.set(
            xscale="log",
            xlabel="L (tokens per image)",
            ylabel="ns per (image, channel, step)",
            title=f"bf16 {mode}, CUDA graph, {data['meta']['device']}",
        )
        ax.legend(fontsize=8)
    fig.text(0.01, 0.01, "points: B128 D320 L49/51 N8, B128 D160 L196/198 N8, B128 D384 L3136 N1 G4", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=120)
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
