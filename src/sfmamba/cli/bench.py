"""Measure whole-model throughput (images/s) and where the time goes, for several models in one process.

Flags follow timm's benchmark.py. Every requested model is measured in the same process, one after the other, with
the same settings: inference (eval mode, `torch.inference_mode`), training (forward, cross-entropy, backward, AdamW
step) or both, reporting img/s median and mean ± std over the timed iterations (CUDA events on a GPU), the host time
per step and the peak memory; `--bench profile` instead lists the top kernels by time and the time per category
(scan, conv, GEMM, norm, elementwise/copy, attention). Results: a table on stdout and a JSON file (device, versions,
settings, TF32 flags, date) in benchmarks/results/.

Models: timm names (ours are registered by importing sfmamba; DeiT-S is `deit_small_patch16_224`), shell wildcards
(`'mambavision_*'`), and the official MambaVision code as `official:mamba_vision_T` (needs the `mambavision` wheel;
its scan comes from --official-scan). A model that cannot be built or run is reported and skipped.

examples:
  sfmamba bench --device cpu --model mambavision_nano -b 2 --img-size 64 --num-warm-iter 1 --num-bench-iter 3
  sfmamba bench --model mambavision_tiny sf_mamba_tiny official:mamba_vision_T deit_small_patch16_224 \\
      -b 128 --amp --amp-dtype bfloat16 --cuda-graph --num-warm-iter 50 --num-bench-iter 200
  sfmamba bench --bench profile --model mambavision_tiny -b 128 --amp
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import logging
import platform
import statistics
from pathlib import Path

import timm
import torch
from torch import nn

from .. import __version__
from ..bench.official import OFFICIAL_PREFIX, SCAN_CHOICES, official_model
from ..bench.official import match as match_official
from ..bench.profile import profile_model
from ..bench.throughput import OPTIMIZERS, measure_inference, measure_train
from ..utils._config import KERNEL_CHOICES, set_kernel_backend
from ..utils.files import atomic_write_text
from . import UsageError, device_arg, non_negative_int, positive_int, resolve_device

HELP = "measure model throughput (inference/train) or profile kernels, several models in one process"
_logger = logging.getLogger(__name__)
AMP_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_RESULTS_DIR = Path("benchmarks/results")


def _model_kwarg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"model kwarg {text!r} must be key=value")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a plain string


def add_arguments(parser: argparse.ArgumentParser, profile_only: bool = False) -> None:
    """bench's flags; `profile_only` (`sfmamba profile`): no --bench, always the profile."""
    what = parser.add_argument_group("what to measure")
    if profile_only:
        parser.set_defaults(bench="profile")
    else:
        what.add_argument("--bench", choices=("inference", "train", "both", "profile"), default="both",
                          help="what to time (default: both, inference and a training step)")  # fmt: skip
    what.add_argument(
        "-m", "--model", nargs="+", default=["mambavision_tiny"], metavar="NAME",
        help="timm names, wildcards ('sf_mamba_*'), official:mamba_vision_T; NAME:key=value,... adds kwargs for "
        "that entry, e.g. sf_mamba_tiny:aux_tokens=False (default: mambavision_tiny)",
    )  # fmt: skip
    what.add_argument(
        "--model-kwargs", nargs="*", type=_model_kwarg, default=[], metavar="KEY=VALUE",
        help="keyword arguments for every timm model (values as Python literals), e.g. fold=1 (no batch folding)",
    )  # fmt: skip
    what.add_argument("-b", "--batch-size", type=positive_int, default=128)
    what.add_argument("--img-size", type=positive_int, default=None, help="default: the model's input size")
    what.add_argument("--profile-mode", choices=("inference", "train"), default="inference",
                      help="the step profiled" + ("" if profile_only else " by --bench profile"))  # fmt: skip
    what.add_argument("--profile-top", type=positive_int, default=25,
                      help="kernels listed" + ("" if profile_only else " by --bench profile"))  # fmt: skip
    how = parser.add_argument_group("how to run")
    how.add_argument("--device", type=device_arg, default=None, help="default: cuda if available, else cpu")
    how.add_argument("--amp", action="store_true", help="autocast (bfloat16 unless --amp-dtype)")
    how.add_argument("--amp-dtype", choices=tuple(AMP_DTYPES), default=None, help="autocast dtype; implies --amp")
    how.add_argument("--channels-last", action="store_true")
    how.add_argument("--torchcompile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                     help="torch.compile every model (default backend: inductor; as in train and timm)")  # fmt: skip
    how.add_argument("--torchcompile-mode", choices=COMPILE_MODES, default=None, help="torch.compile mode")
    how.add_argument(
        "--cuda-graph",
        action="store_true",
        help="replay CUDA graphs: the inference forward; in train mode the forward and backward (loss and AdamW "
        "stay eager, as in `sfmamba train --cuda-graph`); with --profile-mode train, eager steps running the ops a "
        "graphed training step captures (the fused training ops, SFMAMBA_TRAIN_KERNELS)",
    )
    how.add_argument(
        "--opt", choices=OPTIMIZERS, default="adamw",
        help="optimizer of --bench train: adamw (torch's default multi-tensor), adamw-fused (fused=True), sgd",
    )  # fmt: skip
    how.add_argument("--num-warm-iter", type=non_negative_int, default=10)
    how.add_argument("--num-bench-iter", type=positive_int, default=40)
    how.add_argument(
        "--repeats", type=positive_int, default=1,
        help="measure each model this many times (same process, same compiled model); the JSON and the table add "
        "the mean ± std of the per-run medians",
    )  # fmt: skip
    how.add_argument("--kernel", choices=KERNEL_CHOICES, default=None, help="our scan backend (default: auto)")
    how.add_argument(
        "--official-scan", choices=SCAN_CHOICES, default="mamba_ssm",
        help="scan kernel of official:* models: mamba_ssm's CUDA kernel (mamba_ssm or .bench_deps/mamba_baseline) "
        "or our selective_scan_fn (default: mamba_ssm)",
    )  # fmt: skip
    how.add_argument("--seed", type=int, default=0)
    out = parser.add_argument_group("output")
    out.add_argument(
        "--results-file", type=Path, default=None,
        help=f"JSON results (default: {DEFAULT_RESULTS_DIR}/bench_<bench>_<UTC time>.json)",
    )  # fmt: skip


def split_spec(spec: str) -> tuple[str, dict]:
    """`sf_mamba_tiny:aux_tokens=False,fold=1` -> ("sf_mamba_tiny", {"aux_tokens": False, "fold": 1})."""
    name, sep, kwargs_text = spec.rpartition(":")
    if not sep or "=" not in kwargs_text:
        return spec, {}
    return name, dict(_model_kwarg(item) for item in kwargs_text.split(","))


def resolve_models(patterns: list[str]) -> list[str]:
    """Expand wildcards (timm's registry, or the known official names) and check every name exists.

    A pattern may end in `:key=value,...` (model kwargs for that entry only); the kwargs stay on every expansion.
    """
    names: list[str] = []
    for pattern in patterns:
        try:
            base, kwargs = split_spec(pattern)
        except argparse.ArgumentTypeError as err:
            raise UsageError(f"--model {pattern!r}: {err}") from None
        suffix = pattern[len(base) :]
        if base.startswith(OFFICIAL_PREFIX):
            found = [OFFICIAL_PREFIX + n for n in match_official(base.removeprefix(OFFICIAL_PREFIX))]
        elif any(c in base for c in "*?["):
            found = timm.list_models(base)
        else:
            found = [base] if timm.is_model(base) else []
        if not found:
            raise UsageError(f"--model {pattern!r} matches no registered model")
        names += [n + suffix for n in found if n + suffix not in names]
    return names


def _environment(device: torch.device) -> dict:
    env = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "sfmamba": __version__,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def build_model(spec: str, args: argparse.Namespace, device: torch.device) -> nn.Module:
    name, spec_kwargs = split_spec(spec)
    if name.startswith(OFFICIAL_PREFIX):
        model = official_model(name, scan=args.official_scan, **spec_kwargs)
    else:
        kwargs = dict(args.model_kwargs) | spec_kwargs
        fixed = getattr(timm.get_pretrained_cfg(name), "fixed_input_size", False)
        if args.img_size and fixed and "img_size" not in kwargs:  # ViTs/DeiTs build their position table for it
            kwargs["img_size"] = args.img_size
        model = timm.create_model(name, **kwargs)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _img_size(model: nn.Module, args: argparse.Namespace) -> int | tuple[int, int]:
    if args.img_size:
        return args.img_size
    input_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    return tuple(input_size[-2:])


def _measure_once(mode: str, runner: nn.Module, size, args: argparse.Namespace, common: dict) -> dict:
    timing = dict(warmup=args.num_warm_iter, iters=args.num_bench_iter)
    if mode == "inference":
        return measure_inference(runner, args.batch_size, size, cuda_graph=args.cuda_graph, **common, **timing)
    if mode == "train":
        return measure_train(
            runner, args.batch_size, size, cuda_graph=args.cuda_graph, opt=args.opt, **common, **timing
        )
    return profile_model(
        runner, args.batch_size, size, mode=args.profile_mode, top=args.profile_top,
        cuda_graph=args.cuda_graph and args.profile_mode == "inference",
        graph_kernels=args.cuda_graph and args.profile_mode == "train", **common, **timing,
    )  # fmt: skip


def _with_repeats(row: dict, repeats: list[dict]) -> dict:
    """Add the across-run spread of the per-run medians (`--repeats`): the run-to-run noise, not the per-step one."""
    medians = [r["img_per_sec_median"] for r in repeats]
    row["repeat_img_per_sec_medians"] = medians
    row["runs_img_per_sec_mean"] = statistics.fmean(medians)
    row["runs_img_per_sec_std"] = statistics.stdev(medians) if len(medians) > 1 else 0.0
    return row


def measure_model(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every requested measurement of one model; a failure is recorded as an `error` row, never raised."""
    amp_dtype = AMP_DTYPES[args.amp_dtype or "bfloat16"] if args.amp or args.amp_dtype else None
    common = dict(device=device, amp_dtype=amp_dtype, channels_last=args.channels_last)
    modes = {"both": ("inference", "train")}.get(args.bench, (args.bench,))
    rows = []
    for mode in modes:
        torch.manual_seed(args.seed)
        row = {"model": name, "mode": mode, "compile": args.torchcompile, "compile_mode": args.torchcompile_mode}
        try:
            model = build_model(name, args, device)
            row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
            size = _img_size(model, args)
            runner = model
            if args.torchcompile:
                runner = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
            runs = [
                _measure_once(mode, runner, size, args, common) for _ in range(1 if mode == "profile" else args.repeats)
            ]
            row |= runs[0] if len(runs) == 1 else _with_repeats(dict(runs[len(runs) // 2]), runs)
            row["profiled"] = row["mode"] if mode == "profile" else None
            row["model"], row["mode"] = name, mode  # measure_* name the class; keep the requested name
        except Exception as err:  # one model's failure (OOM, missing baseline, bad size) must not end the run
            _logger.warning("%s (%s) failed: %s", name, mode, err, exc_info=_logger.isEnabledFor(logging.DEBUG))
            row["error"] = f"{type(err).__name__}: {err}"
        finally:
            model = runner = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


TABLE_HEADER = ("model", "mode", "img/s median", "mean ± std", "runs mean ± std", "step ms", "host ms", "peak MiB",
                "params M")  # fmt: skip


def _table_row(r: dict) -> tuple[str, ...]:
    mode = (
        r["mode"] + (" graph" if r.get("cuda_graph") else "") + (f" compile:{r['compile']}" if r.get("compile") else "")
    )
    if "error" in r:
        return (r["model"], mode, "failed", *[""] * (len(TABLE_HEADER) - 3))
    runs = (
        f"{r['runs_img_per_sec_mean']:.1f} ± {r['runs_img_per_sec_std']:.1f}" if "runs_img_per_sec_mean" in r else "-"
    )
    peak = r.get("peak_memory_mib")
    return (
        r["model"], mode, f"{r['img_per_sec_median']:.1f}", f"{r['img_per_sec_mean']:.1f} ± {r['img_per_sec_std']:.1f}",
        runs, f"{r['step_ms_median']:.2f}", f"{r['host_ms_per_step']:.2f}", "-" if peak is None else f"{peak:.0f}",
        f"{r['params_m']:.2f}",
    )  # fmt: skip


def format_table(rows: list[dict]) -> str:
    """One line per measured (model, mode); failures are listed with their messages under the table."""
    lines = [TABLE_HEADER] + [_table_row(r) for r in rows if r["mode"] != "profile" or "error" in r]
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_HEADER))]
    text = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text += [f"failed: {r['model']} ({r['mode']}): {r['error']}" for r in rows if "error" in r]
    return "\n".join(text)


def format_profile(row: dict) -> str:
    lines = [f"{row['model']}: {row['timer']}, {row['total_ms_per_step']:.3f} ms per {row['profiled']} step"]
    lines += [f"  {c['category']:<18} {c['ms_per_step']:9.3f} ms  {c['percent']:5.1f} %" for c in row["categories"]]
    lines.append("  top kernels:")
    lines += [
        f"  {k['percent']:5.1f} %  {k['ms_per_step']:9.3f} ms  {k['calls_per_step']:6.1f}x  {k['category']:<16} "
        f"{k['name'][:110]}"
        for k in row["top_kernels"]
    ]
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def _check_args(args: argparse.Namespace, device: torch.device) -> None:
    if args.torchcompile and args.torchcompile not in torch.compiler.list_backends(exclude_tags=()):
        raise UsageError(f"--torchcompile {args.torchcompile!r}: not a torch.compile backend (e.g. inductor)")
    if args.torchcompile_mode and not args.torchcompile:
        raise UsageError("--torchcompile-mode needs --torchcompile")
    if args.cuda_graph and device.type != "cuda":
        raise UsageError("--cuda-graph needs a CUDA device")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    _check_args(args, device)
    names = resolve_models(args.model)
    if args.kernel:
        set_kernel_backend(args.kernel)
    rows = []
    for name in names:
        _logger.info("benchmarking %s (%s)", name, args.bench)
        rows += measure_model(name, args, device)
    env = _environment(device)
    print(f"device: {env['device']}  torch {env['torch']}  timm {env['timm']}  triton {env['triton']}  {env['date']}")
    if any(r["mode"] != "profile" or "error" in r for r in rows):
        print(format_table(rows))
    for row in rows:
        if row["mode"] == "profile" and "error" not in row:
            print(format_profile(row))
    stamp = env["date"].replace("-", "").replace(":", "")
    path = args.results_file or DEFAULT_RESULTS_DIR / f"bench_{args.bench}_{stamp}.json"
    settings = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    write_json(path, {"environment": env, "settings": settings, "models": names, "results": rows})
    print(f"results: {path}")
    return 1 if any("error" in r for r in rows) else 0
