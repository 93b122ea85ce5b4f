"""The GPU evidence scripts run end to end on the CPU: benchmarks/train/run_fashion_mnist.py (parallel runs, cache
warm-up, train-only then collect from a runs file, per-family model kwargs) and benchmarks/train/ddp_scaling.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks/train"
TINY = ["img_size=32", "batch_size=8", "workers=0", "eval_interval=0", "time_limit=None", "amp=False",
        "data_on_device=False", "max_steps=1", "validation_batch_size=64",
        "model_kwargs={'dim': 16, 'in_dim': 8}"]  # fmt: skip


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_take_the_recipe_width_except_deit():
    evidence = _load("run_fashion_mnist")
    settings = {"img_size": 32, "model_kwargs": {"dim": 16, "in_dim": 8}}
    assert evidence.model_kwargs(settings, "no_aux") == {"dim": 16, "in_dim": 8, "aux_tokens": False}
    assert evidence.model_kwargs(settings, "deit_256") == {
        "patch_size": 8, "embed_dim": 256, "num_heads": 4, "img_size": 32,
    }  # fmt: skip


def test_parallel_train_only_then_collect_from_runs(fake_fmnist, tmp_path):
    evidence = _load("run_fashion_mnist")
    common = ["--data-dir", str(fake_fmnist), "--variants", "sf_mamba", "no_aux", "--seeds", "0", "--set", *TINY,
              "--output-root", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]  # fmt: skip
    assert evidence.main([*common, "--parallel", "2", "--warm-cache", "--train-only"]) == 0
    runs = tmp_path / "runs"
    assert sorted(p.name for p in (runs / "warm_cache").iterdir() if p.is_dir()) == ["no_aux", "sf_mamba"]
    assert (runs / "sf_mamba_seed0.log").is_file() and (runs / "no_aux_seed0.log").is_file()  # parallel: logs
    assert not (tmp_path / "results").exists()  # train-only: no speed runs, no table

    records = []
    for variant in ("sf_mamba", "no_aux"):
        result = json.loads((runs / f"{variant}_seed0" / "results.json").read_text())
        assert result["step"] == 1
        records.append({**result, "variant": variant, "seed": 0})
    runs_file = tmp_path / "runs.json"
    runs_file.write_text(json.dumps({"runs": records}))
    docs = tmp_path / "docs"
    argv = [*common, "--from-runs", str(runs_file), "--speed-iters", "1", "--docs", str(docs), "--tag", "t"]
    assert evidence.main(argv) == 0
    (result_file,) = (tmp_path / "results").glob("fashion_mnist_evidence_*_t.json")
    rows = {r["variant"]: r for r in json.loads(result_file.read_text())["rows"]}
    assert set(rows) == {"sf_mamba", "no_aux"} and rows["no_aux"]["kwargs"]["aux_tokens"] is False
    assert rows["sf_mamba"]["top1"] == [records[0].get("ema_top1", records[0]["eval_top1"])]
    assert "no aux tokens" in (docs / "fashion_mnist_evidence_t.md").read_text()


def test_ddp_scaling_writes_one_row_per_process_count(fake_fmnist, tmp_path):
    scaling = _load("ddp_scaling")
    extra = ["--model", "test_vit", "--model-kwargs", "img_size=16", "patch_size=4", "--img-size", "16",
             "--batch-size", "4", "--no-amp", "--no-data-on-device", "--workers", "0", "-vb", "64",
             "--device", "cpu"]  # fmt: skip
    argv = ["--data-dir", str(fake_fmnist), "--nproc", "1", "--steps", "3", "--output-root", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results"), "--extra", *extra]  # fmt: skip
    assert scaling.main(argv) == 0
    (path,) = (tmp_path / "results").glob("ddp_scaling_*.json")
    (row,) = json.loads(path.read_text())["rows"]
    assert row["nproc"] == 1 and row["img_per_sec_median"] > 0 and row["speedup_vs_first"] == 1.0
