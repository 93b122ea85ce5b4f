"""Static cost of the scan kernels' step loops, without a GPU: build each kernel for sm_90 with Triton's own
toolchain, disassemble the cubin, and count the SASS instructions of every loop (a backward branch), per step and per
channel-step, with registers and spills from ptxas, and the loop's stall cycles: the fixed stalls ptxas scheduled
after its instructions, i.e. the fewest cycles one warp alone on a scheduler takes per iteration before any wait on a
load, MUFU or shuffle result (sm_90, Triton 3.6: the 8-step ring forward 1199 cycles for 688 instructions, the ROWS
backward 7259 for 3529 per 8-step chunk; at the 1-2 warps per scheduler these grids leave, fewer stalls are time).

What it is good for: instructions per channel-step bound a kernel's time from below (warp-instructions / (4
schedulers x 132 SMs) clocks), checkable on any machine. What it is not: a predictor of time. On an H200 (2026-12-02)
the step forward at (128, 160, 196, 8) bf16 issued only ~37 % of the time (3.1 + ~3.2 per channel-step at its picked
BLOCK_D 128 = 24 us of instructions in 65 us: latency-bound), and a kernel with the same count per channel-step
(the deleted lanes forward) was 1.5x slower. Two rules learned there: compare kernels at the configs the autotuner
picks (BLOCK_D 128, not 32, for the step forward), and build with the GPU machine's Triton (3.6 there): Triton 3.8
laid the lanes kernel's state tile out differently (no shuffles) than 3.6 did (96 shuffles per step). A Triton 3.6
environment for this: `python -m venv /tmp/t36 && /tmp/t36/bin/pip install torch==2.14.1 && /tmp/t36/bin/pip install
--no-deps triton==3.6.0 timm torchvision==0.29.1 pillow numpy einops safetensors pyyaml huggingface_hub`. It says nothing
about memory latency or occupancy (registers bound the resident warps: 65536 / (32 x registers) per SM). The layout
is BLD with its unit strides bound to 1, as Triton specialises integer arguments equal to 1 at launch (the GPU also
specialises arguments divisible by 16, which this build does not: register and spill counts can differ).

    python benchmarks/ops/experiments/sass_loop_counts.py [--gpu-like] [--only NAME ...] [--names NAME ...]
        [--out benchmarks/results/sass_loop_counts_<date>.json]

Prints one row per (kernel, flags, config) and innermost loop (a kernel whose chunk loop is fully unrolled, the
backward's main pass, counts all its instructions over its CHUNK steps, prologue included); writes JSON (Triton
version, date, rows). `--only NAME ...` keeps the cases whose name contains one of the words, `--names NAME ...` the
cases of exactly these names.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # a real build, not the interpreter
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "src"))

import triton  # noqa: E402

from sfmamba.ops.selective_scan import chunk  # noqa: E402
from sfmamba.testing import compile_for_sm90, jit_function, scan_pointer_type  # noqa: E402

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"  # Triton's bundled ptxas / cuobjdump
SEQUENCE_ARGS = {
    "u_ptr",
    "delta_ptr",
    "z_ptr",
    "out_ptr",
    "dout_ptr",
    "du_ptr",
    "ddelta_ptr",
    "dz_ptr",
    "B_ptr",
    "C_ptr",
}
UNIT_STRIDES = ("su_d", "sdt_d", "sz_d", "so_d", "sdo_d", "sg_d", "sB_n", "sC_n")  # channel / state strides in BLD
# --gpu-like: what a launch at MambaVision-T's (128, 160, 196, 8) BLD marks divisible by 16 (every pointer, batch and
# L * D strides, channels); with it the build's layouts, shuffles and shared-memory conversions match the GPU's own
# (session 14: the step backward's SHFL/BAR/FFMA counts equalled ncu's SASS listing of the H200 build)
GPU_DIVISIBLE = ("su_b", "su_l", "sdt_b", "sdt_l", "sz_b", "sz_l", "so_b", "so_l", "sdo_b", "sdo_l", "sg_b", "sg_l",
                 "sB_b", "sB_g", "sC_b", "sC_g", "Dg", "batch")  # fmt: skip
INFERENCE = dict(HAS_D=True, HAS_Z=False, HAS_BIAS=True, SOFTPLUS=True, HAS_H0=False, RESET=0)
# (name, kernel, flags, num_warps, channels one program's step covers): MambaVision-T's scan, N = 8, bf16
CASES = [
    ("step fwd", chunk.selective_scan_fwd_kernel,
     dict(INFERENCE, STORE_LAST=False, STORE_CKPT=False, SUMMARY=False, BLOCK_D=32, BLOCK_N=8, PREFETCH=1), 1, 32),
    ("step fwd summary", chunk.selective_scan_fwd_kernel,
     dict(INFERENCE, STORE_LAST=False, STORE_CKPT=False, SUMMARY=True, BLOCK_D=32, BLOCK_N=8, PREFETCH=1), 1, 32),
    ("step fwd train", chunk.selective_scan_fwd_kernel,
     dict(INFERENCE, STORE_LAST=False, STORE_CKPT=True, SUMMARY=False, BLOCK_D=32, BLOCK_N=8, PREFETCH=1,
          ckpt_len=8), 1, 32),
    *[(f"step fwd{' summary' if summary else ''} P2 BD{bd}", chunk.selective_scan_fwd_kernel,  # two steps ahead
       dict(INFERENCE, STORE_LAST=False, STORE_CKPT=False, SUMMARY=summary, BLOCK_D=bd, BLOCK_N=8, PREFETCH=2), 1, bd)
      for summary in (False, True) for bd in (32, 128)],
    ("step fwd BD128", chunk.selective_scan_fwd_kernel,  # the H200's pick at (128, 160, 196, 8) bf16
     dict(INFERENCE, STORE_LAST=False, STORE_CKPT=False, SUMMARY=False, BLOCK_D=128, BLOCK_N=8, PREFETCH=1), 1, 128),
    *[(f"step fwd{' vec' if vec else ''} BD{bd} P{p} U4", chunk.selective_scan_fwd_kernel,  # session 12-17 picks
       dict(INFERENCE, STORE_LAST=False, STORE_CKPT=False, SUMMARY=False, BLOCK_D=bd, BLOCK_N=8, PREFETCH=p, UNROLL=4,
            VECTOR_BC=vec), 1, bd) for vec in (0, 1) for bd in (32, 64) for p in (2, 4)],  # vec: B_t/C_t by 16 bytes
    *[(f"step fwd vec BD{bd} P4 U4 A16", chunk.selective_scan_fwd_kernel,  # + L1 hints 16 steps ahead
       dict(INFERENCE, STORE_LAST=False, STORE_CKPT=False, SUMMARY=False, BLOCK_D=bd, BLOCK_N=8, PREFETCH=4, UNROLL=4,
            VECTOR_BC=1, AHEAD=16), 1, bd) for bd in (32, 64)],
    *[(f"step fwd vec BD{bd} P8 U{u}", chunk.selective_scan_fwd_kernel,  # session 18: deeper rings with the tuple state
       dict(INFERENCE, STORE_LAST=False, STORE_CKPT=False, SUMMARY=False, BLOCK_D=bd, BLOCK_N=8, PREFETCH=8, UNROLL=u,
            VECTOR_BC=1), 1, bd) for bd, u in ((32, 8), (64, 4))],  # (BD32 P8 U4 spills with Triton 3.8; BD64 P8 U8
    # too since the loads walk their pointers, session 22: 256 bytes with Triton 3.8, none with 3.6; not autotuned)
    *[(f"step fwd vec split BD16 P{p} U{u}", chunk.selective_scan_fwd_kernel,  # session 22: 2 lanes per channel
       dict(INFERENCE, STORE_LAST=False, STORE_CKPT=False, SUMMARY=False, BLOCK_D=16, BLOCK_N=8, PREFETCH=p, UNROLL=u,
            VECTOR_BC=1, SPLIT=2), 1, 16) for p, u in ((4, 4), (8, 8), (8, 4), (16, 8))],  # (each lane: 4 of 8 states)
    ("step fwd vec split4 BD8 P8 U8", chunk.selective_scan_fwd_kernel,  # session 23: 4 lanes per channel (2 states)
     dict(INFERENCE, STORE_LAST=False, STORE_CKPT=False, SUMMARY=False, BLOCK_D=8, BLOCK_N=8, PREFETCH=8, UNROLL=8,
          VECTOR_BC=1, SPLIT=4), 1, 8),
    *[(f"step fwd vec BD{bd} P{p} U{p} L2A{ahead}{' split' if split > 1 else ''}", chunk.selective_scan_fwd_kernel,
       # session 25: blocks of 8 steps, each hinting L2 to pull the rows `ahead` steps on (one instruction a tensor)
       dict(INFERENCE, STORE_LAST=False, STORE_CKPT=False, SUMMARY=False, BLOCK_D=bd, BLOCK_N=8, PREFETCH=p, UNROLL=p,
            VECTOR_BC=1, SPLIT=split, L2_AHEAD=ahead), 1, bd)
      for bd, split, p, ahead in ((32, 1, 4, 16), (32, 1, 4, 32), (32, 1, 8, 32), (16, 2, 8, 32))],
    ("step fwd vec train BD32 P2 U4", chunk.selective_scan_fwd_kernel,
     dict(INFERENCE, STORE_LAST=False, STORE_CKPT=True, SUMMARY=False, BLOCK_D=32, BLOCK_N=8, PREFETCH=2, UNROLL=4,
          VECTOR_BC=1, ckpt_len=8), 1, 32),
    *[(f"step fwd vec train{' blocks' if blocks else ''} BD{bd} P8 U8{' split' if split > 1 else ''}",
       chunk.selective_scan_fwd_kernel,  # session 24: checkpoints after whole unrolled blocks (ckpt_len 8 as at N = 8)
       dict(INFERENCE, STORE_LAST=False, STORE_CKPT=True, SUMMARY=False, BLOCK_D=bd, BLOCK_N=8, PREFETCH=8, UNROLL=8,
            VECTOR_BC=1, SPLIT=split, ckpt_len=8, CKPT_BLOCKS=blocks), 1, bd)
      for blocks in (0, 1) for bd, split in ((32, 1), (16, 2))],
    ("step bwd", chunk.selective_scan_bwd_kernel,
     dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=8, BLOCK_D=32, BLOCK_N=8, PREFETCH=1, UNROLL=8), 1, 32),
    ("step bwd branchless", chunk.selective_scan_bwd_kernel,  # session 13: no branch per step, hints to L1
     dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=8, BLOCK_D=32, BLOCK_N=8, PREFETCH=1, UNROLL=8,
          NEXT_TO_L1=1, BRANCHLESS=1), 1, 32),
    ("step bwd BD64", chunk.selective_scan_bwd_kernel,  # the H200's pick at (128, 160, 196, 8) bf16 (2 channels/thread)
     dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=8, BLOCK_D=64, BLOCK_N=8, PREFETCH=1, UNROLL=8), 1, 64),
    ("step bwd tiles", chunk.selective_scan_bwd_kernel,  # session 14's default: the chunk's states as a tuple of tiles
     dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=8, BLOCK_D=32, BLOCK_N=8, PREFETCH=1, UNROLL=8,
          NEXT_TO_L1=1, TILES=1), 1, 32),
    *[(f"step bwd rows{' vec' if vec else ''}", chunk.selective_scan_bwd_kernel,  # session 17: tuples of N rows,
       dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=8, BLOCK_D=32, BLOCK_N=8, PREFETCH=1, UNROLL=8,
            NEXT_TO_L1=1, ROWS=1, VECTOR_BC=vec), 1, 32) for vec in (0, 1)],  # dB/dC by transposing shuffles
    *[(f"step bwd rows vec{' split BD16' if split > 1 else ''} chunk hints", chunk.selective_scan_bwd_kernel,
       # session 25: the next chunk's L1 hints, one per tensor for the chunk (NEXT_TO_L1 2), not one per step
       dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=8, BLOCK_D=32 // split, BLOCK_N=8, PREFETCH=1, UNROLL=8,
            NEXT_TO_L1=2, ROWS=1, VECTOR_BC=1, SPLIT=split), 1, 32 // split) for split in (1, 2)],
    ("step bwd rows vec split BD16", chunk.selective_scan_bwd_kernel,  # session 23: 2 lanes per channel (4 states each)
     dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=8, BLOCK_D=16, BLOCK_N=8, PREFETCH=1, UNROLL=8,
          NEXT_TO_L1=1, ROWS=1, VECTOR_BC=1, SPLIT=2), 1, 16),
    ("step bwd rows vec split4 BD8", chunk.selective_scan_bwd_kernel,  # 4 lanes per channel (2 states each)
     dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=8, BLOCK_D=8, BLOCK_N=8, PREFETCH=1, UNROLL=8,
          NEXT_TO_L1=1, ROWS=1, VECTOR_BC=1, SPLIT=4), 1, 8),
    ("step bwd tiles chunk hints", chunk.selective_scan_bwd_kernel,  # session 25: NEXT_TO_L1 2 in the TILES layout
     dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=8, BLOCK_D=32, BLOCK_N=8, PREFETCH=1, UNROLL=8,
          NEXT_TO_L1=2, TILES=1), 1, 32),
    *[(f"step bwd BD{bd}", chunk.selective_scan_bwd_kernel,  # session 14: lanes on N too (fewer shuffles, more warps)
       dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=8, BLOCK_D=bd, BLOCK_N=8, PREFETCH=1, UNROLL=8,
            NEXT_TO_L1=1), 1, bd) for bd in (8, 16)],
    *[(f"step bwd tiles BD{bd}", chunk.selective_scan_bwd_kernel,  # session 15: more programs, fewer registers
       dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=8, BLOCK_D=bd, BLOCK_N=8, PREFETCH=1, UNROLL=8,
            NEXT_TO_L1=1, TILES=1), 1, bd) for bd in (8, 16)],
    ("step bwd summary", chunk.selective_scan_bwd_kernel,
     dict(INFERENCE, HAS_DLAST=False, SUMMARY=True, CHUNK=8, BLOCK_D=32, BLOCK_N=8, PREFETCH=1, UNROLL=8), 1, 32),
    ("step bwd N1", chunk.selective_scan_bwd_kernel,  # VMamba's N = 1 (chunks of 16 steps)
     dict(INFERENCE, HAS_DLAST=False, SUMMARY=False, CHUNK=16, BLOCK_D=32, BLOCK_N=1, PREFETCH=1, UNROLL=16), 1, 32),
]  # fmt: skip


def registers_and_spills(ptx: str) -> tuple[int, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        arch = "sm_90a" if ".target sm_90a" in ptx else "sm_90"
        report = subprocess.run([TOOLS / "ptxas", f"-arch={arch}", "-v", f.name, "-o", os.devnull],
                                capture_output=True, text=True).stderr  # fmt: skip
    regs = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    return int(regs.group(1)) if regs else -1, int(spills.group(1)) if spills else -1


def stall_cycles(control: int) -> int:
    """The fixed stall ptxas set after an instruction (cycles before the same warp may issue its next one), from
    the high 64-bit word of its 128-bit sm_70+ encoding (bits 105-108 of the instruction). Waits on variable-latency
    results (loads, MUFU, shuffles) are scoreboard waits, not counted here."""
    return (control >> 41) & 0xF


def loops(cubin: bytes) -> tuple[int, int, list[tuple[int, int, collections.Counter]]]:
    """(all instructions, their stall cycles, [(instructions, stall cycles, opcode counts) of every innermost loop]):
    a loop is the instructions between a backward branch and its target; its stall cycles, the fixed stalls ptxas
    scheduled in it (`stall_cycles`), are the fewest cycles one warp alone on its scheduler takes per iteration."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([TOOLS / "cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    code = []
    lines = sass.splitlines()
    for line, control_line in zip(lines, lines[1:]):
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*?);", line)
        control = re.match(r"\s*/\* 0x([0-9a-f]{16}) \*/", control_line)
        if m and control:
            code.append((int(m.group(1), 16), m.group(2), stall_cycles(int(control.group(1), 16))))
    spans = []
    for address, text, _ in code:
        m = re.search(r"BRA (?:`\(.*?\) )?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < address:
            spans.append((int(m.group(1), 16), address))
    found = []
    for start, end in spans:
        if any(start <= s and e <= end and (s, e) != (start, end) for s, e in spans):
            continue  # an outer loop (e.g. the runs between checkpoints): its step loop is counted on its own
        body = [(t, stall) for a, t, stall in code if start <= a <= end]
        ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t, _ in body)
        found.append((len(body), sum(stall for _, stall in body), ops))
    return len(code), sum(stall for _, _, stall in code), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"sass_loop_counts_{stamp}.json")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32", "fp16"])
    parser.add_argument("--only", nargs="*", default=None, help="only the cases whose name contains one of these")
    parser.add_argument("--names", nargs="*", default=None, help="only the cases of exactly these names")
    parser.add_argument("--gpu-like", action="store_true", help="mark what a GPU launch marks divisible by 16")
    parser.add_argument(
        "--bound-strides",
        action="store_true",
        help="bind the step strides as the launchers do for MambaVision's mixer (D = 160, N = 8, dout 2 D apart)",
    )
    parser.add_argument("--maxnreg", type=int, default=None, help="cap every build at this many registers")
    parser.add_argument("--extra", default="{}", help="JSON constexprs added to every case, e.g. '{\"L2_AHEAD\": 32}'")
    args = parser.parse_args()
    unknown = sorted(set(args.names or ()) - {case[0] for case in CASES})
    if unknown:
        parser.error(f"--names: no case is named {unknown}; the cases are {[case[0] for case in CASES]}")
    extra_flags = json.loads(args.extra)
    rows = []
    print(f"{'kernel':26s} {'regs':>4s} {'spill':>5s} {'loop instr':>10s} {'stalls':>6s} {'channels':>8s} "
          f"{'instr/channel-step':>18s} {'convs':>5s}")  # fmt: skip
    for name, kernel, flags, num_warps, channels in CASES:
        if args.only is not None and not any(part in name for part in args.only):
            continue
        if args.names is not None and name not in args.names:
            continue
        # the BLD layout's unit strides, as Triton specialises integer arguments equal to 1 at launch
        unit = {name: 1 for name in UNIT_STRIDES if name in jit_function(kernel).arg_names}
        names = jit_function(kernel).arg_names
        strides = {"L_STRIDE": 160, "BC_L_STRIDE": 8, "Z_L_STRIDE": 160, "DOUT_L_STRIDE": 320}  # dout: a concat's view
        bound = {k: v for k, v in strides.items() if k in names} if args.bound_strides else {}
        divisible = [n for n in names if n.endswith("_ptr") or n in GPU_DIVISIBLE] if args.gpu_like else []
        extra = {k: v for k, v in extra_flags.items() if k in names}
        compiled = compile_for_sm90(kernel, {**flags, **extra, **unit, **bound}, num_warps,
                                    scan_pointer_type(args.dtype), divisible, maxnreg=args.maxnreg)  # fmt: skip
        conversions = compiled.asm["ttgir"].count("ttg.convert_layout")
        regs, spills = registers_and_spills(compiled.asm["ptx"])
        total, total_stalls, found = loops(compiled.asm["cubin"])
        if not found and "CHUNK" in flags:  # a fully unrolled chunk: the whole kernel over its CHUNK steps
            found = [(total / flags["CHUNK"], total_stalls / flags["CHUNK"], collections.Counter())]
        for index, (size, stalls, ops) in enumerate(found):
            # a forward step loop unrolled UNROLL times compiles to the unrolled loop, then a one-step remainder loop
            steps = flags.get("UNROLL", 1) if "CHUNK" not in flags and len(found) > 1 and index == 0 else 1
            per_channel = size / steps / channels
            top = dict(ops.most_common(int(os.environ.get("TOPN", 8))))
            rows.append(dict(kernel=name, flags=flags, num_warps=num_warps, channels_per_step=channels,
                             steps_per_loop=steps, registers=regs, spill_bytes=spills, kernel_instructions=total, loop_instructions=size,
                             loop_stall_cycles=stalls, instructions_per_channel_step=per_channel, layout_conversions=conversions,
                             top_opcodes=top))  # fmt: skip
            counts = (
                f"{regs:4d} {spills:5d} {size:10.0f} {stalls:6.0f} {channels:8d} {per_channel:18.2f} {conversions:5d}"
            )
            print(f"{name:26s} {counts}  {top}")
    meta = dict(date=stamp, triton=triton.__version__, target="sm_90 (Triton's ptxas, no GPU)", dtype=args.dtype,
                maxnreg=args.maxnreg, extra=extra_flags,
                gpu_like=args.gpu_like)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
