"""`sfmamba compress vmeanba` end to end on a tiny synthetic folder dataset and a CPU-sized VMamba."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import sfmamba.models  # noqa: F401  (registers the models)
from sfmamba.cli.main import main
from sfmamba.compress import prune_l1, sparsity
from sfmamba.compress import vmeanba as V
from sfmamba.train.checkpoint import read_metadata, save_weights

MODEL = "vmamba_v2_nano"
CLASSES = ("circle", "square")


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    """<root>/{train,val}/<class>/*.png: 6 + 4 random 32 px RGB images per class."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 4)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 128, (32, 32, 3), dtype=np.uint8) + 100 * label
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A `sfmamba train`-style weights file (random weights, training metadata)."""
    torch.manual_seed(0)
    model = timm.create_model(MODEL, num_classes=len(CLASSES))
    path = tmp_path_factory.mktemp("ckpt") / "best.safetensors"
    meta = dict(model=MODEL, model_kwargs={}, num_classes=len(CLASSES), img_size=32, dataset="folder",
                classes=list(CLASSES))  # fmt: skip
    save_weights(path, model, meta)
    return path


def run_cli(*args) -> int:
    return main(["compress", "vmeanba", *map(str, args)])


def test_compress_writes_a_checkpoint_timm_rebuilds(folder_dataset, trained_checkpoint, tmp_path, capsys):
    output, report = tmp_path / "k2.safetensors", tmp_path / "report"
    status = run_cli(
        "--checkpoint", trained_checkpoint, "--data", folder_dataset, "--k", 2, "--prune", 0.4, "--prune-layers",
        "linear", "--output", output, "--report", report, "--k-step", 2, "--latency-iters", 1, "-b", 4, "-j", 0,
        "--device", "cpu",
    )  # fmt: skip
    assert status == 0
    meta = read_metadata(output)
    blocks = meta["vmeanba_blocks"]
    assert len(blocks) == 2 and meta["vmeanba_k"] == 2 and meta["model"] == MODEL and meta["dataset"] == "folder"
    scores = meta["vmeanba_scores"]
    assert set(scores) == set(V.find_blocks(timm.create_model(MODEL)))
    assert sorted(blocks) == sorted(V.rank_blocks(scores)[:2])
    assert meta["pruning"]["amount"] == 0.4 and meta["pruning"]["layer_types"] == ["linear"]
    assert meta["vmeanba_calibration"]["images"] == 2 * 6

    # the compressed model == the original checkpoint pruned and converted in this process
    rebuilt = V.load_compressed(output)
    assert V.converted_blocks(rebuilt) == sorted(blocks, key=V.find_blocks(rebuilt).index)
    assert sparsity(rebuilt, ("linear",))["sparsity"] == pytest.approx(0.4, abs=0.01)
    expected = V.load_compressed(trained_checkpoint)  # a file without VMeanba metadata loads unconverted
    assert V.converted_blocks(expected) == []
    prune_l1(expected, 0.4, ("linear",))
    V.apply(expected.eval(), blocks)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), expected(x), rtol=0, atol=0)

    record = json.loads((report / "vmeanba_report.json").read_text())
    n = len(scores)
    assert [r["k"] for r in record["rows"]] == V.k_steps(n, 2)
    assert (report / "vmeanba_report.png").is_file() and (report / "vmeanba_report.md").is_file()
    out = capsys.readouterr().out
    assert f"VMeanba on K=2 blocks: top-1 {meta['top1']['compressed']:.2f}%" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--k", "99"], "--k 99 exceeds the 5 convertible blocks"),
        (["--k", "1", "--prune", "1.5"], "--prune must be a fraction in"),
        (["--k", "1", "--output", "out.pth"], "--output must end in .safetensors"),
    ],
)
def test_bad_requests_exit_with_usage_errors(folder_dataset, trained_checkpoint, tmp_path, capsys, extra, message):
    args = [
        "--checkpoint",
        trained_checkpoint,
        "--data",
        folder_dataset,
        "--output",
        tmp_path / "x.safetensors",
        "-j",
        0,
        "--device",
        "cpu",
        *extra,
    ]  # fmt: skip  (argparse: the last --output wins)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
