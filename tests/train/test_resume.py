"""Resume is exact: N steps straight give the same weights as N/2 steps, a stop, a resume and N/2 more."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

from sfmamba.train import TrainConfig, train


def _config(data_dir, output, **overrides) -> TrainConfig:
    # drop-path, mixup/cutmix, EMA and random erasing: every random stream the loop owns is exercised
    settings = dict(
        model="mambavision_nano", img_size=16, dataset="fashion_mnist", data_dir=str(data_dir), batch_size=8,
        workers=0, epochs=2, warmup_epochs=0.5, lr=2e-3, drop_path=0.1, mixup=0.2, cutmix=1.0, smoothing=0.1,
        model_ema=True, model_ema_decay=0.9, reprob=0.25, scale=[0.5, 1.0], log_interval=2, checkpoint_interval=100,
        progress=False, device="cpu", seed=5, output=str(output) if output else None,
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def _weights(run_dir, name="last.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / name))


def test_resume_mid_epoch_is_bit_exact(fake_fmnist, tmp_path):
    straight = train(_config(fake_fmnist, tmp_path / "straight"))
    assert straight["step"] == 8 and straight["stop"] == "done"  # 32 images / 8 = 4 steps per epoch, 2 epochs

    paused = train(_config(fake_fmnist, tmp_path / "resumed", stop_step=3))
    assert paused["step"] == 3 and paused["stop"] == "stop_step"
    resumed = train(_config(fake_fmnist, None, resume=str(tmp_path / "resumed")))
    assert resumed["step"] == 8 and resumed["run_dir"] == str(tmp_path / "resumed")

    for name in ("last.safetensors", "last-ema.safetensors"):
        a, b = _weights(tmp_path / "straight", name), _weights(tmp_path / "resumed", name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    assert resumed["lr"] == straight["lr"]
    with open(tmp_path / "resumed" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"] and [r["step"] for r in rows] == ["4", "8"]
    state = torch.load(tmp_path / "resumed" / "last.state.pt", weights_only=True)
    assert state["step"] == 8 and state["run_state"]["steps"][-1]["step"] == 8


def test_checkpoint_every_k_steps_bounds_the_loss(fake_fmnist, tmp_path, monkeypatch):
    """With checkpoint_interval=2 the state is saved at step 2 (and at the stop, step 3); a run killed while it saves
    at step 3 leaves step 2's complete state on disk (atomic writes), so a kill loses at most k steps."""
    from sfmamba.train.trainer import Trainer

    class Killed(Exception):
        pass

    saved, save_last = [], Trainer.save_last

    def killed_at_step_3(trainer):
        saved.append(trainer.state.step)
        if trainer.state.step == 3:
            raise Killed
        save_last(trainer)

    monkeypatch.setattr(Trainer, "save_last", killed_at_step_3)
    settings = dict(checkpoint_interval=2, model_ema=False, mixup=0.0, cutmix=0.0, epochs=1)
    with pytest.raises(Killed):
        train(_config(fake_fmnist, tmp_path / "run", stop_step=3, **settings))
    assert saved == [2, 3]
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert state["step"] == 2
    for name in ("args.yaml", "steps.csv", "last.safetensors"):
        assert (tmp_path / "run" / name).is_file()
    monkeypatch.setattr(Trainer, "save_last", save_last)
    resumed = train(_config(fake_fmnist, None, resume=str(tmp_path / "run"), **settings))
    assert resumed["step"] == 4 and resumed["stop"] == "done"


def test_resume_of_a_missing_run_is_a_clear_error(fake_fmnist, tmp_path):
    with pytest.raises(ValueError, match=r"nothing-here: no training state to resume from \(expected a run folder"):
        train(_config(fake_fmnist, tmp_path / "x", resume=str(tmp_path / "nothing-here")))


def test_time_schedule_follows_the_elapsed_share_of_the_limit(fake_fmnist, tmp_path, monkeypatch):
    from sfmamba.train.trainer import Trainer

    trainer = Trainer(_config(fake_fmnist, tmp_path / "t", time_limit=100.0, time_schedule=True, model_ema=False))
    clock = [1000.0]
    monkeypatch.setattr("sfmamba.train.trainer.time.perf_counter", lambda: clock[0])
    trainer._started = 1000.0 - 50.0  # half of the limit has passed, no step done yet
    assert trainer.total_steps == 8 and trainer._schedule_step() == 4
    trainer.state.step = 6  # ahead of the clock: the step counts
    assert trainer._schedule_step() == 6
    clock[0] += 1000.0  # far past the limit: the end of the schedule, no further
    assert trainer._schedule_step() == 8
    trainer.config.time_schedule = False
    assert trainer._schedule_step() == 6


@pytest.mark.parametrize("img_size, amp, warned", [(16, True, True), (32, True, False), (16, False, False)])
def test_cpu_bf16_below_32px_warns(fake_fmnist, tmp_path, caplog, img_size, amp, warned):
    """torch's CPU bf16 conv backward is wrong on the 1x1 maps our models reach below 32 px (Known issues)."""
    from sfmamba.train.trainer import Trainer

    with caplog.at_level("WARNING", logger="sfmamba.train.trainer"):
        Trainer(_config(fake_fmnist, tmp_path / "t", img_size=img_size, amp=amp, amp_dtype="bfloat16"))
    assert ("oneDNN conv backward" in caplog.text) == warned


def test_a_new_run_never_overwrites_an_old_one(fake_fmnist, tmp_path):
    train(_config(fake_fmnist, tmp_path / "run", stop_step=1, model_ema=False))
    before = (tmp_path / "run" / "last.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"run already holds a run \(last.state.pt\): pass --resume .*run to continue"):
        train(_config(fake_fmnist, tmp_path / "run", stop_step=1, model_ema=False))
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == before
