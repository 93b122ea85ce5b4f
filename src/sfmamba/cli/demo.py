"""Train a small SF-Mamba on Fashion-MNIST for a few minutes, evaluate it, and compare model speeds on this machine.

Steps: (1) check the dataset (Debian's dataset-fashion-mnist, or --data-dir); (2) time inference of SF-Mamba,
MambaVision and a DeiT-tiny-shaped ViT (patch 4) at the same input size, and SF-Mamba's training step; (3) train
SF-Mamba for --train-minutes: the step count comes from that training-step time, and the LR schedule also follows
the elapsed time (--time-schedule), so a busy machine still ends its cosine schedule at the time limit;
(4) evaluate on the 10 000 test images and print the accuracy beside the speed table. `make demo` runs this after
installing the environment and the dataset.

examples:
  sfmamba demo                          # CPU: about 6 minutes of training at 32 px
  sfmamba demo --train-minutes 2 --output /tmp/demo
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from . import UsageError, device_arg, non_negative_int, positive_float, positive_int, resolve_device

HELP = "train and evaluate a small SF-Mamba on Fashion-MNIST; compare SF-Mamba/MambaVision/DeiT speed"
_logger = logging.getLogger(__name__)
SPEED_MODELS = {  # name -> (timm model, kwargs beyond num_classes); DeiT-tiny with 4 px patches for small images
    "SF-Mamba nano": ("sf_mamba_nano", {}),
    "MambaVision nano": ("mambavision_nano", {}),
    "DeiT-tiny /4": ("deit_tiny_patch16_224", {"patch_size": 4}),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: the Debian package's)")
    parser.add_argument("--model", default="sf_mamba_nano", help="model to train (default: sf_mamba_nano)")
    parser.add_argument(
        "--train-minutes", type=positive_float, default=None, help="training budget (default: 6 CPU, 8 GPU)"
    )
    parser.add_argument(
        "--img-size", type=positive_int, default=None, help="input size (default: 32 on CPU, 64 on GPU)"
    )
    parser.add_argument("-b", "--batch-size", type=positive_int, default=None, help="default: 64 on CPU, 256 on GPU")
    parser.add_argument(
        "--lr", type=positive_float, default=None, help="peak learning rate (default: 2e-3 CPU, 3e-3 GPU)"
    )
    parser.add_argument(
        "-j",
        "--workers",
        type=non_negative_int,
        default=None,
        help="loader processes (default: 0 on CPU, where one would contend with the compute threads; 8 on GPU)",
    )
    parser.add_argument("--device", type=device_arg, default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument(
        "--output", default="output/demo", help="run folder (default: output/demo; its checkpoints are deleted first)"
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the speed comparison")


def _defaults(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """The run's settings: each one given on the command line, else its CPU or GPU default (a given 0 never reaches
    here: the argument types refuse it)."""
    gpu = device.type == "cuda"

    def given_or(value, default):
        return default if value is None else value

    return dict(
        minutes=given_or(args.train_minutes, 8.0 if gpu else 6.0),
        img_size=given_or(args.img_size, 64 if gpu else 32),
        batch_size=given_or(args.batch_size, 256 if gpu else 64),
        lr=given_or(args.lr, 3e-3 if gpu else 2e-3),
        workers=given_or(args.workers, 8 if gpu else 0),
    )


def speed_table(img_size: int, batch_size: int, device: torch.device) -> list[dict[str, object]]:
    """Inference img/s of each model at the same input size, random weights, eval mode (sfmamba.bench)."""
    import timm

    from ..bench import measure_inference

    gpu = device.type == "cuda"
    amp = torch.bfloat16 if gpu else None
    rows = []
    for label, (name, kwargs) in SPEED_MODELS.items():
        extra = {"img_size": img_size} if name.startswith("deit") else {}
        model = timm.create_model(name, num_classes=10, **kwargs, **extra).to(device)
        result = measure_inference(
            model, batch_size, img_size, device=device, amp_dtype=amp, warmup=10 if gpu else 2, iters=50 if gpu else 6
        )
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append(dict(model=label, timm_name=name, params_m=params, img_per_sec=result["img_per_sec_median"]))
        _logger.info("%s: %.0f img/s inference (%d px, batch %d)", label, rows[-1]["img_per_sec"], img_size, batch_size)
    return rows


def train_steps_for_budget(model_name: str, seconds: float, img_size: int, batch_size: int, device) -> int:
    """A step count for a `seconds` budget, from a short timing of this model's training step."""
    import timm

    from ..bench import measure_train

    model = timm.create_model(model_name, num_classes=10).to(device)
    gpu = device.type == "cuda"
    result = measure_train(
        model,
        batch_size,
        img_size,
        device=device,
        amp_dtype=torch.bfloat16 if gpu else None,
        warmup=5 if gpu else 2,
        iters=20 if gpu else 4,
    )
    step_s = result["step_ms_median"] / 1e3
    # 1.5x the estimate: the time limit and the time-following schedule end the run, so a machine that gets faster
    # after this timing (other jobs end) keeps training until the budget is spent instead of stopping early
    return max(20, int(1.5 * seconds / step_s))


def run(args: argparse.Namespace) -> int:
    import timm

    from ..data import DatasetError, create_dataset
    from ..train import TrainConfig, train
    from ..utils.files import atomic_write_text

    if not timm.is_model(args.model):
        raise UsageError(f"--model {args.model!r}: not a registered timm model")
    device = resolve_device(args.device)
    try:
        test = create_dataset("fashion_mnist", args.data_dir, "test")
    except DatasetError as err:
        raise UsageError(f"{err}\n(`make demo` installs the package itself when it can)") from err
    d = _defaults(args, device)
    start = time.perf_counter()
    rows = [] if args.no_speed else speed_table(d["img_size"], d["batch_size"], device)
    budget_s = d["minutes"] * 60
    steps = train_steps_for_budget(args.model, budget_s, d["img_size"], d["batch_size"], device)
    _logger.info(
        "training %s for %.1f min (schedule over at most %d steps; %d px, batch %d, %s)",
        args.model,
        d["minutes"],
        steps,
        d["img_size"],
        d["batch_size"],
        device.type,
    )
    output = Path(args.output)
    for name in ("last.state.pt", "last.safetensors", "last-ema.safetensors", "best.safetensors"):
        (output / name).unlink(missing_ok=True)  # a fresh run, never a silent resume of an older demo
    config = TrainConfig(
        model=args.model,
        dataset="fashion_mnist",
        data_dir=args.data_dir,
        img_size=d["img_size"],
        batch_size=d["batch_size"],
        lr=d["lr"],
        weight_decay=0.05,
        max_steps=steps,
        warmup_epochs=0.05,
        min_lr=1e-5,
        smoothing=0.1,
        scale=[0.75, 1.0],
        hflip=0.5,
        drop_path=0.0,
        workers=d["workers"],
        amp=device.type == "cuda",
        channels_last=False,
        output=str(output),
        device=str(device),
        time_limit=budget_s,
        time_schedule=True,
        eval_interval=0,
        checkpoint_interval=200,
        log_interval=25,
    )
    results = train(config)
    accuracy = results["eval_top1"]
    total_min = (time.perf_counter() - start) / 60
    print()
    print(
        f"Fashion-MNIST test accuracy of {args.model} after {results['train_seconds'] / 60:.1f} min of training "
        f"({results['step']} steps, {len(test)} test images): {accuracy:.2f}%  (run folder {output})"
    )
    if rows:
        print(
            f"\ninference speed on this machine ({device.type}, {d['img_size']} px, batch {d['batch_size']}, "
            f"random weights, median img/s):"
        )
        print(f"  {'model':<18}{'params (M)':>11}{'img/s':>10}")
        for row in rows:
            print(f"  {row['model']:<18}{row['params_m']:>11.2f}{row['img_per_sec']:>10.0f}")
    print(
        f"\ndemo took {total_min:.1f} min; explore further with: sfmamba eval --checkpoint {output}/last.safetensors "
        f"--per-class --confusion-matrix {output}/confusion.png"
    )
    record = dict(
        accuracy=accuracy,
        steps=results["step"],
        train_seconds=results["train_seconds"],
        total_minutes=total_min,
        device=str(device),
        speed=rows,
        **d,
    )
    atomic_write_text(output / "demo.json", json.dumps(record, indent=2) + "\n")
    return 0
