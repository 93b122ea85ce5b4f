"""The `sfmamba` command line (`sfmamba.cli.main:main`); one module per subcommand, and the argument types they
share."""

from __future__ import annotations

import argparse

import torch

from ..utils._config import check_device


class UsageError(Exception):
    """A bad command-line request found after parsing; `main` reports it like an argparse error (exit status 2)."""


def pretrained_error(model: str, err: OSError) -> UsageError:
    """A one-line error for timm's pretrained weights that could not be read or downloaded (no network, say)."""
    return UsageError(f"--pretrained: the {model} weights could not be read or downloaded ({type(err).__name__}: "
                      f"{err}); without a network give a local file (--checkpoint FILE)")  # fmt: skip


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "a non-negative integer")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _int_at_least(text: str, low: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"{text!r} is not {expected}")
    return value


def device_arg(text: str) -> str:
    """argparse type for --device: cpu, cuda or cuda:N, where CUDA is available and N names a visible GPU."""
    try:
        check_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def resolve_device(name: str | None) -> torch.device:
    """The device --device names, or cuda when available and else cpu."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
