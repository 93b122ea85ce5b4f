"""`sfmamba tune` on the CPU with tiny shapes: the table it writes, the planner reading it, and argument errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sfmamba.cli import tune
from sfmamba.cli.main import COMMANDS, main
from sfmamba.ops.selective_scan.fold import plan_fold, user_table_path

CPU = torch.device("cpu")
FAST = ["--device", "cpu", "--warmup-ms", "0", "--rep-ms", "1"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFMAMBA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def entries(path) -> dict:
    data = json.loads(path.read_text())
    return {(e["dtype"], e["batch"], e["length"], e["dim"], e["d_state"]): e for e in data["devices"]["cpu"]["entries"]}


def test_tune_records_the_choice_that_plan_fold_returns(cache, capsys):
    assert main(["tune", *FAST, "--shapes", "4,8,16,2", "--candidates", "1", "2", "4", "--dtype", "fp32"]) == 0
    assert os.listdir(cache) == ["fold_table.json"]  # written atomically: no temp file left behind
    recorded = entries(user_table_path())[("float32", 4, 16, 8, 2)]
    assert set(recorded["us"]) == {"1", "2", "4"} and all(t > 0 for t in recorded["us"].values())
    assert plan_fold(4, 8, 16, 2, torch.float32, CPU) == recorded["fold"]
    out = capsys.readouterr().out
    assert "device: cpu" in out and "f=4 us" in out and "4,8,16,2" in out and "fp32" in out


def test_tune_merges_and_the_planner_follows(cache, monkeypatch):
    monkeypatch.setattr(tune, "time_candidates", lambda shape, dtype, args: {1: 100.0, 2: 50.0, 4: 70.0})
    assert main(["tune", *FAST, "--shapes", "4,8,16,2", "--dtype", "fp32", "bf16"]) == 0
    monkeypatch.setattr(tune, "time_candidates", lambda shape, dtype, args: {1: 100.0, 2: 99.0})
    assert main(["tune", *FAST, "--shapes", "2,8,32,2", "--dtype", "fp32"]) == 0  # 1 % gain < --min-gain
    table = entries(cache / "fold_table.json")
    assert len(table) == 3  # the second run kept the first one's entries
    assert plan_fold(4, 8, 16, 2, torch.float32, CPU) == 2
    assert plan_fold(4, 8, 16, 2, torch.bfloat16, CPU) == 2
    assert plan_fold(6, 8, 16, 2, torch.float32, CPU) == 2  # nearest batch 4
    assert plan_fold(2, 8, 32, 2, torch.float32, CPU) == 1
    assert os.listdir(cache) == ["fold_table.json"]


def test_tune_fwdbwd_bdl_grouped_to_explicit_output(tmp_path, cache, capsys):
    out = tmp_path / "elsewhere.json"
    args = ["tune", *FAST, "--shapes", "4,8,8,2,2", "--candidates", "2", "--mode", "fwdbwd", "--layout", "BDL"]
    assert main([*args, "--dtype", "bf16", "--output", str(out)]) == 0
    recorded = entries(out)[("bfloat16", 4, 8, 8, 2)]
    assert set(recorded["us"]) == {"1", "2"}  # f=1 is always timed as the baseline
    assert recorded["groups"] == 2 and recorded["mode"] == "fwdbwd" and recorded["layout"] == "BDL"
    assert not cache.exists()


def test_dry_run_writes_nothing(cache, capsys):
    assert main(["tune", *FAST, "--shapes", "2,4,4,1", "--candidates", "1", "2", "--dtype", "fp32", "--dry-run"]) == 0
    assert "2,4,4,1" in capsys.readouterr().out
    assert not cache.exists()


def test_choose_fold():
    assert tune.choose_fold({1: 100.0, 2: 50.0, 4: 60.0}, 0.03) == 2
    assert tune.choose_fold({1: 100.0, 2: 98.0}, 0.03) == 1
    assert tune.choose_fold({1: 100.0, 2: "wrong", 4: "oom"}, 0.0) == 1
    assert tune.choose_fold({1: "oom", 2: 10.0}, 0.03) == 2


def test_default_shapes():
    shapes = {str(s) for s in tune.DEFAULT_SHAPES}
    assert {"128,160,196,8", "128,320,49,8", "128,160,198,8", "128,320,51,8", "128,384,3136,1,4"} <= shapes


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shapes", "4,8"], "must be B,D,L,N"),
        (["--shapes", "4,8,x,2"], "only integers"),
        (["--shapes", "4,0,16,2"], "positive"),
        (["--shapes", "4,6,8,1,4"], "G must divide"),
        (["--dtype", "int8"], "dtype 'int8'"),
        (["--candidates", "0"], "not a positive integer"),
        (["--rep-ms", "-1"], "not a non-negative number"),
        (["--mode", "bwd"], "invalid choice"),
    ],
    ids=["too-few", "not-int", "zero", "groups", "dtype", "candidate", "rep-ms", "mode"],
)
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_corrupt_table_is_a_usage_error_and_kept(cache, capsys):
    cache.mkdir()
    (cache / "fold_table.json").write_text("{broken")
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *FAST, "--shapes", "2,4,4,1", "--candidates", "1", "--dtype", "fp32"])
    assert exit_info.value.code == 2
    assert "cannot update fold table" in capsys.readouterr().err
    assert (cache / "fold_table.json").read_text() == "{broken"


def test_cuda_request_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        main(["tune", "--device", "cuda", "--shapes", "2,4,4,1"])
    assert "no CUDA device" in capsys.readouterr().err


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
