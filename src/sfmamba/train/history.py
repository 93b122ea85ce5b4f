"""What a run records in its folder: `summary.csv` (one row per epoch), `steps.csv` (every log interval) and
`train_curves.png`, all rewritten atomically from the history kept in the training state."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

from ..utils.files import atomic_write, atomic_write_text

_logger = logging.getLogger(__name__)


def rows_to_csv(rows: Sequence[dict[str, object]]) -> str:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def write_history(run_dir: str | Path, summary: Sequence[dict], steps: Sequence[dict], plot: bool = True) -> None:
    run_dir = Path(run_dir)
    if summary:
        atomic_write_text(run_dir / "summary.csv", rows_to_csv(summary))
    if steps:
        atomic_write_text(run_dir / "steps.csv", rows_to_csv(steps))
    if plot and (summary or steps):
        plot_training_curves(run_dir / "train_curves.png", summary, steps)


def plot_training_curves(path: str | Path, summary: Sequence[dict], steps: Sequence[dict]) -> bool:
    """Loss (train per log interval, eval per epoch), eval top-1 and learning rate against the step; False when
    matplotlib is not installed (the CSV files hold the same numbers)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.warning("matplotlib is not installed: no %s (summary.csv and steps.csv have the numbers)", path)
        return False
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    if steps:
        ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train (smoothed per interval)")
        ax_lr.plot([r["step"] for r in steps], [r["lr"] for r in steps])
    evaluated = [r for r in summary if r.get("eval_top1") is not None]
    if evaluated:
        ax_loss.plot([r["step"] for r in evaluated], [r["eval_loss"] for r in evaluated], "o-", label="eval")
        ax_acc.plot([r["step"] for r in evaluated], [r["eval_top1"] for r in evaluated], "o-", label="model")
        if any("ema_top1" in r for r in evaluated):
            ema = [r for r in evaluated if "ema_top1" in r]
            ax_acc.plot([r["step"] for r in ema], [r["ema_top1"] for r in ema], "s--", label="EMA")
        ax_acc.legend()
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_acc.set(xlabel="step", ylabel="top-1 (%)", title="eval top-1")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    fig.tight_layout()
    atomic_write(path, lambda temp: fig.savefig(temp, format="png", dpi=100))
    plt.close(fig)
    return True
