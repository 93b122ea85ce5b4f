"""The GPU scan tools' work splitting (benchmarks/ops/): every config and case reaches exactly one process."""

from __future__ import annotations

import importlib
import itertools
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import triton

BENCH_OPS = Path(__file__).resolve().parents[2] / "benchmarks" / "ops"


@pytest.fixture
def bench_module(monkeypatch):
    def load(name: str):
        monkeypatch.syspath_prepend(str(BENCH_OPS))
        monkeypatch.setenv("SFMAMBA_VALUE_CHECKS", "1")  # bench_selective_scan sets a default at import
        return importlib.import_module(name)

    yield load
    for name in ("check_scan_fwd_configs", "bench_selective_scan", "scan_configs"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(("configs", "cases", "jobs"), [(12, 16, 16), (12, 6, 16), (13, 2, 4), (3, 5, 2), (2, 1, 8)])
def test_check_shares_cover_every_pair_once(bench_module, configs, cases, jobs):
    deal_shares = bench_module("check_scan_fwd_configs").deal_shares
    config_ids, case_ids = list(range(configs)), list(range(100, 100 + cases))
    shares = deal_shares(config_ids, case_ids, jobs)
    pairs = [pair for share_configs, share_cases in shares for pair in itertools.product(share_configs, share_cases)]
    assert sorted(pairs) == sorted(itertools.product(config_ids, case_ids))
    assert len(shares) <= jobs
    if jobs > cases:  # the spare processes split each case's configs
        assert len(shares) == cases * min(jobs // cases, configs)


def test_precompile_shares_cover_every_config(bench_module, monkeypatch):
    bench = bench_module("bench_selective_scan")
    from sfmamba.ops.selective_scan import chunk

    fwd, bwd = chunk.selective_scan_fwd_kernel, chunk.selective_scan_bwd_kernel
    fwd_all = [triton.Config({"BLOCK_D": 32, "PREFETCH": p}, num_warps=1) for p in range(5)]
    bwd_all = [triton.Config({"BLOCK_D": 32, "ROWS": r}, num_warps=1) for r in range(3)]
    seen_fwd, seen_bwd = [], []
    for share in range(4):
        monkeypatch.setattr(fwd, "configs", fwd_all)
        monkeypatch.setattr(bwd, "configs", bwd_all)
        bench.force_config_share(share, 4)
        seen_fwd += fwd.configs
        seen_bwd += bwd.configs
        assert fwd.configs and bwd.configs  # every process has something to build
    # a share of one config gets another, so that the autotuner prunes (it prunes no list of one: a lone SPLIT config
    # would be built at N = 1); the fourth backward share rebuilds the first config
    assert seen_fwd == [fwd_all[i] for i in (0, 4, 1, 0, 2, 0, 3, 0)]
    assert seen_bwd == [bwd_all[i] for i in (0, 1, 1, 0, 2, 0, 0, 1)]


@pytest.mark.parametrize("no_autotuned", [False, True])
def test_scan_configs_times_the_autotuner_unless_told_not_to(bench_module, monkeypatch, no_autotuned):
    monkeypatch.syspath_prepend(str(BENCH_OPS / "experiments"))
    scan_configs = bench_module("scan_configs")
    texts = ['{"BLOCK_D": 16, "SPLIT": 2}', '{"PREFETCH": 8, "UNROLL": 8}']
    args = SimpleNamespace(kernel="fwd", fwd_configs=texts, no_autotuned=no_autotuned)
    settings = scan_configs.settings(args)
    labels = [label for label, _, _ in settings]
    forced = [configs[0].kwargs for label, _, configs in settings if label != "autotuned"]
    split = {"BLOCK_D": 16, "PREFETCH": 4, "UNROLL": 4, "SPLIT": 2}  # over the defaults BD64 P4 U4
    assert forced == [split, {"BLOCK_D": 64, "PREFETCH": 8, "UNROLL": 8}]
    assert labels.count("autotuned") == (0 if no_autotuned else 1)


def test_scan_configs_skips_split_configs_that_cannot_build(bench_module, monkeypatch, capsys):
    """A forced SPLIT config needs N >= SPLIT (a state row per lane): at N = 1 it is skipped, with a note from the
    parent process, instead of failing its precompiling child; the autotuned setting and unsplit configs stay."""
    monkeypatch.syspath_prepend(str(BENCH_OPS / "experiments"))
    scan_configs = bench_module("scan_configs")
    texts = ['{"BLOCK_D": 16, "SPLIT": 2}', '{"PREFETCH": 8, "UNROLL": 8}']
    settings = scan_configs.settings(SimpleNamespace(kernel="fwd", fwd_configs=texts, no_autotuned=False))
    vmamba, mambavision = scan_configs.Shape(128, 384, 3136, 1, 4), scan_configs.Shape(128, 160, 196, 8)
    kept = [s[0] for s in settings if scan_configs.builds(vmamba, s)]
    assert len(kept) == 2 and "SPLIT" not in kept[0] and kept[1] == "autotuned"
    assert all(scan_configs.builds(mambavision, s) for s in settings)
    # main() prints the skipped setting (stopped at the first check: the timings need a GPU)
    monkeypatch.setattr(scan_configs, "check", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
    argv = ["scan_configs.py", "--kernel", "fwd", "--shapes", "--extra-shapes", "128,384,3136,1,4", "--dtypes",
            "float32", "--fwd-configs", *texts, "--out-dir", str(scan_configs.HERE)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(KeyboardInterrupt):
        scan_configs.main()
    assert "# skipped at B128-D384-L3136-N1-G4 float32: " in capsys.readouterr().out


def test_scan_configs_train_needs_the_forward_kernel(bench_module, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH_OPS / "experiments"))
    scan_configs = bench_module("scan_configs")
    monkeypatch.setattr(sys, "argv", ["scan_configs.py", "--kernel", "bwd", "--train"])
    with pytest.raises(SystemExit) as exit_info:
        scan_configs.main()
    assert exit_info.value.code == 2
    assert "--train times the training forward: it needs --kernel fwd, got --kernel bwd" in capsys.readouterr().err


def test_scan_configs_sets_the_checkpoint_block_lengths(bench_module, monkeypatch):
    """`--ckpt-block-lens 4 16` replaces chunk.CKPT_BLOCK_LENS before any setting is built (stopped there: the
    timings need a GPU)."""
    monkeypatch.syspath_prepend(str(BENCH_OPS / "experiments"))
    scan_configs = bench_module("scan_configs")
    monkeypatch.setattr(scan_configs.K, "CKPT_BLOCK_LENS", scan_configs.K.CKPT_BLOCK_LENS)  # restored afterwards
    seen = []

    def stop(args):
        seen.append(scan_configs.K.CKPT_BLOCK_LENS)
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_configs, "settings", stop)
    argv = ["scan_configs.py", "--kernel", "fwd", "--train", "--shapes", "0", "--ckpt-block-lens", "4", "16"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(KeyboardInterrupt):
        scan_configs.main()
    assert seen == [(4, 16)]


def test_scan_configs_forces_the_checkpoint_chunk(bench_module, monkeypatch):
    """`--bwd-chunk-len 4` sets chunk.forced_bwd_chunk (what bwd_chunk_for returns at any N) and adds 4 to the
    lengths the training forward walks in whole blocks, before any setting is built."""
    monkeypatch.syspath_prepend(str(BENCH_OPS / "experiments"))
    scan_configs = bench_module("scan_configs")
    monkeypatch.setattr(scan_configs.K, "CKPT_BLOCK_LENS", (8, 16))  # restored afterwards
    monkeypatch.setattr(scan_configs.K, "forced_bwd_chunk", None)
    seen = []

    def stop(args):
        chunk_at = scan_configs.K.bwd_chunk_for
        seen.append((chunk_at(8, torch.bfloat16), chunk_at(1, torch.float32), scan_configs.K.CKPT_BLOCK_LENS))
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_configs, "settings", stop)
    monkeypatch.setattr(sys, "argv", ["scan_configs.py", "--kernel", "bwd", "--shapes", "0", "--bwd-chunk-len", "4"])
    with pytest.raises(KeyboardInterrupt):
        scan_configs.main()
    assert seen == [(4, 4, (4, 8, 16))]


ALL_STRIDES = ("L_STRIDE", "BC_L_STRIDE", "Z_L_STRIDE", "DOUT_L_STRIDE")


@pytest.mark.parametrize(
    "flag, bind, fp32_bound",
    [
        ([], True, ALL_STRIDES),
        (["--runtime-strides"], False, ALL_STRIDES),
        (["--bound-strides"], True, ALL_STRIDES),
        (["--bound-strides", "L_STRIDE", "Z_L_STRIDE"], True, ("L_STRIDE", "Z_L_STRIDE")),
    ],
)
def test_scan_configs_stride_binding_flags(bench_module, monkeypatch, flag, bind, fp32_bound):
    """`--runtime-strides` reads every step stride at run time; `--bound-strides [NAME ...]` binds the fp32 forward's
    (all, or only those named; the launchers' default binds all of them in every dtype); set before any setting
    is built."""
    monkeypatch.syspath_prepend(str(BENCH_OPS / "experiments"))
    scan_configs = bench_module("scan_configs")
    for name in ("BIND_STEP_STRIDES", "FWD_BOUND_STRIDES"):  # restored afterwards
        monkeypatch.setattr(scan_configs.K, name, getattr(scan_configs.K, name))
    seen = []

    def stop(args):
        bound = scan_configs.K.FWD_BOUND_STRIDES
        seen.append((scan_configs.K.BIND_STEP_STRIDES, bound[torch.float32], bound[torch.bfloat16]))
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_configs, "settings", stop)
    monkeypatch.setattr(sys, "argv", ["scan_configs.py", "--kernel", "fwd", "--shapes", "0", *flag])
    with pytest.raises(KeyboardInterrupt):
        scan_configs.main()
    assert seen == [(bind, fp32_bound, ALL_STRIDES)]


def experiment_module(name: str):
    """A module of benchmarks/ops/experiments (which import each other by name)."""
    sys.path.insert(0, str(BENCH_OPS / "experiments"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


_REASONS = ("long_scoreboard", "math_pipe_throttle", "wait")
_STALLS = [f"smsp__average_warps_issue_stalled_{r}_per_issue_active.ratio" for r in _REASONS]
_HEADER = ["ID", "Kernel Name", "gpu__time_duration.sum", "launch__registers_per_thread",
           "smsp__issue_active.avg.pct_of_peak_sustained_active", *_STALLS]  # fmt: skip
NCU_RAW = "\n".join([
    "==PROF== Connected to process 1234",
    ",".join(f'"{name}"' for name in _HEADER),
    '"","","usecond","register/thread","%","ratio","ratio","ratio"',
    '"0","selective_scan_fwd_kernel","32.80","156","41.5","0.45","2.10","1,234.5"',
    '"1","selective_scan_bwd_kernel","210.00","246","27.0","3.00","0.10","0.50"',
    "==PROF== Disconnected from process 1234",
])  # fmt: skip


def test_ncu_summary_ranks_stall_reasons():
    """ncu_summary.py reads ncu's raw CSV page (header, units, one row per launch; ncu's own lines skipped) and lists
    each launch's time, registers and issue use with its largest stall reasons first."""
    summary = experiment_module("ncu_summary")
    lines = summary.summarise(NCU_RAW, top=2)
    assert lines[0].startswith("selective_scan_fwd_kernel: time 32.80 usecond, issue % 41.5 %")
    assert "regs 156 register/thread" in lines[0]
    assert lines[1] == "    stalls per issue: wait 1234.50, math_pipe_throttle 2.10"
    assert lines[3] == "    stalls per issue: long_scoreboard 3.00, wait 0.50"
    with pytest.raises(ValueError, match="at least one launch"):
        summary.summarise(NCU_RAW.splitlines()[1] + "\n", top=2)


NCU_SOURCE = "\n".join([  # ncu 2025's layout (session 36's H100): a kernel line before the header
    "==PROF== Connected to process 1234",
    '"Kernel Name","selective_scan_bwd_kernel",',
    '"Address","Source","Warp Stall Sampling (All Samples)","stall_long_sb","stall_wait","Warp Stall Sampling (Not'
    '-issued Samples)","stall_wait (Not Issued)"',
    '"0x10","@!P0 LDG.E.128 R4, desc[UR4][R2.64]","600","550","50","590","900"',
    '"0x20","FFMA R1, R2, R3, R4","300","0","300","200","900"',
    '"0x30","SHFL.BFLY PT, R5, R6, 0x1, 0x1f","100","0","1,000","90","900"',
])  # fmt: skip


def test_ncu_source_top_ranks_instructions_and_opcodes():
    """ncu_source_top.py reads ncu's source page (SASS rows; ncu's own lines and the kernel line skipped) and lists
    the most sampled instructions first with their largest stall reasons (not the not-issued columns), then the
    samples per opcode without predicates or modifiers."""
    source_top = experiment_module("ncu_source_top")
    lines = source_top.summarise(NCU_SOURCE, top=2)
    assert lines[0] == "# 3 instructions, 1000 samples; reasons: ['long_sb', 'wait']"
    assert lines[1].split()[:3] == ["60.0%", "0x10", "@!P0"] and lines[1].endswith("long_sb 550, wait 50")
    assert lines[2].split()[:2] == ["30.0%", "0x20"] and lines[2].endswith("wait 300")
    assert lines[3] == "# samples per opcode"
    assert lines[4:] == [" 60.0%  LDG", " 30.0%  FFMA", " 10.0%  SHFL"]
    with pytest.raises(ValueError, match="no instruction rows"):
        source_top.summarise("\n".join(NCU_SOURCE.splitlines()[1:3]) + "\n", top=2)
