"""Train any timm-registered model (ours and timm's) on Fashion-MNIST or an ImageNet-style folder.

The recipe uses timm's own components: create_transform (RandomResizedCrop, flips, RandAugment via --aa, random
erasing), Mixup/CutMix, label-smoothing losses, create_optimizer_v2 (AdamW, --layer-decay), CosineLRScheduler with
warm-up (stepped per update), ModelEmaV3, gradient clipping. Settings come from the defaults, then a YAML file
(--config), then the command line. Under torchrun the same command trains one process per GPU (DDP); --batch-size is
per process. A run folder (--output) receives args.yaml, last/best checkpoints (safetensors weights + a state file,
written atomically), summary.csv, steps.csv, train_curves.png and results.json; --resume continues exactly.

examples:
  sfmamba train --config configs/fashion_mnist_sf_mamba.yaml --output output/fmnist
  sfmamba train --model mambavision_nano --img-size 32 --epochs 2 --max-steps 500 --time-limit 300
  sfmamba train --model deit_tiny_patch16_224 --model-kwargs img_size=32 patch_size=4 --lr 5e-4
  sfmamba train --resume output/fmnist            # continue the run in that folder, same step and LR
  torchrun --nproc_per_node 2 -m sfmamba.cli.main train --config configs/fashion_mnist_sf_mamba.yaml
"""

from __future__ import annotations

import argparse
import ast
import dataclasses

from ..train.config import TrainConfig, inherited_settings, load_yaml_config, merge_config
from . import UsageError, device_arg, pretrained_error

HELP = "train a model (timm recipe, AMP, DDP via torchrun, resumable atomic checkpoints)"
_DEFAULTS = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
             for f in dataclasses.fields(TrainConfig)}  # fmt: skip


class ParseModelKwargs(argparse.Action):
    """key=value pairs -> dict; values are Python literals where they parse (timm's --model-kwargs)."""

    def __call__(self, parser, namespace, values, option_string=None):
        kwargs = {}
        for item in values:
            key, sep, text = item.partition("=")
            if not sep or not key:
                parser.error(f"{option_string}: expected key=value, got {item!r}")
            try:
                kwargs[key] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                kwargs[key] = text
        setattr(namespace, self.dest, kwargs)


def _add(group, *flags: str, dest: str | None = None, **kwargs) -> None:
    """An option whose default lives in TrainConfig: absent from the namespace unless given (so YAML can set it)."""
    dest = dest or flags[-1].lstrip("-").replace("-", "_")
    default = _DEFAULTS[dest]
    help_text = kwargs.pop("help", "")
    if kwargs.get("action") == "store_true" and not flags[-1].startswith("--no-"):
        kwargs["action"] = argparse.BooleanOptionalAction  # --amp / --no-amp: the command line can undo the YAML
    elif kwargs.get("action") not in ("store_true", "store_false") and "default" not in help_text:
        help_text = f"{help_text} (default: {default})".strip()
    group.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, help=help_text, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=None, help="YAML file of settings (keys: the long flag names)")
    data = parser.add_argument_group("data")
    _add(data, "--dataset", choices=("fashion_mnist", "folder"), help="fashion_mnist (IDX files) or folder")
    _add(data, "--data-dir", help="dataset location (fashion_mnist: /usr/share/datasets/fashion-mnist)")
    _add(data, "--img-size", type=int, help="input size in px (None: the model's default)")
    _add(data, "-j", "--workers", type=int, help="data loader processes per training process")
    _add(data, "--data-on-device", action="store_true", help="fashion_mnist: hold the data and augment on the device")
    model = parser.add_argument_group("model")
    _add(model, "--model", help="any timm-registered model name")
    _add(model, "--model-kwargs", nargs="*", action=ParseModelKwargs, metavar="KEY=VALUE", help="model arguments")
    _add(model, "--pretrained", action="store_true", help="start from the model's pretrained weights")
    _add(model, "--drop", type=float, help="head dropout rate")
    _add(model, "--drop-path", type=float, help="stochastic depth rate (None: the model's default)")
    _add(model, "--grad-checkpointing", action="store_true", help="recompute activations in the backward pass")
    _add(model, "--channels-last", action="store_true", help="channels-last memory format")
    _add(
        model,
        "--no-ddp-bb",
        dest="ddp_bb",
        action="store_false",
        help="DDP: do not broadcast rank 0's buffers every step (each rank keeps its own BatchNorm statistics; "
        "rank 0's are saved)",
    )
    _add(model, "--torchcompile", nargs="?", const="inductor", metavar="BACKEND", help="torch.compile the model")
    _add(model, "--torchcompile-mode", help="torch.compile mode, e.g. max-autotune")
    _add(
        model,
        "--cuda-graph",
        action="store_true",
        help="replay the model's forward and backward from CUDA graphs (CUDA; a fixed batch shape; under torchrun the "
        "gradients are all-reduced after the graphed backward)",
    )
    opt = parser.add_argument_group("optimizer and schedule")
    _add(opt, "--opt", help="timm optimizer name")
    _add(opt, "--lr", type=float, help="peak learning rate")
    _add(opt, "--weight-decay", type=float)
    _add(opt, "--layer-decay", type=float, help="layer-wise LR decay (timm's group_matcher)")
    _add(opt, "--clip-grad", type=float, help="gradient clipping value")
    _add(opt, "--clip-mode", choices=("norm", "value", "agc"))
    _add(opt, "--epochs", type=int)
    _add(opt, "--max-steps", type=int, help="total optimizer steps; the schedule spans them (overrides --epochs)")
    _add(opt, "--sched", choices=("cosine",))
    _add(opt, "--warmup-epochs", type=float)
    _add(opt, "--warmup-lr", type=float)
    _add(opt, "--min-lr", type=float)
    aug = parser.add_argument_group("augmentation and regularisation")
    _add(aug, "--scale", type=float, nargs=2, metavar=("MIN", "MAX"), help="RandomResizedCrop area range")
    _add(aug, "--ratio", type=float, nargs=2, metavar=("MIN", "MAX"), help="RandomResizedCrop aspect range")
    _add(aug, "--hflip", type=float)
    _add(aug, "--vflip", type=float)
    _add(aug, "--color-jitter", type=float)
    _add(aug, "--aa", help="RandAugment/AutoAugment policy, e.g. rand-m9-mstd0.5-inc1")
    _add(aug, "--reprob", type=float, help="random erasing probability")
    _add(aug, "--remode")
    _add(aug, "--interpolation")
    _add(aug, "--no-aug", action="store_true", help="no training augmentation")
    _add(aug, "--smoothing", type=float, help="label smoothing")
    _add(aug, "--mixup", type=float, help="mixup alpha")
    _add(aug, "--cutmix", type=float, help="cutmix alpha")
    _add(aug, "--mixup-prob", type=float)
    _add(aug, "--mixup-switch-prob", type=float)
    _add(aug, "--mixup-mode", choices=("batch", "pair", "elem"))
    _add(aug, "--model-ema", action="store_true", help="keep an EMA of the weights (timm ModelEmaV3)")
    _add(aug, "--model-ema-decay", type=float)
    _add(aug, "--model-ema-warmup", action="store_true")
    run = parser.add_argument_group("precision, device and run control")
    _add(run, "--amp", action="store_true", help="mixed precision (autocast)")
    _add(run, "--amp-dtype", choices=("bfloat16", "float16"))
    _add(run, "--device", type=device_arg, help="cuda or cpu (default: cuda if available)")
    _add(run, "-b", "--batch-size", type=int, help="images per step per process")
    _add(run, "-vb", "--validation-batch-size", type=int)
    _add(run, "--seed", type=int)
    _add(run, "--output", help="run folder (default: output/train/<model>-<time>, or the resumed run's folder)")
    _add(
        run,
        "--resume",
        help="run folder or checkpoint file to continue from, with the run's settings (its "
        "args.yaml); a recipe setting given otherwise is refused (where and how it runs and reports may change)",
    )
    _add(run, "--checkpoint-interval", type=int, help="steps between 'last' checkpoints")
    _add(run, "--time-limit", type=float, help="seconds of training before a clean stop")
    _add(
        run,
        "--time-schedule",
        action="store_true",
        help="with --time-limit: the LR schedule also advances with elapsed time, ending at the limit (for "
        "fixed-time runs on a machine of unknown speed; not resume-exact)",
    )
    _add(run, "--stop-step", type=int, help="stop cleanly after this step (the schedule is unchanged)")
    _add(run, "--log-interval", type=int, help="steps between loss/throughput records")
    _add(run, "--eval-interval", type=int, help="epochs between evaluations (0: only at the end)")
    _add(run, "--no-progress", dest="progress", action="store_false", help="no progress bar (log lines instead)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < the resumed run's args.yaml (with --resume) < --config YAML < command line."""
    from ..train.checkpoint import resolve_resume_path

    given = {k: v for k, v in vars(args).items() if k in _DEFAULTS}
    try:
        saved = {}
        if given.get("resume"):  # (only flags given on the command line are in `args`)
            saved_path = resolve_resume_path(given["resume"]).parent / "args.yaml"
            saved = inherited_settings(load_yaml_config(saved_path)) if saved_path.is_file() else {}
        yaml_settings = load_yaml_config(args.config) if args.config else {}
        return merge_config({**saved, **yaml_settings}, given)
    except ValueError as err:
        raise UsageError(str(err)) from err


def run(args: argparse.Namespace) -> int:
    from ..train import train

    config = config_from_args(args)
    try:
        results = train(config)
    except ValueError as err:  # DatasetError, CheckpointError and bad settings: a message, not a traceback
        raise UsageError(str(err)) from err
    except OSError as err:  # (--pretrained without a network)
        if not config.pretrained:
            raise
        raise pretrained_error(config.model, err) from err
    if "ema_top1" in results:  # `best` keeps the EMA weights' best then
        print(f"final eval top-1 {results['eval_top1']:.2f}%, EMA top-1 {results['ema_top1']:.2f}% (best EMA "
              f"{results['best_top1']:.2f}%), run folder {results['run_dir']}")  # fmt: skip
    elif "eval_top1" in results:
        print(f"final eval top-1 {results['eval_top1']:.2f}% (best {results['best_top1']:.2f}%), run folder "
              f"{results['run_dir']}")  # fmt: skip
    return 0
