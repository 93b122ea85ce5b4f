"""UperNet on real images: Fashion-MNIST turned into semantic segmentation, trained and scored by mIoU.

Each 28 x 28 image is padded to 32 x 32 and its pixels labelled: background (0) where the image is dark (grey level
<= --threshold), else the garment's class + 1 (11 classes). A pixel's label needs both where the garment is and what
it is, so the task exercises the backbone's features and the decoder together. Trains `UperNet(--backbone)` with
AdamW for --minutes (or --steps) on the training split and reports mIoU, pixel accuracy and per-class IoU on the test
split (`sfmamba.dense.evaluate_segmentation`). A table on stdout and JSON in benchmarks/results/.

    python benchmarks/dense/fmnist_segmentation.py [--backbone sf_mamba_nano] [--minutes 3] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import sfmamba  # noqa: E402
from sfmamba.data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist  # noqa: E402
from sfmamba.dense import UperNet, evaluate_segmentation, segmentation_loss  # noqa: E402

CLASSES = ["background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]  # fmt: skip
MEAN, STD = FASHION_MNIST_MEAN[0], FASHION_MNIST_STD[0]  # one grey channel


def segmentation_split(root: str, split: str, threshold: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [n, 3, 32, 32] normalised, labels [n, 32, 32]): garment pixels carry class + 1, the rest 0."""
    images, labels = load_fashion_mnist(root, split)
    grey = torch.from_numpy(images).float()  # [n, 28, 28], 0..255
    masks = (grey > threshold).long() * (torch.from_numpy(labels).long()[:, None, None] + 1)
    x = ((grey / 255 - MEAN) / STD)[:, None].expand(-1, 3, -1, -1)
    pad = (2, 2, 2, 2)
    return F.pad(x, pad, value=-MEAN / STD), F.pad(masks, pad, value=0)


def environment(device: torch.device, stamp: str) -> dict[str, object]:
    """Where a result was measured: the date, device, CPU and versions."""
    return dict(date=stamp, device=str(device), cpu=platform.processor() or platform.machine(),
                torch=torch.__version__, sfmamba=sfmamba.__version__,
                gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="sf_mamba_nano")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps (else the budget)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threshold", type=int, default=25, help="grey level above which a pixel is garment")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    train_x, train_y = segmentation_split(args.data_dir, "train", args.threshold)
    test_x, test_y = segmentation_split(args.data_dir, "test", args.threshold)
    model = UperNet(args.backbone, num_classes=len(CLASSES), channels=64, aux_channels=32).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    budget = args.minutes * 60
    start, step = time.perf_counter(), 0
    model.train()
    while (args.steps is None and time.perf_counter() - start < budget) or (args.steps and step < args.steps):
        index = torch.randint(len(train_x), (args.batch_size,))
        x, y = train_x[index].to(device), train_y[index].to(device)
        flip = torch.rand(len(x), device=device) < 0.5  # horizontal flips, images and labels alike
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        loss = segmentation_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    train_s = time.perf_counter() - start
    batches = [(test_x[i : i + 256], test_y[i : i + 256]) for i in range(0, len(test_x), 256)]
    result = evaluate_segmentation(model, batches, len(CLASSES), device)
    print(f"\n{args.backbone} + UperNet, {step} steps in {train_s / 60:.1f} min on {device.type}: mIoU "
          f"{result['mIoU']:.2f} %, pixel accuracy {result['pixel_accuracy']:.2f} %, mean class accuracy "
          f"{result['mean_accuracy']:.2f} % ({len(test_x)} test images)")  # fmt: skip
    print("| class | IoU % |\n|---|---|")
    for name, iou in zip(CLASSES, result["per_class_iou"]):
        print(f"| {name} | {iou:.2f} |" if iou is not None else f"| {name} | - |")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"fmnist_segmentation_{args.backbone}_{stamp}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    record = dict(environment=environment(device, stamp), settings=settings, steps=step, train_seconds=train_s, classes=CLASSES,
                  **result)  # fmt: skip
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
