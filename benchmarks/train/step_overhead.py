"""Where one `sfmamba train` step's host time goes: milliseconds, operators, kernel launches and syncs per phase.

A small model on a GPU is bound by the host (Python and kernel launches), not by the GPU: every launch and every
Python loop in the step costs wall time. This builds the trainer from a recipe (a `sfmamba train` YAML config,
default configs/fashion_mnist_sf_mamba.yaml, `--set key=value` overrides) and runs its real `_train_step`, which
calls back after each phase: batch (loader + augmentation), forward (+ loss), backward, clip, optimizer, scheduler,
ema. Two passes:

- timed: host milliseconds of each phase (no synchronisation inside the step; on a GPU the host may still wait when
  the launch queue is full) and the synchronised wall time of a step;
- profiled (torch.profiler, CPU activities, on CUDA also the runtime API): per phase the aten operators called from
  Python or autograd (`ops`), the operators that do work (`leaf ops`: no nested aten call, views and allocations
  left out), the scalar reads (`reads`: `.item()`, `float()`, `bool()` of a tensor, a sync when it is on the
  GPU, none for CPU tensors such as the optimizer's step counts) and, on CUDA, the kernel launches (`launches`:
  cudaLaunchKernel / cuLaunchKernel...) and the host-device synchronisations (`syncs`: stream/device/event).

Prints a table and writes benchmarks/results/train_step_overhead_<time>[_<tag>].json (device, versions, date).

    python benchmarks/train/step_overhead.py                                        # the recipe, on the GPU
    python benchmarks/train/step_overhead.py --set img_size=32 batch_size=16 amp=False device=cpu \\
        --steps 5 --warmup 2 --tag cpu                                              # CPU, a minute
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[2]
_RANGE = "sfmamba_step_phase"
LAUNCH_EVENTS = frozenset(
    ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchCooperativeKernel")
)
READ_EVENT = "aten::_local_scalar_dense"  # .item(), float(), bool() of a tensor: a sync when it is on the GPU
SYNC_EVENTS = frozenset(("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"))
# leaf operators that launch no kernel: views, metadata and allocations
NO_WORK_OPS = frozenset(
    (
        "aten::empty",
        "aten::empty_strided",
        "aten::empty_like",
        "aten::view",
        "aten::_unsafe_view",
        "aten::_reshape_alias",
        "aten::reshape",
        "aten::as_strided",
        "aten::expand",
        "aten::t",
        "aten::transpose",
        "aten::permute",
        "aten::unsqueeze",
        "aten::squeeze",
        "aten::select",
        "aten::slice",
        "aten::unbind",
        "aten::split",
        "aten::chunk",
        "aten::narrow",
        "aten::detach",
        "aten::alias",
        "aten::lift_fresh",
        "aten::resize_",
        "aten::result_type",
        "aten::set_",
        "aten::unfold",
        "aten::view_as_real",
        "aten::view_as_complex",
        "aten::is_nonzero",
    )
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs/fashion_mnist_sf_mamba.yaml"))
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: the config's, else data/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--steps", type=int, default=50, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="steps before timing (Triton autotuning, caches)")
    parser.add_argument("--profile-steps", type=int, default=3, help="profiled steps (counts are per step)")
    parser.add_argument("--results-dir", default=str(REPO / "benchmarks/results"))
    parser.add_argument("--tag", default="", help="suffix for the result file name")
    args = parser.parse_args(argv)
    for name in ("steps", "warmup", "profile_steps"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'warmup' else '>= 1'}")
    return args


def recipe(args: argparse.Namespace) -> dict[str, object]:
    """The YAML config, --set over it (values read as Python literals where they parse), --data-dir over both."""
    from sfmamba.train.config import apply_overrides, load_yaml_config

    settings = apply_overrides(load_yaml_config(args.config), args.set)
    if args.data_dir:
        settings["data_dir"] = args.data_dir
    elif not settings.get("data_dir") and (REPO / "data/fashion-mnist").is_dir():
        settings["data_dir"] = str(REPO / "data/fashion-mnist")
    return settings


def endless_batches(trainer) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from sfmamba.data import set_loader_epoch

    epoch = 0
    while True:
        set_loader_epoch(trainer.train_loader, epoch)
        yield from trainer.train_loader
        epoch += 1


class PhaseClock:
    """`mark` for `Trainer._train_step`: host milliseconds of each phase since the previous mark."""

    def __init__(self):
        self.ms: dict[str, list[float]] = defaultdict(list)
        self.order: list[str] = []
        self._last = 0.0

    def start(self) -> None:
        self._last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        if phase not in self.ms:
            self.order.append(phase)
        self.ms[phase].append((now - self._last) * 1e3)
        self._last = now


class PhaseRanges:
    """`mark` under the profiler: each phase is one record_function range; names in the order they ran."""

    def __init__(self):
        self.names: list[str] = []
        self._range = None

    def start(self) -> None:
        self._range = record_function(_RANGE)
        self._range.__enter__()

    def __call__(self, phase: str) -> None:
        self._range.__exit__(None, None, None)
        self.names.append(phase)
        self.start()

    def stop(self) -> None:  # the remainder after the last phase (returning the loss) is not counted
        self._range.__exit__(None, None, None)
        self.names.append("")


def _has_aten_descendant(event) -> bool:
    return any(child.name.startswith("aten::") or _has_aten_descendant(child) for child in event.cpu_children)


def _under_aten(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def count_events(events, names: list[str], steps: int) -> dict[str, dict[str, float]]:
    """Per phase (events of any thread that start inside its ranges), per step: ops, leaf ops, reads, launches,
    syncs."""
    # host-side events only: on CUDA the profiler also records the kernels and a GPU copy of each range
    events = [e for e in events if e.device_type == DeviceType.CPU]
    ranges = sorted((e for e in events if e.name == _RANGE), key=lambda e: e.time_range.start)
    if len(ranges) != len(names):
        raise RuntimeError(f"profiler recorded {len(ranges)} phase ranges for {len(names)} marks")
    starts = [r.time_range.start for r in ranges]
    counts: dict[str, dict[str, float]] = {n: dict(ops=0, leaf_ops=0, reads=0, launches=0, syncs=0) for n in names if n}
    for event in events:
        if event.name == _RANGE:
            continue
        index = bisect.bisect_right(starts, event.time_range.start) - 1
        if index < 0 or event.time_range.start >= ranges[index].time_range.end or not names[index]:
            continue
        row = counts[names[index]]
        if event.name.startswith("aten::"):
            row["ops"] += not _under_aten(event)
            row["leaf_ops"] += event.name not in NO_WORK_OPS and not _has_aten_descendant(event)
        row["reads"] += event.name == READ_EVENT
        row["launches"] += event.name in LAUNCH_EVENTS
        row["syncs"] += event.name in SYNC_EVENTS
    return {name: {k: v / steps for k, v in row.items()} for name, row in counts.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(trainer, args: argparse.Namespace) -> dict[str, object]:
    trainer.model.train()
    trainer._started = time.perf_counter()  # the --time-schedule clock of fit()
    batches = endless_batches(trainer)
    device = trainer.device

    def run(steps: int, mark=None) -> None:
        for _ in range(steps):
            if mark is not None:
                mark.start()
            images, target = next(batches)
            trainer._train_step(images, target, mark)
            if isinstance(mark, PhaseRanges):
                mark.stop()

    run(args.warmup)
    synchronize(device)
    started = time.perf_counter()
    run(args.steps)
    synchronize(device)
    wall_ms = (time.perf_counter() - started) * 1e3 / args.steps

    clock = PhaseClock()
    run(args.steps, clock)
    synchronize(device)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    ranges = PhaseRanges()
    with profile(activities=activities) as prof:
        run(args.profile_steps, ranges)
        synchronize(device)
    counts = count_events(prof.events(), ranges.names, args.profile_steps)

    phases = []
    for name in clock.order:
        ms = clock.ms[name]
        phases.append(
            dict(phase=name, host_ms=statistics.median(ms), host_ms_mean=statistics.fmean(ms), **counts[name])
        )
    host_ms = sum(statistics.fmean(clock.ms[name]) for name in clock.order)
    batch_size = trainer.config.batch_size
    return dict(
        phases=phases,
        step_host_ms=host_ms,
        step_wall_ms=wall_ms,
        img_per_sec=batch_size * 1e3 / wall_ms,
        launches_per_step=sum(p["launches"] for p in phases),
        leaf_ops_per_step=sum(p["leaf_ops"] for p in phases),
        reads_per_step=sum(p["reads"] for p in phases),
        syncs_per_step=sum(p["syncs"] for p in phases),
    )


def print_table(result: dict[str, object], cuda: bool) -> None:
    header = f"{'phase':<10} {'host ms':>9} {'mean ms':>9} {'ops':>7} {'leaf ops':>9}"
    header += f" {'reads':>6}" + f" {'launches':>9} {'syncs':>6}" * cuda
    print(header)
    print("-" * len(header))
    for p in result["phases"]:
        line = f"{p['phase']:<10} {p['host_ms']:9.2f} {p['host_ms_mean']:9.2f} {p['ops']:7.0f} {p['leaf_ops']:9.0f}"
        line += f" {p['reads']:6.0f}" + f" {p['launches']:9.0f} {p['syncs']:6.0f}" * cuda
        print(line)
    total = sum(p["ops"] for p in result["phases"])
    line = f"{'step':<10} {'':>9} {result['step_host_ms']:9.2f} {total:7.0f} {result['leaf_ops_per_step']:9.0f}"
    line += f" {result['reads_per_step']:6.0f}" + f" {result['launches_per_step']:9.0f}" * cuda
    print(line)
    print(
        f"host {result['step_host_ms']:.2f} ms of a {result['step_wall_ms']:.2f} ms step (synchronised), "
        f"{result['img_per_sec']:.0f} img/s"
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    import timm

    found = dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__)
    try:
        import triton

        found["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.version.cuda:
        found["cuda"] = torch.version.cuda
    return found


def write_json(path: Path, record: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    from sfmamba.train.config import TrainConfig
    from sfmamba.train.trainer import Trainer

    settings = recipe(args)
    with tempfile.TemporaryDirectory(prefix="step_overhead_") as run_dir:
        config = TrainConfig(**{**settings, "output": run_dir, "progress": False, "resume": None})
        trainer = Trainer(config)
        try:
            result = measure(trainer, args)
        finally:
            trainer.close()
    cuda = trainer.device.type == "cuda"
    print_table(result, cuda)
    stamp = dt.datetime.now(dt.timezone.utc)
    record = dict(
        benchmark="train_step_overhead",
        date=stamp.isoformat(timespec="seconds"),
        device=device_name(trainer.device),
        versions=versions(),
        config=args.config,
        settings=settings,
        steps=args.steps,
        warmup=args.warmup,
        profile_steps=args.profile_steps,
        **result,
    )
    name = f"train_step_overhead_{stamp:%Y%m%dT%H%M%SZ}{'_' + args.tag if args.tag else ''}.json"
    path = Path(args.results_dir) / name
    write_json(path, record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
