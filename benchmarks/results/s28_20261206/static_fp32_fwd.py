"""Session 28: sm_90 registers, instructions and stall cycles of the fp32 forward's SPLIT 2 ring (gpu-like build,
Triton 3.6) with its step strides read at run time or bound (all, B/C only, L/Z only), uncapped or capped at 168
registers, with and without L2 hints. Output: static_fp32_fwd.log.

    PYTHONPATH=src /tmp/t36/bin/python benchmarks/results/s28_20261206/static_fp32_fwd.py

(a Triton 3.6 venv: see benchmarks/ops/experiments/sass_loop_counts.py's docstring)
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks" / "ops" / "experiments"))
sys.path.insert(0, str(ROOT / "src"))

import sass_loop_counts as S  # noqa: E402

from sfmamba.testing import compile_for_sm90, jit_function  # noqa: E402

BINDINGS = ({}, {"L_STRIDE": 160, "BC_L_STRIDE": 8, "Z_L_STRIDE": 160}, {"BC_L_STRIDE": 8},
            {"L_STRIDE": 160, "Z_L_STRIDE": 160})  # fmt: skip


def main() -> None:
    _, kernel, flags, num_warps, _ = next(c for c in S.CASES if c[0] == "step fwd vec split BD16 P8 U8")
    names = jit_function(kernel).arg_names
    unit = {n: 1 for n in S.UNIT_STRIDES if n in names}
    divisible = [n for n in names if n.endswith("_ptr") or n in S.GPU_DIVISIBLE]
    for extra in ({}, {"L2_AHEAD": 32}):
        for bound in BINDINGS:
            for cap in (None, 168):
                constexprs = {**flags, **extra, **unit, **bound}
                compiled = compile_for_sm90(kernel, constexprs, num_warps, S.scan_pointer_type("fp32"), divisible,
                                            maxnreg=cap)  # fmt: skip
                regs, spills = S.registers_and_spills(compiled.asm["ptx"])
                size, stalls, _ = S.loops(compiled.asm["cubin"])[2][0]
                print(extra, sorted(bound), cap, "regs", regs, "spill", spills, "loop", size, "stalls", stalls)


if __name__ == "__main__":
    main()
