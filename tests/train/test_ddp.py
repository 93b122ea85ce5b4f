"""DDP through torchrun on the CPU (gloo, 2 processes): the same command, and the same training as one process.

With per-sample augmentation seeds and the sampler dealing each global batch out over the ranks, 2 processes with
batch 4 see exactly the samples that 1 process with batch 8 sees at every step; DDP averages the gradients, so
without batch-dependent layers (a ViT: LayerNorm only) both runs end with the same weights up to rounding. (SGD, not
AdamW: Adam divides by the gradient's own size, which turns rounding noise in zero gradients, such as the attention
key bias's, into full-size steps.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sfmamba.train import TrainConfig, train

MODEL_KWARGS = "img_size=16 patch_size=4"


def _settings(data, output, batch_size: int) -> dict:
    return dict(model="test_vit", img_size=16, data_dir=str(data), batch_size=batch_size, workers=0, epochs=2,
                warmup_epochs=0.5, lr=0.05, opt="sgd", drop_path=0.0, smoothing=0.1, scale=[0.5, 1.0],
                output=str(output), log_interval=1, progress=False, device="cpu", seed=3)  # fmt: skip


# --no-ddp-bb: no buffer broadcast per step (the ViT has no buffers: the same weights either way)
@pytest.mark.parametrize("extra", [[], ["--no-ddp-bb"]], ids=["default", "no-ddp-bb"])
def test_torchrun_two_processes_match_one(fake_fmnist, tmp_path, extra):
    single = train(TrainConfig(**_settings(fake_fmnist, tmp_path / "one", 8),
                               model_kwargs={"img_size": 16, "patch_size": 4}))  # fmt: skip
    settings = _settings(fake_fmnist, tmp_path / "two", 4)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "sfmamba.cli.main", "train", *extra, "--model-kwargs", *MODEL_KWARGS.split()]  # fmt: skip
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if key == "progress":
            command.append("--no-progress")
        elif isinstance(value, list):
            command += [flag, *map(str, value)]
        else:
            command += [flag, str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert yaml.safe_load((tmp_path / "two" / "args.yaml").read_text())["ddp_bb"] is not bool(extra)
    assert results["step"] == single["step"] == 8  # 32 images / (2 x 4) per step, 2 epochs
    a, b = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert results["eval_top1"] == single["eval_top1"]  # 16 test images, split over the ranks and summed
    state = torch.load(tmp_path / "two" / "last.state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # every rank's RNG state, for an exact resume on 2 processes


def _average_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from sfmamba.train.distributed import average_gradients, broadcast_from_main, fill_missing_gradients

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64)),
                  torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(2))]  # fmt: skip
        params[0].grad = torch.full((3,), float(rank + 1))
        params[1].grad = torch.full((2, 2), 10.0 * (rank + 1), dtype=torch.float64)
        if rank == 0:
            params[3].grad = torch.full((2,), 4.0)  # (a head with a target on rank 0 only)
        fill_missing_gradients(params)
        average_gradients(params)  # the third has no gradient on any rank
        weights = torch.full((2,), float(rank + 5))
        broadcast_from_main([weights])
        grads = {f"g{i}": p.grad for i, p in enumerate(params)}
        torch.save(dict(grads, w=weights), f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_average_gradients_and_broadcast_over_two_processes(tmp_path):
    """The --cuda-graph-under-torchrun path: gradients averaged per dtype, rank 0's tensors copied to every rank; a
    gradient one rank lacks counts as zeros there (`fill_missing_gradients`), one no rank has stays None."""
    import torch.multiprocessing as mp

    mp.spawn(_average_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert torch.equal(got["g0"], torch.full((3,), 1.5))
        assert torch.equal(got["g1"], torch.full((2, 2), 15.0, dtype=torch.float64))
        assert got["g2"] is None and torch.equal(got["w"], torch.full((2,), 5.0))
        assert torch.equal(got["g3"], torch.full((2,), 2.0))


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("foo", r"device 'foo': expected cpu, cuda or cuda:N"),
        ("cuda:0", r"device 'cuda:0': no CUDA device is available"),
    ],
)
def test_a_bad_device_in_the_config_is_a_clear_error(monkeypatch, device, message):
    """The training config's device goes through the same check as the command line's --device (YAML skips argparse)."""
    from sfmamba.train.distributed import init_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        init_distributed(device)
