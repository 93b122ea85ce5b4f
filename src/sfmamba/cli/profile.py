"""Where a model's time goes: the top kernels by time and the time per category (scan, conv, GEMM, norm,
elementwise/copy, attention) of an inference forward (or a training step, --profile-mode train), for one or more
models in one process. The same as `sfmamba bench --bench profile`, with bench's other flags (batch size, image size,
--amp, --channels-last, --device, ...); a table on stdout and a JSON file in benchmarks/results/.

examples:
  sfmamba profile --model mambavision_tiny sf_mamba_tiny -b 128 --amp
  sfmamba profile --model sf_mamba_tiny --profile-mode train -b 64 --amp --profile-top 40
  sfmamba profile --device cpu --model sf_mamba_nano -b 2 --img-size 64 --num-warm-iter 1
"""

from __future__ import annotations

import argparse

from . import bench

HELP = "profile one or more models: top kernels by time, time per category (= bench --bench profile)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    bench.add_arguments(parser, profile_only=True)


def run(args: argparse.Namespace) -> int:
    return bench.run(args)
