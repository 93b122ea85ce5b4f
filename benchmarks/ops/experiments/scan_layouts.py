"""Experiment: which tile layout makes Triton's in-chunk scan fast? (forward only, no resets)

Variant "3d": the shipped v0 kernel (tile [BL, BD, N], associative_scan over axis 0).
Variant "2d": state index unrolled (static loop over N), tiles [BD, BL], associative_scan over the last axis.
Variant "seq": plain sequential loop over t with [BD, N] state (SPEC's starting point).
Prints registers/spills and median time per config.  python benchmarks/ops/experiments/scan_layouts.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))
from sfmamba.ops.selective_scan import selective_scan_naive  # noqa: E402
from sfmamba.testing import relative_error  # noqa: E402

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, b1 * a2 + b2


@triton.jit
def fwd_2d(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, out_ptr, L, Dg,
           su_b, su_l, su_d, sB_b, sB_n, sB_l,
           NSTATE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT_N: tl.constexpr):  # fmt: skip
    pid_d, pid_b = tl.program_id(0), tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < Dg
    cols = tl.arange(0, BLOCK_L)
    offs_n = tl.arange(0, NSTATE)
    Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    H = tl.zeros([BLOCK_D, NSTATE], dtype=tl.float32)
    u_ptr += pid_b * su_b
    dt_ptr += pid_b * su_b
    out_ptr += pid_b * su_b
    B_ptr += pid_b * sB_b
    C_ptr += pid_b * sB_b
    for c in range(tl.cdiv(L, BLOCK_L)):
        t = c * BLOCK_L + cols
        mask_t = t < L
        m = mask_d[:, None] & mask_t[None, :]
        offs = offs_d[:, None] * su_d + t[None, :] * su_l
        x = tl.load(u_ptr + offs, mask=m, other=0.0).to(tl.float32)  # [BD, BL]
        dt = tl.load(dt_ptr + offs, mask=m, other=0.0).to(tl.float32) + bias[:, None]
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
        dtx = dt * x
        y = x * Dv[:, None]
        H_new = tl.zeros([BLOCK_D, NSTATE], dtype=tl.float32)
        for n in tl.static_range(NSTATE):
            a_n = tl.load(A_ptr + offs_d * NSTATE + n, mask=mask_d, other=0.0) * LOG2E
            Bn = tl.load(B_ptr + n * sB_n + t * sB_l, mask=mask_t, other=0.0).to(tl.float32)
            Cn = tl.load(C_ptr + n * sB_n + t * sB_l, mask=mask_t, other=0.0).to(tl.float32)
            da = tl.exp2(dt * a_n[:, None])
            da = tl.where(mask_t[None, :], da, 1.0)
            db = dtx * Bn[None, :]
            acc_a, acc_b = tl.associative_scan((da, db), axis=1, combine_fn=_combine)
            h_prev = tl.sum(tl.where(offs_n[None, :] == n, H, 0.0), axis=1)
            h = acc_b + acc_a * h_prev[:, None]
            y += h * Cn[None, :]
            h_last = tl.sum(tl.where(cols[None, :] == BLOCK_L - 1, h, 0.0), axis=1)
            H_new = tl.where(offs_n[None, :] == n, h_last[:, None], H_new)
        H = H_new
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def fwd_seq(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, out_ptr, L, Dg,
            su_b, su_l, su_d, sB_b, sB_n, sB_l,
            NSTATE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT_N: tl.constexpr,
            UNROLL: tl.constexpr = 1, STAGES: tl.constexpr = 1):  # fmt: skip
    pid_d, pid_b = tl.program_id(0), tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < Dg
    offs_n = tl.arange(0, NSTATE)
    A2 = tl.load(A_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=mask_d[:, None], other=0.0) * LOG2E
    Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    h = tl.zeros([BLOCK_D, NSTATE], dtype=tl.float32)
    u_ptr += pid_b * su_b
    dt_ptr += pid_b * su_b
    out_ptr += pid_b * su_b
    B_ptr += pid_b * sB_b
    C_ptr += pid_b * sB_b
    for t in tl.range(0, L, num_stages=STAGES, loop_unroll_factor=UNROLL):
        x = tl.load(u_ptr + offs_d * su_d + t * su_l, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + offs_d * su_d + t * su_l, mask=mask_d, other=0.0).to(tl.float32) + bias
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
        Bt = tl.load(B_ptr + offs_n * sB_n + t * sB_l).to(tl.float32)
        Ct = tl.load(C_ptr + offs_n * sB_n + t * sB_l).to(tl.float32)
        h = tl.exp2(dt[:, None] * A2) * h + (dt * x)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1) + Dv * x
        tl.store(out_ptr + offs_d * su_d + t * su_l, y.to(out_ptr.dtype.element_ty), mask=mask_d)


def inputs(b, d, l, n, dtype, layout):
    seq = (b, d, l) if layout == "BDL" else (b, l, d)
    bc = (b, n, l) if layout == "BDL" else (b, l, n)
    u = torch.randn(*seq, device="cuda").to(dtype)
    delta = (torch.randn(*seq, device="cuda") * 0.5 - 2).to(dtype)
    A = -torch.exp(torch.randn(d, n, device="cuda") * 0.5)
    B = torch.randn(*bc, device="cuda").to(dtype)
    C = torch.randn(*bc, device="cuda").to(dtype)
    D = torch.randn(d, device="cuda")
    bias = torch.randn(d, device="cuda") * 0.1
    return u, delta, A, B, C, D, bias


def strides(x, layout):
    return (x.stride(0), x.stride(2), x.stride(1)) if layout == "BDL" else (x.stride(0), x.stride(1), x.stride(2))


def bc_strides(x, layout):
    return (x.stride(0), x.stride(1), x.stride(2)) if layout == "BDL" else (x.stride(0), x.stride(2), x.stride(1))


def main():
    cases = [
        ((128, 160, 196, 8), "BDL"),
        ((128, 160, 196, 8), "BLD"),
        ((128, 320, 49, 8), "BDL"),
        ((128, 320, 49, 8), "BLD"),
        ((128, 384, 3136, 1), "BLD"),
    ]
    for (b, d, l, n), layout in cases:
        dtype = torch.bfloat16
        u, delta, A, B, C, D, bias = inputs(b, d, l, n, dtype, layout)
        ref = selective_scan_naive(u[:8], delta[:8], A, B[:8], C[:8], D, None, bias, True, layout=layout).float()
        out = torch.empty_like(u)
        results = []
        for unroll, stages in ((1, 1), (8, 1), (16, 1), (8, 3)):
            for bd in (4, 8, 16) if n > 1 else (32, 64, 128):
                for w in (1, 2):
                    if bd * n < 32 * w:
                        continue
                    grid = (triton.cdiv(d, bd), b)
                    args = (u, delta, A, B, C, D, bias, out, l, d, *strides(u, layout), *bc_strides(B, layout))
                    kw = dict(NSTATE=n, BLOCK_L=1, BLOCK_D=bd, SPLIT_N=1, UNROLL=unroll, STAGES=stages, num_warps=w)
                    try:
                        k = fwd_seq[grid](*args, **kw)
                    except Exception as e:  # noqa: BLE001
                        print("failed", unroll, stages, bd, w, type(e).__name__, str(e)[:300])
                        continue
                    err = relative_error(ref, out[:8].float())
                    ms = triton.testing.do_bench(lambda: fwd_seq[grid](*args, **kw), warmup=10, rep=30)
                    results.append((ms * 1e3, unroll, stages, bd, w, k.n_regs, k.n_spills, err))
        results.sort()
        print(f"== B{b} D{d} L{l} N{n} {dtype} {layout}", flush=True)
        for r in results[:8]:
            print(
                "  {:8.1f} us  unroll={:<2d} stages={} BD={:<3d} w={} regs={} spills={} err={:.1e}".format(*r),
                flush=True,
            )


if __name__ == "__main__":
    main()
