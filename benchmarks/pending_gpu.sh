#!/usr/bin/env bash
# The GPU measurements that are built and tested on CPU but not yet run on a GPU (see docs/status.md, "Next session").
# Each STEP writes into $OUT/<step>/ and is packed into ONE file, $OUT/<step>.tgz: the device runner returns only a
# handful of files per call, so run folders must not come back loose. Steps that print as they go also keep their
# whole output in $OUT/<step>/log.txt, so a call cut by its time limit still returns what ran.
#
#   bash benchmarks/pending_gpu.sh STEP [STEP ...]        (data: data/fashion-mnist, carried to the device)
#
# STEP (rough wall time on a fresh H100, autotuning included):
#   scan-tiled-S     tiled vs step scan forward (+ checkpointing forward), shape S = 0|1|2      (~3 min each)
#   scan-tiled-bwd-S tiled vs step backward, forward+backward, shape S                          (~3 min each)
#   vmeanba-model    vmamba_v2_tiny forward vs K under CUDA graphs, fast vs generic VMeanba path (~2 min)
#   vmeanba-pieces   one SS2D block per VMamba-T stage: off / generic / fast / skip, every piece timed (the cross path's
#                    channel-mean kernel: one tl.dot per tile since session 6; was 485 of 664 us at stage 1)      (~3 min)
#   vmeanba-fmnist   train vmamba_v2_tiny on Fashion-MNIST (20 epochs or 150 s, CUDA-graphed), VMeanba report vs K,
#                    K=4 + 40 % pruning                                                                         (~6 min)
#   step-overhead    host time and launches per piece of a training step                       (~1 min)
#   train-target     the default recipe end to end (94 % target; train vs bench throughput)     (~8 min)
#   train-ratio      train vs bench throughput only: bench train + 150 s of the recipe, no eval  (~4 min)
#   graph-train      CUDA-graphed training: graphed == eager check, bench train eager vs graphed for the recipe's
#                    model, the recipe with --cuda-graph (40 epochs, ~75 s) and 90 s without (train vs bench,
#                    issue #5), step-overhead with --cuda-graph                                                 (~7 min)
#   graph-train-224  bench train eager vs graphed at 224 px, bs 128, channels-last, with the official baseline
#                    (issue #3's training target; carry .bench_deps)                                            (~4 min)
#   graph-ratio      train vs bench throughput, both CUDA-graphed, the whole default recipe (~2 min)
#   ddp-graph        1 vs 2 processes with --cuda-graph --no-ddp-bb (needs nvidia-h200-x2)             (~3 min)
#   ddp              1 vs 2 processes (needs 2 GPUs: nvidia-h200-x2), with --no-ddp-bb          (~3 min)
#   models-graph     run_targets.sh setup graph with --channels-last (the fused residual+norm, issue #3 table; ~6 min)
#   compile          run_targets.sh setup compile-ours compile-baselines (carry .bench_deps; ~8 min)
#   mamba-build      mamba_ssm's selective_scan_cuda built for the baselines (carry .bench_deps; ~3 min); the .so and
#                    its BUILD_INFO.json are copied to $OUT (copy them to .bench_deps/ext/ to skip later builds)
#   scan-fwd-configs every forward config at load depths 1 and 2 (PREFETCH) and the autotuner's own pick, each timed
#                    under CUDA graphs (scan_configs.py --kernel fwd; L = 196, 198, 49; bf16/fp32)                 (~4 min)
#   scan-bwd-configs the backward's configs of before 2026-12-02 (PREFETCH 0/1, 1-2 warps) and the autotuner's pick,
#                    fwd+bwd under CUDA graphs, L2 kept and flushed (scan_configs.py --kernel bwd; L = 196, 49)     (~4 min)
#   scan-ncu         Nsight Compute stall reasons / issue rate / occupancy of every scan kernel at (128, 160, 196, 8)
#                    bf16 and fp32, and of the VMeanba SS2D kernels at VMamba-T stage 1 (scan_ncu.py; ncu from PATH
#                    or /usr/local/cuda/bin)                                                                       (~4 min)
#   scan-bdl         the drop-in layout (batch, D, L): ours (copies to channels-adjacent since session 6) vs mamba_ssm,
#                    fwd and fwd+bwd, 5 shapes, CUDA graphs (carry .bench_deps)                                  (~4 min)
#   models-fused     eval-mode BN folded into the convs + fused epilogues (bench_conv_bn.py), the whole-model fused vs
#                    plain check, and run_targets.sh graph + base with --channels-last (carry .bench_deps)      (~5 min)
#   host-overhead    host time per call and cProfile of every op (+ Triton launch floor), value checks on/off, and the
#                    eager sf_mamba_tiny host profile (benchmarks/ops/experiments/host_overhead.py)             (~2 min)
#   scan-check       every default forward config against the fp32 reference on the GPU (check_scan_fwd_configs.py:
#                    resets, chunk lengths, initial/last states, every gradient, N = 1/4/8/16, groups, fp16, sliced
#                    B/C; the first config compiles every variant)                                               (~6 min)
#   scan-rows        the backward's ROWS layout (session 17, not autotuned) vs TILES, fwd+bwd, each checked against the
#                    fp32 reference, L = 196 and 49, bf16 and fp32 (scan_configs.py --kernel bwd)                 (~4 min)
#   scan-tiles-n1    the backward's TILES 1 vs TILES 0 vs ROWS at the VMamba shape (128, 384, 3136, 1, G = 4), fwd+bwd,
#                    bf16 and fp32, each checked against the fp32 reference (scan_configs.py --kernel bwd)        (~4 min)
#   scan-vmamba-chunks the forward at the VMamba shape (128, 384, 3136, 1, G = 4): the planner's chunks (whole rows
#                    since 2026-12-05; 13 chunks of <= 256 steps before, whose summary pass re-reads u, delta and B) vs
#                    whole rows vs 4 chunks, with the 8-step ring, the L1-hinted config and the autotuner, fp32 and bf16
#                                                                                                               (~1 min)
#   scan-vmamba-spans the backward at the VMamba shape: spans of 16 chunks of 16 steps (13 per row, the planner's before
#                    session 31) vs the planner's (whole rows since session 31: 0 and 196 are the same setting) vs 4
#                    spans, fwd+bwd, TILES 1 and autotuned, bf16 and fp32 (SPANS, DTYPES), checked
#                                                                                                               (~3 min)
#   scan-fwd-deep    forward rings 8 steps deep (PREFETCH 8, UNROLL 4/8, BLOCK_D 32/64; sm_90: 168-247 registers, no
#                    spills) vs the pick, whole rows and 2 chunks per row (more warps per scheduler), L = 196 and 49,
#                    bf16 and fp32, each checked against the fp32 reference                                    (~5 min)
#   scan-fwd-split   the forward with 2 or 4 lanes per channel (SPLIT 2, a default config since session 23: 1280
#                    one-warp programs at L = 196 instead of 640, 60 instructions per warp-step instead of 86; SPLIT
#                    4, session 23: 2560 programs, 48 per warp-step, 94 registers) vs the 8-step ring, L = 196 and 49,
#                    bf16 and fp32, each checked against the fp32 reference (scan_configs.py --kernel fwd)      (~4 min)
#   scan-train-fwd   the training forward (checkpoints stored; whole unrolled checkpoint blocks since session 24) of the
#                    ring, SPLIT 2 and BD32 P4 U4, L = 196 and 49, bf16 and fp32, each checked through a TILES backward
#                    (scan_configs.py --kernel fwd --train)                                                      (~2 min)
#   scan-bwd-split   the ROWS backward with 2 or 4 lanes per channel (SPLIT, session 23: 1280 / 2560 one-warp programs
#                    at L = 196 instead of 640; sm_90, Triton 3.6, 8-step chunk: 2233 / 1784 instructions per warp
#                    against ROWS' 3529, 246 / 168 registers and no spills against 255 and 108 bytes) vs ROWS vs
#                    TILES, fwd+bwd, L = 196 and 49, bf16 and fp32, each checked against the fp32 reference
#                    (scan_configs.py --kernel bwd)
#                                                                                                               (~4 min)
#   scan-ncu-split   Nsight Compute stall reasons per issued instruction, issue use and warps per scheduler of the
#                    forward and backward at (128, 160, 196, 8), bf16 and fp32: the 8-step ring + ROWS against SPLIT +
#                    SPLIT (why bf16's forward stays at ~32.5 us with either; scan_ncu.py, ncu_summary.py)     (~3 min)
#   bc-align         MambaVision-T's stage-3 mixer with x_proj rows padded for 16-byte B/C loads (the default since
#                    session 18) vs unpadded, inference forward and training fwd+bwd, CUDA graphs (bench_bc_alignment.py)
#                                                                                                               (~2 min)
#   first-use        first use of the scan (inference forward, training fwd+bwd) in a fresh Triton cache with its configs
#                    built in 16 threads vs one after another (first_use_build.py; SFMAMBA_BUILD_THREADS)         (~5 min)
#   scan-table       issue #2's table: step forward vs mamba_ssm, fwd and fwd+bwd, 5 shapes, CUDA graphs
#                    (after mamba-build in the same call, or with a built .so in .bench_deps/ext; every config built
#                    first in 16 processes; SHAPES="0 2" for some of the shapes, DTYPES=bf16 for one dtype)    (~4 min)
#   scan-train-blocks the training forward at N = 16 (4-step checkpoints) and VMamba's N = 1, G = 4 (16-step), with
#                    checkpoint blocks only at 8 steps (CKPT_BLOCK_LENS, the default) and at 4, 8 and 16: the ring,
#                    SPLIT 2 and BD32 P4 U4, bf16 and fp32, each checked through a TILES backward              (~6 min)
#   scan-train-blocks-auto the training forward as the autotuner picks it (and BD32 P2 U4, a default config) with
#                    checkpoint blocks at 8 steps only vs at 4, 8 and 16: VMamba's (128, 384, 3136, 1, G = 4) and
#                    (128, 160, 196, 16), bf16 and fp32 (EXTRA_SHAPES, DTYPES, BUDGET_S per run)             (~5 min)
#   scan-bwd-maxnreg the backward at (128, 320, 49, 8): 1280 one-warp programs, of which 1056 fit the H100 at once with
#                    ROWS' 255 registers (8 warps per SM), all with <= 200 (10 per SM): ROWS and TILES capped at 224 / 200
#                    registers vs uncapped, fwd+bwd, bf16 and fp32, each checked (scan_configs.py --kernel bwd) (~4 min)
#   scan-folds       batch folding through fold_scan's path (2 and 4 images per row, state reset between them) vs unfolded
#                    vs mamba_ssm, fwd and fwd+bwd, CUDA graphs (the shipped H100 fold table was measured on the
#                    forward of 2026-11-22's kernel; carry .bench_deps; SHAPES="2 0" for some of the shapes)    (~5 min)
#   scan-fwd-l2      the forward walking blocks of 8 steps, each hinting L2 to pull the u/delta rows 16 or 32 steps on
#                    (L2_AHEAD, session 25; sm_90: +10 instructions per 8 steps) vs the same configs without, the
#                    ring, SPLIT 2 and BD32 P4 U4, L = 196 and 49, bf16 and fp32, each checked (scan_configs.py) (~4 min)
#   scan-bwd-hints   the backward's next-chunk L1 hints as one per tensor for the chunk (NEXT_TO_L1 2, session 25; sm_90
#                    ROWS: 3529 -> 3402 instructions, 7259 -> 6627 stall cycles per 8-step chunk) vs one per tensor
#                    and step (1, the default), ROWS and TILES, fwd+bwd, L = 196 and 49, bf16 and fp32, each checked
#                    (scan_configs.py --kernel bwd)                                                             (~4 min)
#   scan-fb-profile  every kernel of one fwd+bwd through the op and its time (torch.profiler) against the step's CUDA-graph
#                    time, (128, 160, 196, 8) and (128, 320, 49, 8), bf16 and fp32 (scan_fb_profile.py)        (~2 min)
#   scan-bwd-split-cap ROWS with 2 lanes per channel (SPLIT 2, BD16) and next-chunk hints (NEXT_TO_L1 2) under each
#                    register cap in CAPS (default "184 176 168 160"; 184 still fits 11 warps per SM, 1452 programs, one
#                    wave at L = 196; session 26 timed 168: bf16 183.0 us vs ROWS 230.1, fp32 234.4 with 28 bytes of
#                    spills vs TILES 243.1) vs ROWS and TILES (both NEXT_TO_L1 2, the defaults since session 26),
#                    fwd+bwd, SHAPES (default "0 2"), bf16 and fp32, each checked (scan_configs.py --kernel bwd) (~5 min)
#                    Session 27 (H100): 168 stays; 176-184 hold 2 warps per scheduler, not 3 (two waves), 160 spills.
#   scan-bwd-atomic  session 27's backward changes one at a time, in MODES (default "runtime-strides partials
#                    atomic"): the step strides read at run time (as before), bound at compile time (L_STRIDE, the
#                    default), and with the dB/dC sums by fp32 atomics into one block (SFMAMBA_SCAN_BC_SUM=atomic);
#                    the SPLIT (cap 168) and TILES configs, fwd+bwd, SHAPES (default "0 2"), bf16 and fp32, each
#                    checked; the partials' sum took 13 us of 183 at L = 196 bf16 (session 27)          (~9 min cold)
#   scan-fwd-strides the forward's step strides read at run time, then bound (L_STRIDE / BC_L_STRIDE; the default
#                    for 16-bit inputs, bound in fp32 too here by --bound-strides), the configs the autotuner picks at
#                    SHAPES (default "0 2"), bf16 and fp32, each checked (scan_configs.py --kernel fwd)  (~5 min cold)
#   scan-fwd-fp32-cap the fp32 forward's SPLIT 2 rings (with and without L2 hints) with strides read at run time, then
#                    bound (--bound-strides: all, then L_STRIDE and Z_L_STRIDE only: 163 registers uncapped, 386
#                    instructions, 680 stalls), each uncapped and capped at 168 registers: bound, they took 181-185
#                    registers (two warps per scheduler: L = 196's 1280 programs in two waves) and lost 37.2 -> 57.9
#                    us (session 28); sm_90 at cap 168: 149 registers, no spills, 377 instructions and 709 stall
#                    cycles per 8 steps against 398 / 746 unbound (SHAPES default "0 2")                (~3 min cold)
#   scan-bwd-keep-dt the SPLIT 2 backward (cap 168, the default pick) with and without KEEP_DT (the forward sweep keeps
#                    each step's dt: no softplus in the reverse sweep; sm_90 static, bf16, no gate: 2090 -> 2036
#                    instructions, 4217 -> 3941 stall cycles per 8-step chunk; fp32 spills 200 bytes instead of 148)
#                                                                                                       (~3 min cold)
#   scan-fwd-fp32-l2  the fp32 forward's SPLIT 2 ring with its strides bound (the default since session 29): L2 hints
#                    16, 32, 48 or 64 steps ahead, capped at 168 or 160 registers (session 29: 32 ahead, cap 168, 31.7
#                    us at L = 196; 3x needs 29.8)                                                      (~1 min cold)
#   scan-fwd-l2-short the forward's SPLIT 2 ring (cap 168) without L2 hints and with them 8, 16 or 24 steps ahead, bf16
#                    and fp32 (session 30, fp32: 16 / 32 / 48 / 64 ahead 31.3 / 31.8 / 33.0 / 34.4 us at L = 196, so
#                    the default went from 32 to 16: is 8 better still?)                              (~1 min cold)
#   scan-ncu-stalls  Nsight Compute stall reasons per issued instruction of the autotuner's current picks (forward,
#                    training forward, backward, partial sums) at SHAPES (default 0), bf16 and fp32      (~2 min)
#   scan-bwd-ckpt-ahead fwd+bwd per backward config: the default (SPLIT 2 at cap 168, KEEP_DT) without and with
#                    CKPT_AHEAD (each chunk's checkpoint loaded by the chunk after it, as its backward sweep starts:
#                    ncu put 6.7 % of the bf16 backward's samples on the checkpoint's first use; session 36 at L = 196:
#                    bf16 171.2 -> 168.4 us, fp32 192.8 -> 193.1, so it became the default); SHAPES default "0 2",
#                    DTYPES default "bfloat16 float32"                                                 (~4 min cold)
#   scan-bwd-ring2   fwd+bwd per backward config: the default against INPUT_RING 2 (each step's inputs loaded two
#                    steps ahead; session 36's ncu put ~12 % of the bf16 backward's samples on unpacks waiting for
#                    their one-step-ahead loads). sm_90, cap 168: fp32 (4-step chunks) fits, 164 registers, no
#                    spills; bf16 (8-step chunks) spills 72 bytes. SHAPES default "0 2", DTYPES default "bfloat16
#                    float32"; then bf16 with 4-step chunks (`--bwd-chunk-len 4`) too                  (~6 min cold)
#   scan-bwd-together fwd+bwd per backward config: the default (fp32: with INPUT_RING 2) against BC_TOGETHER (dC
#                    summed with dB in the backward sweep, one reduction of 8 rows: 8 shuffles a step instead of 10;
#                    sm_90, cap 168: bf16 2065 -> 1952 instructions and 4031 -> 3582 stall cycles per 8-step chunk,
#                    fp32 955 -> 908 and 1919 -> 1704 per 4-step chunk). Session 38 (H100): bf16 at L = 196 166.3
#                    against 166.4 us, a tie; fp32 and L = 49 untimed. SHAPES default "0 2", DTYPES default "float32
#                    bfloat16" (fp32 first)                                                            (~5 min cold)
#   scan-bwd-chunk4  fwd+bwd (the default backward config; fp32 also without KEEP_DT) with the checkpoint chunk at 8
#                    steps and at 4 (`--bwd-chunk-len`; the training forward walks whole 4-step blocks), for twice the
#                    checkpoints (16.4 -> 32.8 MB written and read at (128, 160, 196, 8)). Session 36 (H100): fp32
#                    225.1 -> 191.9 us at L = 196 (4 steps became fp32's default at N = 5-8), bf16 171.5 -> 183.5
#                    (kept at 8); SHAPES, DTYPES                                                         (~6 min cold)
#   scan-train-fwd-now the training forward (checkpoints stored) per config: the 8-step ring at BLOCK_D 32 against
#                    the SPLIT 2 rings capped at 168 registers, with and without L2 hints; SHAPES, DTYPES (~3 min cold)
#   scan-ncu-source  the backward's SASS instructions its warps stall on most, with the reasons (Nsight Compute's
#                    source counters; ncu_source_top.py), SHAPES (one, default 0) and DTYPES (default bfloat16) (~2 min)
#   partials-time    the backward's partial-sum launch alone (dB/dC over channel blocks, dA/dD/dbias over rows) at
#                    MambaVision-T's shapes, whole and by half, per tile size and warp count, then under ncu (~2 min)
#   scan-sweep       issue #2's time-vs-length table and PNG (bench_selective_scan.py --sweep-only): (128, 160, L, 8)
#                    for L = 49 .. 3136, ours unfolded and folded by 2 against mamba_ssm, fwd and fwd+bwd, DTYPES
#                    (default bf16; carry .bench_deps)                                                     (~5 min)
#   scan-naive       the PyTorch reference on the GPU against ours, eager timers, SHAPES (default "0 2")    (~1 min)
#   export           torch.export programs of sf_mamba_tiny, mambavision_tiny and vmamba_v2_tiny with the Triton kernels
#                    as sfmamba:: custom ops, checked against eager, eager vs program under CUDA graphs (bench_export.py)
#                                                                                                               (~3 min)
#   scan-bwd-n1      VMamba's backward at (128, 384, 3136, 1, G = 4): TILES with NEXT_TO_L1 2 or 1, ROWS (NEXT_TO_L1
#                    2) with and without BC_TOGETHER (sm_90: 3046 -> 2861 instructions, 6802 -> 6181 stall cycles
#                    per 16-step chunk), and the autotuner's pick, fwd+bwd, bf16 and fp32, each checked    (~4 min)
#   scan-fwd-stream  the hinted SPLIT 2 forward ring (cap 168, L2 16 ahead) with its streams plain (STREAM 0, the
#                    default), marked first to evict (1: u/delta/z loads and y's store; sm_90 fp32 451 instructions and
#                    802 stall cycles per 8 steps against 386 / 708) or L2-only loads and streaming stores (2: .cg/.cs,
#                    same counts); and STREAM 2 without L2 hints; bf16 and fp32                       (~1 min cold)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PY:-}" ]; then
  if [ -x /opt/torch/.venv/bin/python3 ]; then PY=/opt/torch/.venv/bin/python3; else PY=python3; fi
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # the device machines' rule
export PYTHONUNBUFFERED=1  # piped output reaches log.txt as it is printed (a call cut by its limit keeps it)
OUT="${OUT:-output/pending_gpu}"
# Triton's kernel cache travels from call to call (a cold machine spent 306 s building scan-table's configs in session
# 31). It sits at one fixed path, as Triton's cache index records absolute paths. A call restores TRITON_CACHE_TGZ
# (default .bench_deps/triton_cache.tgz, or its parts TRITON_CACHE_TGZ.part-*: carry .bench_deps) and, after each
# step, returns the whole cache as $OUT/triton_cache.tgz, split into parts of TRITON_CACHE_PART_MIB (15) where larger
# (the runner returns files of 16 MiB at most); put what came back into .bench_deps/ for the next call, and delete it
# there to build cold. A cache over 30 MiB packed is not returned (files back and the tree carried: 64 MiB at most);
# its IR texts go back empty (see save_triton_cache).
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/sfmamba_triton_cache}"
TRITON_CACHE_TGZ="${TRITON_CACHE_TGZ:-.bench_deps/triton_cache.tgz}"
DATA="${DATA:-data/fashion-mnist}"
FMNIST=(--config configs/fashion_mnist_sf_mamba.yaml --data-dir "$DATA" --no-progress)
# the default picks at MambaVision's shapes (JSON kwargs without braces): the forward's two-lane ring, the backward's
# two-lane rows
FWD_SPLIT='"BLOCK_D": 16, "SPLIT": 2, "PREFETCH": 8, "UNROLL": 8'
BWD_SPLIT='"ROWS": 1, "TILES": 0, "BLOCK_D": 16, "SPLIT": 2, "NEXT_TO_L1": 2'
# Nsight Compute metrics for `ncu --page raw` read by ncu_summary.py: time, registers, issue use, warps per scheduler,
# DRAM and L2, and the stall reasons per issued instruction
NCU_STALLS="gpu__time_duration.sum,launch__registers_per_thread,smsp__issue_active.avg.pct_of_peak_sustained_active"
NCU_STALLS="$NCU_STALLS,smsp__warps_active.avg.per_cycle_active,dram__throughput.avg.pct_of_peak_sustained_elapsed"
NCU_STALLS="$NCU_STALLS,lts__t_sector_hit_rate.pct,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"

# the forward configs given (JSON kwargs) timed alone at SHAPES (default "0 2") and DTYPES (default bf16 and fp32),
# each checked against the fp32 reference; into run_step's $dir
time_fwd_configs() {
  "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --no-autotuned --shapes ${SHAPES:-0 2} \
    --dtypes ${DTYPES:-bfloat16 float32} --chunks 0 --fwd-configs "$@" --precompile 8 --budget-s 90 \
    --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning
}

# the backward's default config at N = 8 (JSON kwargs without braces): SPLIT ROWS capped at 168 registers, KEEP_DT
# 1 (the autotuner's pruning keeps it for 16-bit inputs and for fp32's 4-step chunks) and CKPT_AHEAD 1, or the
# arguments' values (bwd_default [KEEP_DT [CKPT_AHEAD]])
bwd_default() {
  echo "$BWD_SPLIT, \"maxnreg\": 168, \"KEEP_DT\": ${1:-1}, \"CKPT_AHEAD\": ${2:-1}"
}

# fwd+bwd per backward config at SHAPES (default "0 2") for DTYPES (one argument: "bfloat16 float32" builds both
# dtypes' settings in one precompile), each checked; the rest of the arguments go to scan_configs.py (--bwd-configs
# ..., --budget-s, ...); into run_step's $dir
time_bwd_configs() {
  local dtypes=$1
  shift
  "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --no-autotuned --shapes ${SHAPES:-0 2} \
    --dtypes $dtypes --unroll 16 --out-dir "$dir" "$@" 2>&1 | tee -a "$dir/log.txt" | grep -v Warning
}

# DTYPES as bench_selective_scan.py names them (bf16, fp32, fp16), whichever way they were given (the experiments
# scripts take bfloat16 / float32)
short_dtypes() {
  echo "$DTYPES" | sed -e 's/bfloat16/bf16/g' -e 's/float32/fp32/g' -e 's/float16/fp16/g'
}

restore_triton_cache() {
  local parts=("$TRITON_CACHE_TGZ")
  [ -f "$TRITON_CACHE_TGZ" ] || parts=("$TRITON_CACHE_TGZ".part-*)
  [ -f "${parts[0]}" ] || return 0
  mkdir -p "$TRITON_CACHE_DIR"
  if cat "${parts[@]}" | tar xzf - -C "$TRITON_CACHE_DIR"; then
    echo "# triton cache: restored ${#parts[@]} file(s) into $TRITON_CACHE_DIR ($(ls "$TRITON_CACHE_DIR" | wc -l) entries)"
  else  # a file cut short would be a cache hit that fails to load: drop the whole cache
    rm -rf "$TRITON_CACHE_DIR"
    echo "# triton cache: could not restore $TRITON_CACHE_TGZ; building cold"
  fi
}

save_triton_cache() {  # after every step, so that a call cut by its limit keeps what its finished steps built; packed
  # beside $OUT and moved in whole, so that such a call returns no torn file
  [ -d "$TRITON_CACHE_DIR" ] && [ -n "$(ls -A "$TRITON_CACHE_DIR")" ] || return 0
  local tmp packed size part_bytes=$((${TRITON_CACHE_PART_MIB:-15} << 20))
  tmp=$(mktemp -d) || return 0
  packed="$tmp/triton_cache.tgz"
  # the IR texts (ttir, ttgir, llir, ptx, source, amdgcn: ~80 % of the cache) go back empty: a launch reads only the
  # binary and the metadata json, and Triton takes a group with a file missing for a miss (session 34: 32 MB whole)
  if ! cp -a "$TRITON_CACHE_DIR" "$tmp/cache" || ! find "$tmp/cache" -type f \( -name '*.ttir' -o -name '*.ttgir' \
      -o -name '*.llir' -o -name '*.ptx' -o -name '*.source' -o -name '*.amdgcn' \) -exec truncate -s 0 {} + ||
      ! tar czf "$packed" -C "$tmp/cache" .; then
    echo "# triton cache: could not pack it"
  elif size=$(stat -c %s "$packed") && [ "$size" -gt $((30 << 20)) ]; then
    echo "# triton cache: $size bytes packed, over 30 MiB: not returned (start a smaller one: delete $TRITON_CACHE_TGZ)"
  else
    if [ "$size" -gt "$part_bytes" ]; then split -b "$part_bytes" "$packed" "$packed.part-" && rm "$packed"; fi
    rm -f "$OUT"/triton_cache.tgz "$OUT"/triton_cache.tgz.part-*
    mv "$tmp"/triton_cache.tgz* "$OUT"/
  fi
  rm -rf "$tmp"
}

run_step() {
  local step=$1 dir="$OUT/$1"
  mkdir -p "$dir"
  echo "=== $step ($(date -u +%H:%M:%S))"
  case "$step" in
    scan-tiled-[012])
      "$PY" benchmarks/ops/experiments/scan_tiled_vs_step.py --shapes "${step##*-}" --train --out "$dir/result.json" ;;
    scan-tiled-bwd-[012])
      "$PY" benchmarks/ops/experiments/scan_tiled_vs_step.py --shapes "${step##*-}" --backward --dtypes bf16 \
        --out "$dir/result.json" ;;
    vmeanba-model)
      "$PY" benchmarks/ops/bench_vmeanba.py --model vmamba_v2_tiny --skip-ops --cuda-graph --ks 0 1 2 4 8 14 \
        --vmeanba-paths fast generic --output "$dir/result.json" ;;
    vmeanba-pieces)
      "$PY" benchmarks/ops/experiments/vmeanba_block_profile.py --out "$dir/vmeanba_block_profile.json" 2>&1 \
        | tee "$dir/log.txt" | tail -40 ;;
    vmeanba-fmnist)
      VM=(train "${FMNIST[@]}" --model vmamba_v2_tiny --model-kwargs --lr 1e-3 --epochs 20 --time-limit 150
          --eval-interval 0 --model-ema-decay 0.995 --output "$dir/train")
      "$PY" -m sfmamba.cli.main "${VM[@]}" --cuda-graph 2>&1 | tail -2 \
        || { rm -rf "$dir/train"; "$PY" -m sfmamba.cli.main "${VM[@]}" 2>&1 | tail -2; }
      "$PY" -m sfmamba.cli.main compress vmeanba --checkpoint "$dir/train/best.safetensors" --data "$DATA" --k 4 \
        -j 12 --output "$dir/k4.safetensors" --report "$dir/report" --amp 2>&1 | tail -25
      "$PY" -m sfmamba.cli.main compress vmeanba --checkpoint "$dir/train/best.safetensors" --data "$DATA" --k 4 \
        -j 12 --prune 0.4 --output "$dir/k4_pruned.safetensors" 2>&1 | tail -5 ;;
    step-overhead)
      "$PY" benchmarks/train/step_overhead.py --data-dir "$DATA" --results-dir "$dir" | tail -30 ;;
    train-target)
      "$PY" -m sfmamba.cli.main bench --bench train --model sf_mamba_nano:dim=64,in_dim=32 -b 256 --img-size 64 --amp \
        --amp-dtype bfloat16 --num-warm-iter 20 --num-bench-iter 100 --results-file "$dir/bench_train.json" | tail -4
      "$PY" -m sfmamba.cli.main train "${FMNIST[@]}" --output "$dir/train" --time-limit 440 | tail -3 ;;
    train-ratio)
      "$PY" -m sfmamba.cli.main bench --bench train --model sf_mamba_nano:dim=64,in_dim=32 -b 256 --img-size 64 --amp \
        --amp-dtype bfloat16 --num-warm-iter 20 --num-bench-iter 100 --results-file "$dir/bench_train.json" | tail -4
      "$PY" -m sfmamba.cli.main train "${FMNIST[@]}" --output "$dir/train" --time-limit 150 --eval-interval 0 \
        --log-interval 25 | tail -3 ;;
    graph-train)
      "$PY" benchmarks/train/check_cuda_graph_train.py 2>&1 | tee "$dir/check.txt" | tail -12
      for graph in "" --cuda-graph; do
        "$PY" -m sfmamba.cli.main bench --bench train --model sf_mamba_nano:dim=64,in_dim=32,drop_path_rate=0.1 -b 256 \
          --img-size 64 --amp --amp-dtype bfloat16 --num-warm-iter 20 --num-bench-iter 100 $graph \
          --results-file "$dir/bench_train${graph:+_graph}.json" | tail -3
      done
      "$PY" -m sfmamba.cli.main train "${FMNIST[@]}" --output "$dir/train" --time-limit 150 --eval-interval 0 \
        --log-interval 25 --cuda-graph 2>&1 | tail -2
      "$PY" -m sfmamba.cli.main train "${FMNIST[@]}" --output "$dir/train_eager" --time-limit 90 --eval-interval 0 \
        --log-interval 25 2>&1 | tail -2
      "$PY" benchmarks/train/step_overhead.py --data-dir "$DATA" --results-dir "$dir" --tag graph --set cuda_graph=true \
        2>&1 | tail -12 ;;
    graph-train-224)
      OUT="$dir" EXTRA="--channels-last" bash benchmarks/models/run_targets.sh setup train train-graph ;;
    graph-ratio)  # train vs bench, both CUDA-graphed (single GPU), the recipe's model with its drop-path
      "$PY" -m sfmamba.cli.main bench --bench train --model sf_mamba_nano:dim=64,in_dim=32,drop_path_rate=0.1 -b 256 \
        --img-size 64 --amp --amp-dtype bfloat16 --num-warm-iter 20 --num-bench-iter 200 --cuda-graph \
        --results-file "$dir/bench_train_graph.json" 2>&1 | tail -2
      "$PY" -m sfmamba.cli.main train "${FMNIST[@]}" --output "$dir/train" --eval-interval 0 --log-interval 25 \
        --cuda-graph 2>&1 | tail -2
      find "$dir/train" -name '*.png' -delete ;;
    ddp-graph)  # 1 vs 2 processes with --cuda-graph (gradients all-reduced after the graphed backward)
      "$PY" benchmarks/train/ddp_scaling.py --data-dir "$DATA" --nproc 1 2 --steps 3000 --output-root "$dir/runs" \
        --results-dir "$dir" --extra --cuda-graph --no-ddp-bb 2>&1 | tail -4
      rm -rf "$dir/runs" ;;
    ddp)
      "$PY" benchmarks/train/ddp_scaling.py --data-dir "$DATA" --nproc 1 2 --steps 1000 --output-root "$dir/runs" \
        --results-dir "$dir" --extra --no-ddp-bb | tail -4 ;;
    models-graph)
      OUT="$dir" EXTRA="--channels-last" bash benchmarks/models/run_targets.sh setup graph ;;
    compile)
      OUT="$dir" bash benchmarks/models/run_targets.sh setup compile-ours compile-baselines ;;  # setup: mamba_ssm build (carry .bench_deps)
    mamba-build)
      COPY_SO_TO="$OUT" SKIP_SMOKE=0 PY="$PY" bash .bench_deps/build_on_device.sh 2>&1 | tail -15 ;;
    scan-fwd-configs)
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --prefetch 1 2 --shapes 0 1 2 --budget-s 260 2>&1 \
        | tee "$dir/log.txt" | grep -v "^#" | tail -80
      mv benchmarks/results/scan_configs_fwd_*.json "$dir"/ ;;
    scan-bwd-configs)
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --all-configs --unroll 16 --shapes 0 2 \
        --budget-s 260 2>&1 | tee "$dir/log.txt" | grep -v "^#" | tail -40
      mv benchmarks/results/scan_configs_bwd_*.json "$dir"/ ;;
    scan-ncu)
      NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
      for run in "scan bfloat16" "scan float32" "vmeanba bfloat16"; do
        set -- $run
        "$NCU" --profile-from-start off --section SpeedOfLight --section Occupancy --section SchedulerStats \
          --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis --csv --page details \
          "$PY" benchmarks/ops/experiments/scan_ncu.py --op "$1" --dtype "$2" > "$dir/ncu_$1_$2.csv" \
          2> "$dir/ncu_$1_$2.err"
        tail -3 "$dir/ncu_$1_$2.err"; wc -l "$dir/ncu_$1_$2.csv"
      done ;;
    scan-ncu-split)
      NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
      metrics=$NCU_STALLS
      ring='{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}'
      rows='{"BLOCK_D": 32, "PREFETCH": 1, "NEXT_TO_L1": 1, "BRANCHLESS": 0, "ROWS": 1}'
      split="{$FWD_SPLIT}"
      split_rows='{"BLOCK_D": 16, "PREFETCH": 1, "NEXT_TO_L1": 1, "BRANCHLESS": 0, "ROWS": 1, "SPLIT": 2}'
      for dtype in bfloat16 float32; do
        for variant in ring split; do
          if [ "$variant" = ring ]; then fwd=$ring; bwd=$rows; else fwd=$split; bwd=$split_rows; fi
          name="ncu_${dtype}_$variant"
          "$NCU" --profile-from-start off --metrics "$metrics" --csv --page raw "$PY" \
            benchmarks/ops/experiments/scan_ncu.py --dtype "$dtype" --fwd-config "$fwd" --bwd-config "$bwd" \
            > "$dir/$name.csv" 2> "$dir/$name.err"
          echo "## $dtype $variant" | tee -a "$dir/log.txt"
          "$PY" benchmarks/ops/experiments/ncu_summary.py "$dir/$name.csv" 2>&1 | tee -a "$dir/log.txt" \
            || tail -5 "$dir/$name.err"
        done
      done ;;
    scan-bdl)
      PYTHONPATH=".bench_deps/ext:.bench_deps:$PYTHONPATH" "$PY" benchmarks/ops/bench_selective_scan.py --timers graph \
        --folds --providers sfmamba-BDL mamba_ssm --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | tail -25 ;;
    models-fused)  # the conv+BN epilogue per block, the fused-inference check, then issue #3's tiny and base tables
      "$PY" benchmarks/ops/bench_conv_bn.py --out "$dir" 2>&1 | tee "$dir/log.txt" | tail -6
      "$PY" benchmarks/models/check_fused_inference.py 2>&1 | tee -a "$dir/log.txt" | tail -4
      OUT="$dir" EXTRA="--channels-last" bash benchmarks/models/run_targets.sh setup graph base 2>&1 \
        | tee -a "$dir/log.txt" | grep -v "INFO\|Warning" | tail -20 ;;
    host-overhead)  # host cost per op call + cProfile (eager inference is host-bound), value checks on and off
      "$PY" benchmarks/ops/experiments/host_overhead.py --out "$dir/host_overhead.json" 2>&1 | tee "$dir/log.txt" \
        | head -12
      "$PY" benchmarks/ops/experiments/host_overhead.py --no-value-checks --top 5 --out "$dir/host_overhead_nochecks.json" \
        2>&1 | head -8
      "$PY" benchmarks/models/host_profile.py --model sf_mamba_tiny --out "$dir/host_profile_sf_mamba_tiny.txt" | head -3 ;;
    scan-check)
      PYTHONPATH="benchmarks/ops:$PYTHONPATH" "$PY" benchmarks/ops/check_scan_fwd_configs.py --jobs 16 ${CONFIGS:+--configs $CONFIGS} ${CASES:+--cases $CASES} --out "$dir" 2>&1 \
        | tee "$dir/log.txt" | grep -v Warning ;;
    scan-bwd-split)
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --unroll 16 --shapes 0 2 --dtypes bfloat16 float32 \
        --bwd-configs '{"TILES": 1}' '{"ROWS": 1}' '{"ROWS": 1, "TILES": 0, "BLOCK_D": 16, "SPLIT": 2}' \
        '{"ROWS": 1, "TILES": 0, "BLOCK_D": 8, "SPLIT": 4}' \
        --precompile 12 --budget-s 220 --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning ;;
    scan-rows)
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --unroll 16 --shapes 0 2 --dtypes bfloat16 float32 \
        --bwd-configs '{"TILES": 1}' '{"ROWS": 1}' --precompile 12 --budget-s 200 --out-dir "$dir" 2>&1 \
        | tee "$dir/log.txt" | grep -v Warning ;;
    scan-tiles-n1)  # does TILES 1 (or ROWS) hold at N = 1? then the [CHUNK, N, BD] path (TILES 0) can go
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --unroll 16 --shapes 4 --dtypes bfloat16 float32 \
        --bwd-configs '{"TILES": 1}' '{"TILES": 0}' '{"ROWS": 1}' --precompile 8 --budget-s 200 --out-dir "$dir" 2>&1 \
        | tee "$dir/log.txt" | grep -v Warning ;;
    scan-vmamba-chunks)  # issue #2's VMamba fp32 forward is 1.29x mamba_ssm (target 1.5x; session 12's kernels)
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --shapes 4 --dtypes float32 bfloat16 --chunks 0 1 4 \
        --fwd-configs '{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}' '{"BLOCK_D": 32, "PREFETCH": 2, "UNROLL": 4, "AHEAD": 16}' \
        --precompile 12 --budget-s 240 --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning ;;
    scan-vmamba-spans)  # VMamba's backward: 13 spans per row vs whole rows (the planner's) vs 4 spans
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --unroll 16 --shapes 4 --dtypes ${DTYPES:-float32 bfloat16} \
        --bwd-spans ${SPANS:-16 0 49} --bwd-configs '{"TILES": 1}' --precompile 6 --budget-s 200 --out-dir "$dir" 2>&1 \
        | tee "$dir/log.txt" | grep -v Warning ;;
    scan-train-fwd)
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --train --no-autotuned --shapes 0 2 \
        --dtypes bfloat16 float32 --chunks 0 --fwd-configs '{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}' \
        '{"BLOCK_D": 16, "SPLIT": 2, "PREFETCH": 8, "UNROLL": 8}' '{"BLOCK_D": 32, "PREFETCH": 4, "UNROLL": 4}' \
        --precompile 12 --budget-s 100 --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning ;;
    scan-train-fwd-now)  # the training forward per config of today's defaults: the deep ring (ncu, session 35: bf16 at
      # L = 196 picked a 246-register config at 1.22 warps per scheduler) against the SPLIT rings capped at 168
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --train --no-autotuned --shapes ${SHAPES:-0 2} \
        --dtypes ${DTYPES:-bfloat16 float32} --chunks 0 --fwd-configs '{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}' \
        "{$FWD_SPLIT, \"maxnreg\": 168}" "{$FWD_SPLIT, \"L2_AHEAD\": 16, \"maxnreg\": 168}" --precompile 6 \
        --budget-s 150 --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning ;;
    scan-fwd-split)  # sessions 22-23: 2 or 4 lanes per channel (more warps per scheduler at L = 196)
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --shapes 0 2 --dtypes bfloat16 float32 --chunks 0 \
        --fwd-configs '{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}' '{"BLOCK_D": 16, "SPLIT": 2, "PREFETCH": 8, "UNROLL": 8}' \
        '{"BLOCK_D": 8, "SPLIT": 4, "PREFETCH": 8, "UNROLL": 8}' '{"BLOCK_D": 8, "SPLIT": 4, "PREFETCH": 4, "UNROLL": 4}' \
        '{"BLOCK_D": 8, "SPLIT": 4, "PREFETCH": 16, "UNROLL": 8}' '{"BLOCK_D": 16, "SPLIT": 2, "PREFETCH": 16, "UNROLL": 8}' \
        --precompile 16 --budget-s 200 --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning ;;
    scan-fwd-deep)  # session 18: rings 8 steps deep (the tuple state left registers for them) and 2 chunks per row
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --shapes 0 2 --dtypes bfloat16 float32 --chunks 0 2 \
        --fwd-configs '{}' '{"PREFETCH": 8, "UNROLL": 8}' '{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}' \
        '{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 4}' --precompile 16 --budget-s 200 --out-dir "$dir" 2>&1 \
        | tee "$dir/log.txt" | grep -v Warning ;;
    first-use)
      "$PY" benchmarks/ops/experiments/first_use_build.py --threads 16 1 --child-timeout 200 --out "$dir" 2>&1 \
        | tee "$dir/log.txt" | grep -v Warning ;;
    bc-align)
      "$PY" benchmarks/models/bench_bc_alignment.py --out "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning ;;
    scan-train-blocks)
      for lens in "8" "4 8 16"; do
        "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --train --no-autotuned --shapes \
          --extra-shapes 128,160,196,16 128,384,3136,1,4 --dtypes bfloat16 float32 --chunks 0 \
          --fwd-configs '{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}' '{"BLOCK_D": 16, "SPLIT": 2, "PREFETCH": 8, "UNROLL": 8}' \
          '{"BLOCK_D": 32, "PREFETCH": 4, "UNROLL": 4}' --ckpt-block-lens $lens --precompile 12 --budget-s 120 \
          --out-dir "$dir" 2>&1 | tee -a "$dir/log.txt" | grep -v Warning
      done ;;
    scan-train-blocks-auto)  # what the autotuner gives the training forward with blocks at 8 steps only vs 4, 8 and 16
      for lens in "8" "4 8 16"; do
        "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --train --shapes \
          --extra-shapes ${EXTRA_SHAPES:-128,384,3136,1,4 128,160,196,16} --dtypes ${DTYPES:-bfloat16 float32} \
          --chunks 0 --fwd-configs '{"BLOCK_D": 32, "PREFETCH": 2, "UNROLL": 4}' --ckpt-block-lens $lens \
          --precompile 16 --budget-s ${BUDGET_S:-90} --out-dir "$dir" 2>&1 | tee -a "$dir/log.txt" | grep -v Warning
      done ;;
    scan-bwd-maxnreg)
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --no-autotuned --shapes 2 --dtypes bfloat16 float32 \
        --unroll 16 --bwd-configs '{"ROWS": 1}' '{"ROWS": 1, "maxnreg": 224}' '{"ROWS": 1, "maxnreg": 200}' \
        '{"TILES": 1}' '{"TILES": 1, "maxnreg": 200}' --precompile 10 --budget-s 150 --out-dir "$dir" 2>&1 \
        | tee "$dir/log.txt" | grep -v Warning ;;
    scan-folds)
      PYTHONPATH=".bench_deps/ext:.bench_deps:$PYTHONPATH" "$PY" benchmarks/ops/bench_selective_scan.py --timers graph \
        --folds 2 4 --providers sfmamba-BLD sfmamba-BLD-fold2 sfmamba-BLD-fold4 mamba_ssm --precompile 16 \
        ${SHAPES:+--shapes $SHAPES} --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning | tail -45 ;;
    scan-fwd-l2)
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --no-autotuned --shapes 0 2 --dtypes bfloat16 float32 \
        --chunks 0 --fwd-configs '{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}' \
        '{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8, "L2_AHEAD": 32}' '{"BLOCK_D": 16, "SPLIT": 2, "PREFETCH": 8, "UNROLL": 8}' \
        '{"BLOCK_D": 16, "SPLIT": 2, "PREFETCH": 8, "UNROLL": 8, "L2_AHEAD": 32}' '{"BLOCK_D": 32, "PREFETCH": 4, "UNROLL": 4}' \
        '{"BLOCK_D": 32, "PREFETCH": 4, "UNROLL": 4, "L2_AHEAD": 16}' '{"BLOCK_D": 32, "PREFETCH": 4, "UNROLL": 4, "L2_AHEAD": 32}' \
        --precompile 14 --budget-s 200 --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning ;;
    scan-bwd-hints)
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --no-autotuned --shapes 0 2 --dtypes bfloat16 float32 \
        --unroll 16 --bwd-configs '{"ROWS": 1}' '{"ROWS": 1, "NEXT_TO_L1": 2}' '{"TILES": 1}' '{"TILES": 1, "NEXT_TO_L1": 2}' \
        --precompile 14 --budget-s 200 --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning ;;
    scan-bwd-split-cap)
      capped=()
      for cap in ${CAPS:-184 176 168 160}; do capped+=("{$BWD_SPLIT, \"maxnreg\": $cap}"); done
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --no-autotuned --shapes ${SHAPES:-0 2} \
        --dtypes bfloat16 float32 --unroll 16 --bwd-configs '{"ROWS": 1, "NEXT_TO_L1": 2}' '{"TILES": 1, "NEXT_TO_L1": 2}' \
        "${capped[@]}" --precompile 14 --budget-s 300 --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning ;;
    scan-bwd-atomic)  # session 27's backward changes, same run: step strides bound, then dB/dC sums by atomics
      split="{$BWD_SPLIT, \"maxnreg\": 168}"
      for mode in ${MODES:-runtime-strides partials atomic}; do
        sum=$([ "$mode" = atomic ] && echo atomic || echo partials)
        extra=$([ "$mode" = runtime-strides ] && echo --runtime-strides)
        echo "## $mode (SFMAMBA_SCAN_BC_SUM=$sum $extra)" | tee -a "$dir/log.txt"
        SFMAMBA_SCAN_BC_SUM=$sum "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --no-autotuned \
          --shapes ${SHAPES:-0 2} --dtypes bfloat16 float32 --unroll 16 --bwd-configs "$split" \
          '{"TILES": 1, "NEXT_TO_L1": 2}' $extra --precompile 8 --budget-s 90 --out-dir "$dir/$mode" 2>&1 \
          | tee -a "$dir/log.txt" | grep -v Warning
      done ;;
    scan-fwd-strides)  # the forward's step strides read at run time, then bound (L_STRIDE), the default configs' picks
      for mode in runtime-strides bound; do
        extra=$([ "$mode" = runtime-strides ] && echo --runtime-strides || echo --bound-strides)  # (fp32 binds too)
        echo "## $mode" | tee -a "$dir/log.txt"
        "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --no-autotuned --shapes ${SHAPES:-0 2} \
          --dtypes bfloat16 float32 --chunks 0 --fwd-configs '{"BLOCK_D": 32, "PREFETCH": 8, "UNROLL": 8}' \
          "{$FWD_SPLIT}" "{$FWD_SPLIT, \"L2_AHEAD\": 32}" \
          '{"BLOCK_D": 32, "PREFETCH": 4, "UNROLL": 4}' $extra --precompile 16 --budget-s 90 --out-dir "$dir/$mode" 2>&1 \
          | tee -a "$dir/log.txt" | grep -v Warning
      done ;;
    scan-fwd-fp32-cap)  # fp32 forward, SPLIT 2 rings: run-time vs bound strides, uncapped vs capped at 168 registers
      for mode in runtime-strides bound-strides bound-strides=L_STRIDE,Z_L_STRIDE; do
        flags=$(echo "--$mode" | tr '=,' '  ')
        echo "## $mode" | tee -a "$dir/log.txt"
        "$PY" benchmarks/ops/experiments/scan_configs.py --kernel fwd --no-autotuned --shapes ${SHAPES:-0 2} \
          --dtypes float32 --chunks 0 --fwd-configs "{$FWD_SPLIT}" "{$FWD_SPLIT, \"maxnreg\": 168}" \
          "{$FWD_SPLIT, \"L2_AHEAD\": 32}" "{$FWD_SPLIT, \"L2_AHEAD\": 32, \"maxnreg\": 168}" $flags --precompile 8 \
          --budget-s 90 --out-dir "$dir/${mode//[=,]/-}" 2>&1 | tee -a "$dir/log.txt" | grep -v Warning
      done ;;
    scan-bwd-keep-dt)  # the SPLIT 2 backward (the default pick) with and without KEEP_DT, fwd+bwd per config
      split="$BWD_SPLIT, \"maxnreg\": 168"
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --no-autotuned --shapes ${SHAPES:-0 2} \
        --dtypes bfloat16 float32 --unroll 16 --bwd-configs "{$split}" "{$split, \"KEEP_DT\": 1}" --precompile 4 \
        --budget-s 300 --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning ;;
    scan-bwd-ckpt-ahead)  # fwd+bwd, the default backward config with and without CKPT_AHEAD, both dtypes in one build
      time_bwd_configs "${DTYPES:-bfloat16 float32}" --bwd-configs "{$(bwd_default 1 0)}" "{$(bwd_default)}" \
        --precompile 8 --budget-s 240 ;;
    scan-bwd-ring2)  # fwd+bwd, the default backward config with and without INPUT_RING 2, both dtypes in one build
      time_bwd_configs "${DTYPES:-bfloat16 float32}" --bwd-configs "{$(bwd_default)}" \
        "{$(bwd_default), \"INPUT_RING\": 2}" --precompile 8 --budget-s 240
      # bf16 with fp32's 4-step chunks: the two-step ring fits its registers there
      [[ "${DTYPES:-bfloat16}" == *bfloat16* ]] && time_bwd_configs bfloat16 --bwd-chunk-len 4 \
        --bwd-configs "{$(bwd_default)}" "{$(bwd_default), \"INPUT_RING\": 2}" --precompile 4 --budget-s 120 ;;
    scan-bwd-together)  # fwd+bwd, the default backward config (fp32: with INPUT_RING 2) with and without BC_TOGETHER
      local together='"BC_TOGETHER": 1' ring='"INPUT_RING": 2'
      [[ "${DTYPES:-float32 bfloat16}" == *float32* ]] && time_bwd_configs float32 \
        --bwd-configs "{$(bwd_default), $ring}" "{$(bwd_default), $ring, $together}" --precompile 4 --budget-s 100
      [[ "${DTYPES:-float32 bfloat16}" == *bfloat16* ]] && time_bwd_configs bfloat16 \
        --bwd-configs "{$(bwd_default)}" "{$(bwd_default), $together}" --precompile 4 --budget-s 100 ;;
    scan-bwd-chunk4)  # fwd+bwd, the default backward config, checkpoints every 8 steps and every 4
      for dtype in ${DTYPES:-bfloat16 float32}; do
        configs=("{$(bwd_default)}")
        # fp32 also without KEEP_DT: it spilled at 8-step chunks (200 bytes) but not at 4 (sm_90: 154 registers)
        [ "$dtype" = float32 ] && configs+=("{$(bwd_default 0 1)}")
        for len in 8 4; do
          time_bwd_configs "$dtype" --bwd-configs "${configs[@]}" --bwd-chunk-len "$len" --precompile 2 --budget-s 120
        done
      done ;;
    scan-fwd-fp32-l2)  # fp32 forward, SPLIT 2 ring, bound strides: L2 hints 16-64 steps ahead, capped at 168 or 160
      configs=()
      for cap in 168 160; do
        for ahead in 16 32 48 64; do configs+=("{$FWD_SPLIT, \"L2_AHEAD\": $ahead, \"maxnreg\": $cap}"); done
      done
      DTYPES=float32 time_fwd_configs "${configs[@]}" ;;
    scan-fwd-l2-short)  # the SPLIT 2 forward ring at cap 168: no L2 hints, hints 8, 16 or 24 steps ahead
      configs=("{$FWD_SPLIT, \"maxnreg\": 168}")
      for ahead in 8 16 24; do configs+=("{$FWD_SPLIT, \"L2_AHEAD\": $ahead, \"maxnreg\": 168}"); done
      time_fwd_configs "${configs[@]}" ;;
    scan-fwd-stream)  # the hinted SPLIT 2 forward (cap 168, L2 16) with u/delta/z and y streamed (STREAM 1, 2) or not
      configs=()
      for stream in 0 1 2; do configs+=("{$FWD_SPLIT, \"L2_AHEAD\": 16, \"STREAM\": $stream, \"maxnreg\": 168}"); done
      configs+=("{$FWD_SPLIT, \"STREAM\": 2, \"maxnreg\": 168}")
      time_fwd_configs "${configs[@]}" ;;
    partials-time)  # the backward's partial-sum launch alone (13-14 us of a 173-225 us fwd+bwd at L = 196)
      "$PY" benchmarks/ops/experiments/partials_time.py --tiles 4096 2048 1024 --warps 4 8 \
        --out "$dir/partials_time.json" 2>&1 | tee "$dir/log.txt" | grep -v Warning
      NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
      "$NCU" --kernel-name partials_kernel --metrics "$NCU_STALLS" --csv --page raw "$PY" \
        benchmarks/ops/experiments/partials_time.py --ncu --tiles 4096 1024 > "$dir/ncu.csv" 2> "$dir/ncu.err"
      "$PY" benchmarks/ops/experiments/ncu_summary.py "$dir/ncu.csv" 2>&1 | tee -a "$dir/log.txt" \
        || tail -5 "$dir/ncu.err" ;;
    scan-ncu-stalls)  # the autotuner's current picks at SHAPES (default 0), bf16 and fp32: stalls per issue
      NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
      for shape in ${SHAPES:-0}; do
        for dtype in bfloat16 float32; do
          name="ncu_${shape}_$dtype"
          "$NCU" --profile-from-start off --metrics "$NCU_STALLS" --csv --page raw "$PY" \
            benchmarks/ops/experiments/scan_ncu.py --shape "$shape" --dtype "$dtype" > "$dir/$name.csv" 2> "$dir/$name.err"
          echo "## shape $shape $dtype" | tee -a "$dir/log.txt"
          "$PY" benchmarks/ops/experiments/ncu_summary.py "$dir/$name.csv" 2>&1 | tee -a "$dir/log.txt" \
            || tail -5 "$dir/$name.err"
        done
      done ;;
    scan-ncu-source)  # which instructions the backward's warps stall on (the first of SHAPES, default 0; DTYPES default
      # bfloat16)
      NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
      shape=${SHAPES:-0}
      shape=${shape%% *}
      for dtype in ${DTYPES:-bfloat16}; do
        rep="$dir/bwd_$dtype"
        "$NCU" --profile-from-start off --kernel-name regex:selective_scan_bwd --launch-count 1 \
          --section SourceCounters --section WarpStateStats -f -o "$rep" "$PY" benchmarks/ops/experiments/scan_ncu.py \
          --shape "$shape" --dtype "$dtype" > "$rep.log" 2>&1
        tail -3 "$rep.log"
        "$NCU" --import "$rep.ncu-rep" --page source --csv --print-source sass > "${rep}_sass.csv" 2>> "$rep.log"
        echo "## $dtype" | tee -a "$dir/log.txt"
        "$PY" benchmarks/ops/experiments/ncu_source_top.py "${rep}_sass.csv" --top 45 2>&1 | tee -a "$dir/log.txt" \
          || { head -c 600 "${rep}_sass.csv"; tail -5 "$rep.log"; }
        rm -f "$rep.ncu-rep"
      done ;;
    scan-fb-profile)
      "$PY" benchmarks/ops/experiments/scan_fb_profile.py --shapes ${SHAPES:-0 2} --out "$dir/scan_fb_profile.json" 2>&1 | tee "$dir/log.txt" \
        | grep -v Warning ;;
    scan-table)
      PYTHONPATH=".bench_deps/ext:.bench_deps:$PYTHONPATH" "$PY" benchmarks/ops/bench_selective_scan.py --timers graph \
        --folds --providers sfmamba-BLD mamba_ssm --precompile 16 ${SHAPES:+--shapes $SHAPES} ${DTYPES:+--dtypes $(short_dtypes)} --out-dir "$dir" 2>&1 \
        | tee "$dir/log.txt" | grep -v Warning | tail -45 ;;
    scan-sweep)  # issue #2's time-vs-length plot: L = 49 .. 3136 at (128, 160, L, 8), fwd and fwd+bwd, folds 1 and 2
      PYTHONPATH=".bench_deps/ext:.bench_deps:$PYTHONPATH" "$PY" benchmarks/ops/bench_selective_scan.py --timers graph \
        --sweep-only --folds 2 --providers sfmamba-BLD sfmamba-BLD-fold2 mamba_ssm --precompile 16 \
        --dtypes $(DTYPES=${DTYPES:-bf16} short_dtypes) --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning | tail -45 ;;
    scan-naive)  # the PyTorch reference on the GPU (eager: a loop of L steps) against ours, eager too
      "$PY" benchmarks/ops/bench_selective_scan.py --timers eager --folds --providers sfmamba-BLD naive-torch \
        --shapes ${SHAPES:-0 2} ${DTYPES:+--dtypes $(short_dtypes)} --out-dir "$dir" 2>&1 | tee "$dir/log.txt" \
        | grep -v Warning | tail -20 ;;
    scan-bwd-n1)  # VMamba's backward (N = 1): TILES vs ROWS, the next chunk's L1 hints as one instruction per tensor
      # (NEXT_TO_L1 2, the default configs') or one per row (1), and the autotuner's pick; fwd+bwd, checked
      "$PY" benchmarks/ops/experiments/scan_configs.py --kernel bwd --unroll 16 --shapes 4 \
        --dtypes ${DTYPES:-bfloat16 float32} --bwd-configs '{"TILES": 1, "NEXT_TO_L1": 2}' \
        '{"ROWS": 1, "NEXT_TO_L1": 2}' '{"ROWS": 1, "NEXT_TO_L1": 2, "BC_TOGETHER": 1}' '{"TILES": 1}' \
        --precompile 10 --budget-s 240 \
        --out-dir "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning ;;
    export)
      "$PY" benchmarks/models/bench_export.py --out "$dir" 2>&1 | tee "$dir/log.txt" | grep -v Warning | tail -12 ;;
    *) echo "unknown step $step"; return 2 ;;
  esac
  find "$dir" \( -name '*.safetensors' -o -name '*.pt' \) -delete  # weights stay on the device
  tar czf "$OUT/$step.tgz" -C "$OUT" "$step" && rm -rf "$dir"
  save_triton_cache
}

restore_triton_cache
for step in "$@"; do run_step "$step"; done
