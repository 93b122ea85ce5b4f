"""Ordinary command-line mistakes end in a usage error (exit status 2, the flag and the expected value named) before
any work starts, never in a traceback, and a zero is refused, never replaced by a default."""

from __future__ import annotations

import pytest
import torch

from sfmamba.cli.main import main

COMMANDS_WITH_DEVICE = [
    ["train", "--model", "mambavision_nano"],
    ["eval", "--model", "mambavision_nano"],
    ["bench", "--model", "mambavision_nano"],
    ["tune", "--shapes", "2,4,4,1"],
    ["demo"],
    ["compress", "vmeanba", "--checkpoint", "x.safetensors", "--k", "1", "--output", "y.safetensors"],
]


def _usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("command", COMMANDS_WITH_DEVICE, ids=lambda c: c[0])
def test_unknown_device_is_a_usage_error(command, capsys):
    assert "argument --device: 'foo': expected cpu, cuda or cuda:N" in _usage_error(
        [*command, "--device", "foo"], capsys
    )


@pytest.mark.parametrize("command", COMMANDS_WITH_DEVICE, ids=lambda c: c[0])
def test_cuda_without_a_gpu_is_a_usage_error(command, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "'cuda:0': no CUDA device is available" in _usage_error([*command, "--device", "cuda:0"], capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--model", "mambavision_nano", "-b", "0"], "argument -b/--batch-size: '0' is not a positive integer"),
        (["eval", "--model", "mambavision_nano", "-j", "-1"], "argument -j/--workers: '-1' is not a non-negative"),
        (["eval", "--model", "mambavision_nano", "--img-size", "0"], "argument --img-size: '0' is not a positive"),
        (["demo", "--lr", "0"], "argument --lr: '0' is not a positive number"),
        (["demo", "--train-minutes", "-1"], "argument --train-minutes: '-1' is not a positive number"),
        (["demo", "-b", "0"], "argument -b/--batch-size: '0' is not a positive integer"),
        (["demo", "--img-size", "0"], "argument --img-size: '0' is not a positive integer"),
        (["demo", "--model", "no_such_model", "--no-speed"], "--model 'no_such_model': not a registered timm model"),
    ],
)
def test_bad_values_are_usage_errors(argv, message, capsys):
    assert message in _usage_error(argv, capsys)


def test_tune_refuses_the_triton_kernel_on_the_cpu(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    err = _usage_error(["tune", "--device", "cpu", "--kernel", "triton", "--shapes", "2,4,4,1"], capsys)
    assert "--kernel triton needs a CUDA device" in err


def test_compress_refuses_zero_evaluation_batches(tmp_path, capsys):
    checkpoint = tmp_path / "x.safetensors"
    checkpoint.write_bytes(b"")
    output = str(tmp_path / "y.safetensors")
    argv = ["compress", "vmeanba", "--checkpoint", str(checkpoint), "--k", "1", "--output", output,
            "--max-eval-batches", "0", "--device", "cpu"]  # fmt: skip
    assert "--max-eval-batches must be >= 1, got 0" in _usage_error(argv, capsys)
