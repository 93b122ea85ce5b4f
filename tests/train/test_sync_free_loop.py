"""The loop's host-side numbers without GPU syncs: the logged loss is read one log interval late (and exchanged over
gloo), the time limit is rank 0's clock broadcast over gloo. Checked on the CPU, on one and on 2 processes."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sfmamba.data import make_synthetic_fashion_mnist
from sfmamba.train import TrainConfig
from sfmamba.train.trainer import Trainer

WORKER = Path(__file__).with_name("_torchrun_train.py")


def _settings(data_dir, output, **overrides) -> dict:
    settings = dict(model="test_vit", model_kwargs={"img_size": 16, "patch_size": 4}, img_size=16,
                    data_dir=str(data_dir), batch_size=8, workers=0, epochs=2, warmup_epochs=0.5, lr=0.05, opt="sgd",
                    drop_path=0.0, smoothing=0.1, scale=[0.5, 1.0], output=str(output), log_interval=3,
                    checkpoint_interval=100, progress=False, device="cpu", seed=3)  # fmt: skip
    settings.update(overrides)
    return settings


def _expected_rows(losses: list[float], rows: list[dict], steps_per_epoch: int) -> list[float]:
    """Each row's loss: the mean of the per-step losses since the previous row or the start of its epoch."""
    expected, previous = [], 0
    for row in rows:
        first = max(previous, row["epoch"] * steps_per_epoch)  # steps first+1 .. row step
        expected.append(statistics.fmean(losses[first : row["step"]]))
        previous = row["step"]
    return expected


class _Recording(Trainer):
    def _train_step(self, images, target, mark=None):
        loss = super()._train_step(images, target, mark)
        self.losses.append(float(loss))
        return loss

    def save_last(self):
        self.saved.append((self.state.step, [row["step"] for row in self.state.steps]))
        super().save_last()


@pytest.mark.parametrize("log_interval", [1, 3])
def test_logged_loss_is_the_mean_over_its_interval(fake_fmnist, tmp_path, monkeypatch, log_interval):
    trainer = _Recording(TrainConfig(**_settings(fake_fmnist, tmp_path, log_interval=log_interval,
                                                 checkpoint_interval=3)))  # fmt: skip
    trainer.losses, trainer.saved = [], []
    monkeypatch.setattr("sfmamba.train.trainer.time.perf_counter", lambda: float(trainer.state.step))  # 1 s a step
    try:
        trainer.fit()
    finally:
        trainer.close()
    rows = trainer.state.steps
    # 4 steps per epoch: interval 3 logs steps 3, 6 and 8 (the last); step 4 is in the epoch's mean only
    assert [r["step"] for r in rows] == (list(range(1, 9)) if log_interval == 1 else [3, 6, 8])
    assert [r["loss"] for r in rows] == pytest.approx(_expected_rows(trainer.losses, rows, 4), rel=1e-6)
    assert [r["img_per_sec"] for r in rows] == [8.0] * len(rows)  # each interval timed from its own start
    epochs = [r["train_loss"] for r in trainer.state.summary]
    assert epochs == pytest.approx([statistics.fmean(trainer.losses[:4]), statistics.fmean(trainer.losses[4:])])
    # every checkpoint (steps 3 and 6, and each epoch's end) holds every row up to its step
    assert [step for step, _ in trainer.saved] == [3, 4, 6, 8]
    for step, logged in trainer.saved:
        assert logged == [r["step"] for r in rows if r["step"] <= step]
    with open(tmp_path / "steps.csv") as f:
        written = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in written] == pytest.approx([r["loss"] for r in rows], rel=1e-5)


def test_time_limit_on_one_process_stops_at_a_check(fake_fmnist, tmp_path, monkeypatch):
    """One process: its own clock, checked every 10 steps (a clock that reads the step count here)."""
    trainer = Trainer(TrainConfig(**_settings(fake_fmnist, tmp_path, epochs=10, eval_interval=0, time_limit=15.0)))
    monkeypatch.setattr("sfmamba.train.trainer.time.perf_counter", lambda: float(trainer.state.step))
    try:
        results = trainer.fit()
    finally:
        trainer.close()
    assert results["stop"] == "time_limit" and results["step"] == 20  # 10 s at step 10, 20 s at step 20
    assert torch.load(tmp_path / "last.state.pt", weights_only=True)["step"] == 20


def test_two_processes_stop_together_and_log_the_mean_over_ranks(tmp_path):
    """Rank 1's clock says the limit passed at once; rank 0's decides, so both ranks stop at the same step (with the
    same LR schedule, which --time-schedule takes from the clock) and rank 0's checkpoint is every rank's state."""
    data = make_synthetic_fashion_mnist(tmp_path / "data", n_train=512)  # 64 steps of 2 x 4 per epoch
    settings = _settings(data, tmp_path / "run", batch_size=4, epochs=100, eval_interval=0, checkpoint_interval=7,
                         time_limit=2.0, time_schedule=True, fast_clock_rank=1)  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
               str(tmp_path), json.dumps(settings)]  # fmt: skip
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    step = ranks[0]["results"]["step"]
    assert [r["results"]["stop"] for r in ranks] == ["time_limit"] * 2
    assert ranks[1]["results"]["step"] == step and step % 10 == 0 and step >= 10  # rank 1 alone: step 0
    assert len(ranks[0]["losses"]) == len(ranks[1]["losses"]) == step
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert state["step"] == step and len(state["rng"]) == 2
    saved = load_file(str(tmp_path / "run" / "last.safetensors"))
    for key, value in saved.items():
        assert torch.equal(ranks[0]["weights"][key], value) and torch.equal(ranks[1]["weights"][key], value), key

    per_step = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
    rows = state["run_state"]["steps"]
    assert len(rows) >= 3 and rows[-1]["step"] <= step and all(r["img_per_sec"] > 0 for r in rows)
    assert [r["loss"] for r in rows] == pytest.approx(_expected_rows(per_step, rows, 64), rel=1e-5)
    last_epoch = state["run_state"]["summary"][-1]
    assert last_epoch["train_loss"] == pytest.approx(statistics.fmean(per_step[last_epoch["epoch"] * 64 : step]))
    with open(tmp_path / "run" / "steps.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [r["step"] for r in rows]


def _helpers_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from sfmamba.train import distributed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        group = distributed.cpu_group()
        got = dict(
            same_group=distributed.cpu_group() is group,
            broadcast=distributed.broadcast_from_rank0(rank + 1.5),
            mean=distributed.mean_over_ranks(float(rank)),
            gathered=distributed.all_gather_objects({"rank": rank}),
        )
    finally:
        distributed.cleanup_distributed()
    got["reset"] = distributed._cpu_group is None
    torch.save(got, f"{out_dir}/{rank}.pt")


def test_host_exchanges_over_the_gloo_group(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_helpers_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert got == dict(same_group=True, broadcast=1.5, mean=0.5, gathered=[{"rank": 0}, {"rank": 1}], reset=True)
