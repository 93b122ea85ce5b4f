"""The accuracy evidence of issue #5: SF-Mamba and its ablations vs MambaVision vs DeiT-tiny on Fashion-MNIST.

One recipe (a `sfmamba train` YAML config, default configs/fashion_mnist_sf_mamba.yaml) and one budget for every
model, several seeds each; every run is a `sfmamba train` subprocess (one per GPU via torchrun with --nproc > 1).
Then each model's inference and training throughput is measured in this process (sfmamba.bench, the recipe's batch
and input size, bf16 on a GPU). Outputs: benchmarks/results/fashion_mnist_evidence_<time>.json (every run, every
number), docs/fashion_mnist_evidence.md (table: top-1 mean ± std over seeds, img/s) and .png (accuracy vs speed).

    python benchmarks/train/run_fashion_mnist.py --data-dir data/fashion-mnist            # the GPU evidence
    python benchmarks/train/run_fashion_mnist.py --variants sf_mamba deit_tiny --seeds 0 \\
        --set max_steps=3 img_size=16 batch_size=8 workers=0 eval_interval=0 time_limit=None \\
        --speed-iters 2 --tag smoke --docs /tmp/evidence-docs                            # CPU smoke run, minutes
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
# name -> (timm model, model kwargs, label); the bidirectional variants halve their scanned channels (MAC-matched).
# SF-Mamba/MambaVision variants add their kwargs to the recipe's `model_kwargs` (its width); DeiT has its own size.
VARIANTS = {
    "sf_mamba": ("sf_mamba_nano", {}, "SF-Mamba (aux tokens, uni scan)"),
    "no_aux": ("sf_mamba_nano", {"aux_tokens": False}, "no aux tokens (uni scan)"),
    "bidir_parallel": ("sf_mamba_nano", {"aux_tokens": False, "scan": "parallel"}, "bidirectional, parallel"),
    "bidir_series": ("sf_mamba_nano", {"aux_tokens": False, "scan": "series"}, "bidirectional, series"),
    "cross": ("sf_mamba_nano", {"aux_tokens": False, "scan": "cross"}, "4-direction cross-scan"),
    "flip": ("sf_mamba_nano", {"aux_tokens": False, "flip": True}, "Adventurer-style flip"),
    "mambavision": ("mambavision_nano", {}, "MambaVision"),
    "deit_tiny": ("deit_tiny_patch16_224", {"patch_size": 4}, "DeiT-tiny (patch 4)"),
    "deit_256": (
        "deit_tiny_patch16_224",
        {"patch_size": 8, "embed_dim": 256, "num_heads": 4},
        "DeiT, width 256 (patch 8)",
    ),
}
OWN_SIZE = ("deit_tiny", "deit_256")  # timm models that do not take the recipe's SF-Mamba kwargs
DEFAULT_VARIANTS = ("sf_mamba", "no_aux", "bidir_parallel", "bidir_series", "mambavision", "deit_256")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/fashion_mnist_sf_mamba.yaml"))
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: the config's/Debian's)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=tuple(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides for every run")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per run, through torchrun")
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runs at once on the one device (each run's log goes to <run folder>.log); small models are bound by "
        "the host's kernel launches, so several processes share a GPU well",
    )
    parser.add_argument(
        "--output-root",
        default=str(REPO / "output/evidence"),
        help="run folders (<variant>_seed<seed>); reuse with --skip-existing across invocations",
    )
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks/results"))
    parser.add_argument("--docs", default=str(REPO / "docs"), help="where the markdown table and plot go")
    parser.add_argument("--tag", default="", help="suffix for the result file names")
    parser.add_argument("--speed-iters", type=int, default=100, help="timed iterations of the throughput runs")
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="first run every variant for 3 steps (not recorded), all at once, so that the runs start with Triton's "
        "autotune cache filled; without it, parallel runs spend minutes of their budget tuning side by side",
    )
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="stop after the training runs (no speed runs, no table): collect later with --skip-existing",
    )
    parser.add_argument(
        "--from-runs",
        default=None,
        metavar="JSON",
        help="take the finished runs from this file (a list of records with variant, seed and the results.json "
        "fields) instead of training: for runs whose folders live on another machine",
    )
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="reuse finished runs (their results.json): split the runs over several invocations, the "
        "last one with every variant collects them all",
    )
    return parser.parse_args(argv)


def recipe(args: argparse.Namespace) -> dict[str, object]:
    sys.path.insert(0, str(REPO / "src"))
    from sfmamba.train.config import apply_overrides, load_yaml_config

    settings = apply_overrides(load_yaml_config(args.config), args.set)
    if args.data_dir:
        settings["data_dir"] = args.data_dir
    return settings


def model_kwargs(settings: dict, variant: str) -> dict:
    """The variant's kwargs over the recipe's (SF-Mamba family), or its own size (DeiT, at the recipe's img_size)."""
    _, kwargs, _ = VARIANTS[variant]
    if variant in OWN_SIZE:
        return {**kwargs, "img_size": settings.get("img_size") or 64}
    return {**(settings.get("model_kwargs") or {}), **kwargs}


def train_command(args, settings: dict, variant: str, seed: int, run_dir: Path, config_path: Path) -> list[str]:
    model, kwargs = VARIANTS[variant][0], model_kwargs(settings, variant)
    launcher = [sys.executable, "-m", "sfmamba.cli.main"]
    if args.nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={args.nproc}",
            "-m",
            "sfmamba.cli.main",
        ]
    command = [
        *launcher,
        "train",
        "--config",
        str(config_path),
        "--model",
        model,
        "--seed",
        str(seed),
        "--output",
        str(run_dir),
        "--no-progress",
    ]
    # always given: an empty --model-kwargs replaces the recipe's mapping (DeiT must not get SF-Mamba's width)
    command += ["--model-kwargs", *(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in kwargs.items())]
    return command


def launch_waves(args, settings, config_path, env, todo, parallel: int, extra: tuple[str, ...] = ()) -> None:
    """Run `todo` [(variant, seed, run_dir)] in waves of `parallel` processes; raise if any run fails."""
    failed = []
    for start in range(0, len(todo), parallel):
        wave = []
        for variant, seed, run_dir in todo[start : start + parallel]:
            command = [*train_command(args, settings, variant, seed, run_dir, config_path), *extra]
            print("+", " ".join(command), flush=True)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            log = None if parallel == 1 else open(f"{run_dir}.log", "w")  # noqa: SIM115 (closed below)
            wave.append((run_dir, log, subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=log)))
        for run_dir, log, process in wave:
            if process.wait() != 0:
                failed.append(f"{run_dir.name} (exit {process.returncode}{f', log {log.name}' if log else ''})")
            if log:
                log.close()
    if failed:
        raise SystemExit(f"training runs failed: {', '.join(failed)}")


def run_training(args, settings: dict, stamp: str) -> list[dict]:
    import yaml

    root = Path(args.output_root)  # fixed, so --skip-existing can collect runs made by earlier invocations
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / f"recipe_{stamp}.yaml"
    config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    planned = [(variant, seed, root / f"{variant}_seed{seed}") for variant in args.variants for seed in args.seeds]
    todo = [p for p in planned if not (args.skip_existing and (p[2] / "results.json").is_file())]
    if args.warm_cache and todo:
        variants = sorted({variant for variant, _, _ in todo})
        warm = [(v, 0, root / "warm_cache" / v) for v in variants]
        print(f"warming Triton's autotune cache: {', '.join(variants)}", flush=True)
        launch_waves(args, settings, config_path, env, warm, len(warm), ("--max-steps", "3", "--eval-interval", "0"))
    launch_waves(args, settings, config_path, env, todo, args.parallel)
    runs = []
    for variant, seed, run_dir in planned:
        result = json.loads((run_dir / "results.json").read_text())
        runs.append({**result, "variant": variant, "seed": seed, "run_dir": str(run_dir)})
    return runs


def measure_speed(args, settings: dict, variant: str) -> dict[str, float]:
    import timm

    from sfmamba.bench import measure_inference, measure_train

    model_name, kwargs = VARIANTS[variant][0], model_kwargs(settings, variant)
    img_size = settings.get("img_size") or 64
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" and settings.get("amp") else None
    batch = settings.get("batch_size", 256)
    model = timm.create_model(model_name, num_classes=10, **kwargs).to(device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    warmup = max(2, args.speed_iters // 5)
    infer = measure_inference(
        model, batch, img_size, device=device, amp_dtype=amp, warmup=warmup, iters=args.speed_iters
    )
    train = measure_train(model, batch, img_size, device=device, amp_dtype=amp, warmup=warmup, iters=args.speed_iters)
    return dict(
        params_m=params,
        infer_img_per_sec=infer["img_per_sec_median"],
        train_img_per_sec=train["img_per_sec_median"],
        device=str(device),
        batch_size=batch,
        img_size=img_size,
        amp=str(amp),
    )


def aggregate(runs: list[dict], speeds: dict[str, dict], settings: dict) -> list[dict]:
    rows = []
    for variant, speed in speeds.items():
        mine = [r for r in runs if r["variant"] == variant]
        top1 = [r.get("ema_top1", r.get("eval_top1")) for r in mine]
        top1 = [t for t in top1 if t is not None]
        rows.append(
            dict(
                variant=variant,
                label=VARIANTS[variant][2],
                model=VARIANTS[variant][0],
                kwargs=model_kwargs(settings, variant),
                seeds=[r["seed"] for r in mine],
                top1=top1,
                top1_mean=statistics.fmean(top1) if top1 else None,
                top1_std=statistics.stdev(top1) if len(top1) > 1 else 0.0,
                train_minutes_mean=statistics.fmean(r["train_seconds"] for r in mine) / 60 if mine else None,
                **speed,
            )
        )
    return rows


def write_markdown(rows: list[dict], settings: dict, path: Path, plot_name: str, result_name: str) -> None:
    lines = [
        "# Fashion-MNIST evidence: SF-Mamba vs its ablations vs MambaVision vs DeiT",
        "",
        f"Recipe: `{json.dumps(settings, sort_keys=True)}`.",
        f"Results: `benchmarks/results/{result_name}`. Top-1 on the 10 000 test images (EMA weights when the recipe",
        "keeps an EMA), mean ± std over seeds; throughput: random weights, median img/s on the same device.",
        "",
        "| model | variant | params (M) | top-1 (%) | seeds | inference img/s | training img/s | train min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        top1 = f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}" if r["top1_mean"] is not None else "-"
        lines.append(
            f"| {r['label']} | `{r['model']}` {r['kwargs'] or ''} | {r['params_m']:.2f} | {top1} | "
            f"{len(r['top1'])} | {r['infer_img_per_sec']:.0f} | {r['train_img_per_sec']:.0f} | "
            f"{r['train_minutes_mean']:.1f} |"
        )
    lines += ["", f"![accuracy vs throughput]({plot_name})", ""]
    path.write_text("\n".join(lines))


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no {path} (the JSON and the markdown table have the numbers)")
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["top1_mean"] is None:
            continue
        ax.errorbar(r["infer_img_per_sec"], r["top1_mean"], yerr=r["top1_std"], fmt="o", capsize=4, label=r["label"])
    ax.set(
        xlabel=f"inference img/s ({rows[0]['device']}, batch {rows[0]['batch_size']}, {rows[0]['img_size']} px)",
        ylabel="Fashion-MNIST test top-1 (%)",
        title="same recipe and budget, mean ± std over seeds",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tag = f"_{args.tag}" if args.tag else ""
    settings = recipe(args)
    if args.from_runs:
        runs = [r for r in json.loads(Path(args.from_runs).read_text())["runs"] if r["variant"] in args.variants]
    else:
        runs = run_training(args, settings, stamp)
    if args.train_only:
        print(f"{len(runs)} runs finished in {args.output_root}")
        return 0
    speeds = {variant: measure_speed(args, settings, variant) for variant in args.variants}
    rows = aggregate(runs, speeds, settings)
    results_dir, docs = Path(args.results_dir), Path(args.docs)
    results_dir.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    result_name = f"fashion_mnist_evidence_{stamp}{tag}.json"
    record = dict(
        command=" ".join([sys.executable, *sys.argv]),
        recipe=settings,
        torch=torch.__version__,
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        rows=rows,
        runs=runs,
    )
    (results_dir / result_name).write_text(json.dumps(record, indent=2) + "\n")
    plot_name = f"fashion_mnist_evidence{tag}.png"
    plot(rows, docs / plot_name)
    write_markdown(rows, settings, docs / f"fashion_mnist_evidence{tag}.md", plot_name, result_name)
    for r in rows:
        top1 = f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f}" if r["top1_mean"] is not None else "-"
        print(
            f"{r['label']:<34} top-1 {top1:>14}  infer {r['infer_img_per_sec']:>8.0f} img/s  "
            f"train {r['train_img_per_sec']:>8.0f} img/s"
        )
    print(f"wrote {results_dir / result_name}, {docs / plot_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
