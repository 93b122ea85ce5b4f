"""Train a torchvision detector on a timm backbone on COCO-format data (`sfmamba.dense.train_det`).

The defaults are Mask R-CNN 1x as the MambaVision / VMamba papers ran it on COCO 2017: batch 16 over all processes,
AdamW lr 1e-4 and weight decay 0.05, 500 warm-up iterations, the learning rate / 10 after epochs 8 and 11 of 12;
`--epochs 36 --lr-steps 27 33 --multiscale` is the 3x schedule. Box AP (and mask AP for Mask R-CNN), COCO's
definitions, after every --eval-interval epochs. `output` gets last.safetensors + last.state.pt (atomic; --resume
continues exactly, with the same settings and number of processes), best.safetensors (best box AP), summary.csv and
args.json; `--evaluate-only best.safetensors` scores a file on the validation split. `--dataset fashion_mnist` trains
on canvases of Fashion-MNIST garments (a real-data check that runs on a CPU). Multi-GPU: `torchrun --nproc-per-node N
-m sfmamba.cli.main train-det ...`.

examples:
  sfmamba train-det --data-dir coco --model sf_mamba_tiny --pretrained-backbone cls.safetensors --output out/mrcnn --amp
  sfmamba train-det --dataset fashion_mnist --data-dir /usr/share/datasets/fashion-mnist --detector fcos \\
      --model sf_mamba_nano --min-size 64 --max-size 64 -b 16 --epochs 1 --lr 1e-3 --lr-steps --output out/fmnist_det
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from . import UsageError, non_negative_int, positive_float, positive_int
from .train import ParseModelKwargs
from .train_seg import add_run_arguments, check_output

HELP = "train a detector (Mask R-CNN, Faster R-CNN, RetinaNet, FCOS) on COCO-format data (box/mask AP, exact resume)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..dense.detection import DETECTORS
    from ..dense.train_det import DATASETS

    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", required=True, help="<split>/ images and annotations/instances_<split>.json")
    data.add_argument("--dataset", choices=DATASETS, default="coco")
    data.add_argument("--train-split", default="train2017")
    data.add_argument("--val-split", default="val2017")
    data.add_argument("--limit-train", type=positive_int, default=None, metavar="N", help="the first N images only")
    data.add_argument("--limit-val", type=positive_int, default=None, metavar="N", help="the first N images only")
    data.add_argument("--multiscale", action="store_true", help="short sides 480-800 at training (the 3x recipe)")
    data.add_argument("--min-size", type=positive_int, default=800, help="the detector's short side")
    data.add_argument("--max-size", type=positive_int, default=1333, help="the detector's longest side")
    data.add_argument("-j", "--workers", type=non_negative_int, default=4)
    model = parser.add_argument_group("model")
    model.add_argument("--detector", choices=DETECTORS, default="mask_rcnn")
    model.add_argument("--model", default="sf_mamba_tiny", help="the backbone, a timm model name")
    model.add_argument("--num-classes", type=positive_int, default=None, help="with the background (default: data's)")
    model.add_argument("--pretrained-backbone", default=None, metavar="FILE",
                       help="a classification checkpoint for the backbone (sfmamba train's, official)")  # fmt: skip
    model.add_argument("--model-kwargs", nargs="*", default={}, action=ParseModelKwargs, metavar="KEY=VALUE")
    model.add_argument("--drop-path", type=float, default=None, help="the backbone's drop-path rate")
    model.add_argument("--fpn-channels", type=positive_int, default=256)
    run = parser.add_argument_group("optimisation")
    run.add_argument("-b", "--batch-size", type=positive_int, default=16, help="over all processes")
    run.add_argument("--epochs", type=positive_int, default=12)
    run.add_argument("--lr", type=positive_float, default=1e-4)
    run.add_argument("--weight-decay", type=float, default=0.05)
    run.add_argument("--lr-steps", type=positive_int, nargs="*", default=[8, 11], metavar="EPOCH",
                     help="epochs after which the learning rate is divided by 10")  # fmt: skip
    run.add_argument("--warmup-iters", type=non_negative_int, default=500)
    run.add_argument("--eval-interval", type=positive_int, default=1, help="epochs")
    add_run_arguments(run, parser.add_argument_group("output"), "train-det")


def run(args: argparse.Namespace) -> int:
    from ..dense.train_det import DetectionTrainConfig, train_detection

    check_output(args)
    names = {f.name for f in dataclasses.fields(DetectionTrainConfig)}  # the flags carry the fields' names
    settings = {k: v for k, v in vars(args).items() if k in names}
    settings.update(lr_steps=tuple(args.lr_steps), drop_path_rate=args.drop_path, extra=args.model_kwargs)
    config = DetectionTrainConfig(**settings)
    try:
        result = train_detection(config)
    except (ValueError, FileNotFoundError) as err:  # DatasetError, CheckpointError, bad settings
        raise UsageError(str(err)) from err
    if int(os.environ.get("RANK", 0)):  # (torchrun: the process group is gone by now) one line, from rank 0
        return 0
    if result["step"] < result["total_steps"]:
        print(f"stopped at step {result['step']} of {result['total_steps']} (saved to {args.output}; --resume "
              "continues)")  # fmt: skip
        return 0
    mask = f"  mask AP {result['segm_AP']:.2f}" if "segm_AP" in result else ""
    scores = f"box AP {result['bbox_AP']:.2f}  AP50 {result['bbox_AP50']:.2f}{mask}"
    if args.evaluate_only:
        print(f"{args.evaluate_only} (step {result['step']}): {scores}")
    else:
        print(f"step {result['step']}: {scores}  best box AP {result['best_AP']:.2f}  ({args.output})")
    return 0
