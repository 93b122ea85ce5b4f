"""Atomic writes, weights + metadata round trip, training-state consistency checks, RNG capture."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from sfmamba.train.checkpoint import (
    BackgroundWriter,
    CheckpointError,
    capture_rng_state,
    load_training_checkpoint,
    load_weights,
    read_metadata,
    resolve_resume_path,
    restore_rng_state,
    save_training_checkpoint,
    save_weights,
)


def test_weights_round_trip_with_metadata(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    save_weights(tmp_path / "w.safetensors", model, {"model": "x", "num_classes": 4, "classes": ["a", "b"]})
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    meta = load_weights(tmp_path / "w.safetensors", other)
    assert meta == {"model": "x", "num_classes": 4, "classes": ["a", "b"]}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match=r"w.safetensors: does not match the model"):
        load_weights(tmp_path / "w.safetensors", nn.Linear(3, 4))


def test_corrupt_weights_file(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match=r"bad.safetensors: not a readable safetensors file"):
        read_metadata(tmp_path / "bad.safetensors")


def test_training_state_step_must_match_the_weights(tmp_path):
    model = nn.Linear(2, 2)
    save_training_checkpoint(tmp_path, model, None, {"step": 5, "epoch": 0}, {"model": "m"})
    assert load_training_checkpoint(tmp_path / "last.state.pt", nn.Linear(2, 2), None)["step"] == 5
    save_weights(tmp_path / "last.safetensors", model, {"model": "m", "step": 6})  # killed before the state rename
    with pytest.raises(CheckpointError, match=r"last.safetensors is from step 6 but .*last.state.pt from step 5"):
        load_training_checkpoint(tmp_path / "last.state.pt", nn.Linear(2, 2), None)
    (tmp_path / "last.state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"last.state.pt: cannot be loaded as a training state"):
        load_training_checkpoint(tmp_path / "last.state.pt", nn.Linear(2, 2), None)


def test_resolve_resume_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"last.state.pt: no training state to resume from"):
        resolve_resume_path(tmp_path)
    (tmp_path / "last.state.pt").touch()
    expected = tmp_path / "last.state.pt"
    for given in (tmp_path, tmp_path / "last.safetensors", tmp_path / "last-ema.safetensors", expected):
        assert resolve_resume_path(given) == expected


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_background_checkpoint_is_a_snapshot_of_the_call(tmp_path):
    """The files hold the values at the call even when the tensors change before the thread writes them."""
    run = tmp_path
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    moment = torch.ones(4)
    writer = BackgroundWriter()
    try:
        save_training_checkpoint(run, model, ema, {"step": 7, "optimizer": {"m": moment}}, {}, writer=writer)
        want = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():  # the next training steps, racing the writer
            model.weight.add_(1.0)
            moment.add_(1.0)
        writer.wait()
    finally:
        writer.close()
    restored = nn.Linear(3, 2)
    state = load_training_checkpoint(run / "last.state.pt", restored, nn.Linear(3, 2))
    assert state["step"] == 7 and torch.equal(state["optimizer"]["m"], torch.ones(4))
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in want.items())


def test_a_failed_background_write_raises_at_the_next_call():
    writer = BackgroundWriter()

    def fail() -> None:
        raise OSError("disk full")

    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writer.submit(lambda: None)
    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writer.close()


def _save(run, model, ema, step, writer=None):
    save_training_checkpoint(run, model, ema, {"step": step}, {}, writer=writer)


def test_a_failed_state_write_keeps_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """The weights of step 8 must not be renamed over step 7's when step 8's state cannot be written."""
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    _save(tmp_path, model, ema, 7)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    def disk_full(obj, path):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, model, ema, 8)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-ema.safetensors", "last.safetensors", "last.state.pt"]
    restored = nn.Linear(3, 2)
    assert load_training_checkpoint(tmp_path / "last.state.pt", restored, nn.Linear(3, 2))["step"] == 7
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in want.items())


def test_stale_ema_weights_are_refused_on_resume(tmp_path):
    """A session without EMA leaves the EMA file of an earlier one: resuming with EMA must not load it silently."""
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    _save(tmp_path, model, ema, 7)
    _save(tmp_path, model, None, 9)
    assert load_training_checkpoint(tmp_path / "last.state.pt", nn.Linear(3, 2), None)["step"] == 9
    with pytest.raises(CheckpointError, match="last-ema.safetensors is from step 7 but .* from step 9"):
        load_training_checkpoint(tmp_path / "last.state.pt", nn.Linear(3, 2), nn.Linear(3, 2))


def test_wait_without_raising_logs_the_failed_write(caplog):
    writer = BackgroundWriter()
    writer.submit(lambda: (_ for _ in ()).throw(OSError("disk full")))
    with caplog.at_level("ERROR", logger="sfmamba.train.checkpoint"):
        writer.wait(raise_error=False)
    assert "writing a checkpoint failed" in caplog.text and "disk full" in caplog.text
    writer.close()  # the error was reported once: nothing left to raise


def test_a_failed_background_write_does_not_hide_the_training_error(fake_fmnist, tmp_path, monkeypatch, caplog):
    """fit waits for the write in flight when the loop fails; the loop's error is raised, the write's is logged."""
    from sfmamba.train import TrainConfig, train

    def history_broke(*args, **kwargs):
        raise RuntimeError("history broke")

    def disk_full(obj, path):
        raise OSError("disk full")

    monkeypatch.setattr("sfmamba.train.trainer.write_history", history_broke)  # right after the write is submitted
    monkeypatch.setattr(torch, "save", disk_full)
    config = TrainConfig(
        model="mambavision_nano", img_size=16, dataset="fashion_mnist", data_dir=str(fake_fmnist), batch_size=8,
        workers=0, epochs=1, checkpoint_interval=1, progress=False, device="cpu", output=str(tmp_path / "run"),
    )  # fmt: skip
    with caplog.at_level("ERROR", logger="sfmamba.train.checkpoint"), pytest.raises(RuntimeError, match="history"):
        train(config)
    assert "writing a checkpoint failed" in caplog.text and "disk full" in caplog.text
