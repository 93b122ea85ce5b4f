"""Train UperNet semantic segmentation on a folder in mmsegmentation's ADE20K layout (`sfmamba.dense.train`).

The defaults are the MambaVision / VMamba ADE20K recipe: 512 x 512 crops, batch 16 over all processes, AdamW lr 6e-5
and weight decay 0.01, 1500 warm-up iterations then a poly decay over 160k, mIoU by sliding windows every 16k.
`output` gets last.safetensors + last.state.pt after every evaluation and every --save-interval steps (atomic;
--resume continues exactly, with the same settings and number of processes),
best.safetensors (best mIoU), summary.csv and args.json. Multi-GPU: `torchrun --nproc-per-node N -m sfmamba.cli.main
train-seg ...` (BatchNorm synchronised across the GPUs).

examples:
  sfmamba train-seg --data-dir ADEChallengeData2016 --model sf_mamba_tiny --pretrained-backbone cls.safetensors \\
      --output output/ade_sf_mamba_tiny --amp
  sfmamba train-seg --data-dir ADEChallengeData2016 --output output/ade_sf_mamba_tiny --resume output/ade_sf_mamba_tiny
  sfmamba train-seg --data-dir ADEChallengeData2016 --evaluate-only output/ade_sf_mamba_tiny/best.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from . import UsageError, device_arg, non_negative_int, positive_float, positive_int
from .train import ParseModelKwargs

HELP = "train UperNet segmentation on an ADE20K-layout folder (iterations, poly schedule, mIoU, exact resume)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", required=True, help="images/<split>/ and annotations/<split>/ (ADE20K layout)")
    data.add_argument("--num-classes", type=positive_int, default=150)
    data.add_argument("--no-reduce-zero-label", dest="reduce_zero_label", action="store_false",
                      help="keep label 0 as a class (default: ADE20K's 0 = 'other' is ignored)")  # fmt: skip
    data.add_argument("--crop", type=positive_int, default=512)
    data.add_argument("--scale", type=positive_int, nargs=2, default=(2048, 512), metavar=("LONG", "SHORT"))
    data.add_argument("-j", "--workers", type=non_negative_int, default=4)
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="sf_mamba_tiny", help="the backbone, a timm model name")
    model.add_argument("--pretrained-backbone", default=None, metavar="FILE",
                       help="a classification checkpoint for the backbone (sfmamba train's, official)")  # fmt: skip
    model.add_argument("--model-kwargs", nargs="*", default={}, action=ParseModelKwargs, metavar="KEY=VALUE")
    model.add_argument("--drop-path", type=float, default=None, help="the backbone's drop-path rate")
    model.add_argument("--channels", type=positive_int, default=512, help="the decoder's width")
    model.add_argument("--aux-channels", type=non_negative_int, default=256, help="0: no auxiliary head")
    model.add_argument("--aux-weight", type=float, default=0.4)
    run = parser.add_argument_group("optimisation")
    run.add_argument("-b", "--batch-size", type=positive_int, default=16, help="over all processes")
    run.add_argument("--iters", type=positive_int, default=160_000)
    run.add_argument("--lr", type=positive_float, default=6e-5)
    run.add_argument("--weight-decay", type=float, default=0.01)
    run.add_argument("--warmup-iters", type=non_negative_int, default=1500)
    run.add_argument("--eval-interval", type=positive_int, default=16_000)
    run.add_argument("--whole", dest="slide", action="store_false", help="evaluate whole images (default: slide)")
    add_run_arguments(run, parser.add_argument_group("output"), "train-seg")


def add_run_arguments(run: argparse._ArgumentGroup, out: argparse._ArgumentGroup, trainer: str) -> None:
    """The flags both dense trainers (`trainer`: train-seg, train-det) take for the run folder, checkpoints,
    precision, seeds and devices."""
    out.add_argument("--output", default=None, help="run folder (required unless --evaluate-only)")
    out.add_argument(
        "--evaluate-only",
        default=None,
        metavar="WEIGHTS",
        help=f"score a {trainer} weights file on the validation split as its run did, no training (the model, sizes "
        "and evaluation settings come from the file; such flags given here are ignored)",
    )
    run.add_argument("--save-interval", type=positive_int, default=2000,
                     help="write `last` every N steps between evaluations too (a kill loses at most N)")  # fmt: skip
    run.add_argument("--amp", action="store_true", help="autocast")
    run.add_argument("--amp-dtype", choices=("bfloat16",), default="bfloat16",
                     help="bfloat16 (float16 would need loss scaling)")  # fmt: skip
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", type=device_arg, default=None, help="cuda or cpu (default: cuda if available)")
    out.add_argument("--resume", default=None, help="a run folder or its last.state.pt")
    out.add_argument("--stop-after", type=positive_int, default=None,
                     help="end this run after N steps, saved (for time-limited jobs; --resume continues)")  # fmt: skip
    out.add_argument("--log-interval", type=positive_int, default=50)


def check_output(args: argparse.Namespace) -> None:
    if args.output is None and args.evaluate_only is None:
        raise UsageError("--output is required (the run folder), unless --evaluate-only scores a weights file")


def run(args: argparse.Namespace) -> int:
    from ..dense.train import SegmentationTrainConfig, train_segmentation

    check_output(args)
    names = {f.name for f in dataclasses.fields(SegmentationTrainConfig)}  # the flags carry the fields' names
    settings = {k: v for k, v in vars(args).items() if k in names}
    settings.update(scale=tuple(args.scale), drop_path_rate=args.drop_path, extra=args.model_kwargs)
    config = SegmentationTrainConfig(**settings)
    try:
        result = train_segmentation(config)
    except (ValueError, FileNotFoundError) as err:  # DatasetError, CheckpointError, bad settings
        raise UsageError(str(err)) from err
    if int(os.environ.get("RANK", 0)):  # (torchrun: the process group is gone by now) one line, from rank 0
        return 0
    if not args.evaluate_only and result["step"] < args.iters:
        print(f"stopped at step {result['step']} of {args.iters} (saved to {args.output}; --resume continues)")
        return 0
    scores = f"mIoU {result['mIoU']:.2f}%  pixel accuracy {result['pixel_accuracy']:.2f}%"
    if args.evaluate_only:
        print(f"{args.evaluate_only} (step {result['step']}): {scores}")
    else:
        print(f"step {result['step']}: {scores}  best mIoU {result['best_mIoU']:.2f}%  ({args.output})")
    return 0
