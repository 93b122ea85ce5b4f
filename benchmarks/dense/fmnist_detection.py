"""A detector on real images: Fashion-MNIST garments pasted on canvases (`FashionMNISTDetection`), scored by COCO
box AP (and mask AP for Mask R-CNN) on canvases of the test split.

Runs `sfmamba train-det --dataset fashion_mnist` (`train_detection`: AdamW, warm-up, the learning rate / 10 after
--lr-steps epochs, every torchrun and resume feature of the command) with small settings for a CPU: canvases of 64
px, the detector's resize off (--min-size = --max-size = 64). The run folder goes to --output; a JSON record with the
environment, the settings and every evaluation to benchmarks/results/.

    python benchmarks/dense/fmnist_detection.py [--detector fcos] [--backbone sf_mamba_nano] [--epochs 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fmnist_segmentation import environment  # noqa: E402

from sfmamba.dense import DETECTORS  # noqa: E402
from sfmamba.dense.train_det import DetectionTrainConfig, train_detection  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detector", choices=DETECTORS, default="fcos")
    parser.add_argument("--backbone", default="sf_mamba_nano")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr-steps", type=int, nargs="*", default=[1])
    parser.add_argument("--train-images", type=int, default=16_000, help="canvases per epoch")
    parser.add_argument("--val-images", type=int, default=2000, help="test canvases scored")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fpn-channels", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=ROOT / "output" / "fmnist_detection")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = DetectionTrainConfig(
        data_dir=args.data_dir, output=str(args.output / f"{args.detector}_{args.backbone}"), dataset="fashion_mnist",
        detector=args.detector, model=args.backbone, limit_train=args.train_images, limit_val=args.val_images,
        min_size=64, max_size=64, fpn_channels=args.fpn_channels, batch_size=args.batch_size, epochs=args.epochs,
        lr=args.lr, lr_steps=tuple(args.lr_steps), warmup_iters=50, workers=0, seed=args.seed, device=args.device,
        log_interval=100,
    )  # fmt: skip
    start = time.perf_counter()
    result = train_detection(config)
    seconds = time.perf_counter() - start
    with open(Path(config.output) / "summary.csv") as f:
        history = f.read()
    mask = f", mask AP {result['segm_AP']:.2f}" if "segm_AP" in result else ""
    print(f"\n{args.detector} on {args.backbone}, {result['step']} steps ({args.epochs} epochs of "
          f"{args.train_images} canvases) in {seconds / 60:.1f} min on {config.device or 'auto'}: box AP "
          f"{result['bbox_AP']:.2f}, AP50 {result['bbox_AP50']:.2f}, AP75 {result['bbox_AP75']:.2f}{mask} "
          f"({args.val_images} test canvases)")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"fmnist_detection_{args.detector}_{args.backbone}_{stamp}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    record = dict(environment=environment(torch.device(args.device), stamp), settings=settings, seconds=seconds,
                  result=result, summary_csv=history)  # fmt: skip
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
