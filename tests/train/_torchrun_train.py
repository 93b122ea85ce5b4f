"""`Trainer.fit` under torchrun for the tests: each rank saves its results, per-step losses and final weights.

    python -m torch.distributed.run --nproc_per_node=2 tests/train/_torchrun_train.py OUT_DIR '{"model": ...}'

`fast_clock_rank` in the settings gives that rank a clock running 10^6 times too fast, so its own clock says the
time limit has passed from the first check on: only rank 0's clock may decide.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types

import torch

from sfmamba.train import TrainConfig
from sfmamba.train import trainer as trainer_module


class RecordingTrainer(trainer_module.Trainer):
    """Reads every step's loss (a sync per step: the reference the logged numbers are checked against)."""

    losses: list[float]

    def _train_step(self, images, target, mark=None):
        loss = super()._train_step(images, target, mark)
        self.losses.append(float(loss))
        return loss


def main() -> None:
    out, settings = sys.argv[1], json.loads(sys.argv[2])
    fast_clock_rank = settings.pop("fast_clock_rank", None)
    rank = int(os.environ.get("RANK", "0"))
    if rank == fast_clock_rank:
        trainer_module.time = types.SimpleNamespace(perf_counter=lambda: time.perf_counter() * 1e6)
    trainer = RecordingTrainer(TrainConfig(**settings))
    trainer.losses = []
    try:
        results = trainer.fit()
    finally:
        trainer.close()
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    torch.save(dict(results=results, losses=trainer.losses, weights=weights), f"{out}/rank{rank}.pt")


if __name__ == "__main__":
    main()
