"""DDP scaling of `sfmamba train` (issue #5 target: 2 GPUs >= 1.8x one GPU): the same recipe on 1 and on N processes.

Each run is `torchrun --nproc_per_node P -m sfmamba.cli.main train ...` with the recipe's per-process batch, a fixed
number of steps and no mid-run evaluation. Throughput is the median of the trainer's logged global img/s over the
second half of the run (after start-up and Triton autotuning), one JSON file and a printed table:

    python benchmarks/train/ddp_scaling.py --data-dir data/fashion-mnist --nproc 1 2 --steps 1500
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/fashion_mnist_sf_mamba.yaml"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--nproc", nargs="+", type=int, default=[1, 2], help="process counts to compare")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps per run")
    parser.add_argument("--output-root", default=str(REPO / "output/ddp_scaling"))
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks/results"))
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `sfmamba train` flags")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, nproc: int) -> dict:
    run_dir = Path(args.output_root) / f"nproc{nproc}"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "sfmamba.cli.main", "train", "--config", args.config, "--output", str(run_dir),
        "--max-steps", str(args.steps), "--eval-interval", "0", "--time-limit", "100000", "--no-progress",
        "--log-interval", "25", *(["--data-dir", args.data_dir] if args.data_dir else []), *args.extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env, cwd=REPO)
    with open(run_dir / "steps.csv", newline="") as f:
        rates = [float(row["img_per_sec"]) for row in csv.DictReader(f)]
    tail = rates[len(rates) // 2 :]
    result = json.loads((run_dir / "results.json").read_text())
    return dict(
        nproc=nproc,
        img_per_sec_median=statistics.median(tail),
        img_per_sec_p20_p80=statistics.quantiles(tail, n=5)[0::3] if len(tail) > 4 else None,
        intervals=len(tail),
        train_seconds=result["train_seconds"],
        eval_top1=result["eval_top1"],
        command=" ".join(command),
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = [run(args, nproc) for nproc in args.nproc]
    base = rows[0]["img_per_sec_median"]
    for row in rows:
        row["speedup_vs_first"] = row["img_per_sec_median"] / base
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = dict(
        date=stamp,
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        gpus=torch.cuda.device_count(),
        torch=torch.__version__,
        python=platform.python_version(),
        config=args.config,
        steps=args.steps,
        rows=rows,
    )
    out = Path(args.results_dir) / f"ddp_scaling_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'processes':>9}  {'img/s (median, 2nd half)':>24}  {'speed-up':>8}")
    for row in rows:
        print(f"{row['nproc']:>9}  {row['img_per_sec_median']:>24.0f}  {row['speedup_vs_first']:>7.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
