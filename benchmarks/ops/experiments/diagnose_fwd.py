"""Diagnose the forward kernel: fixed configs, registers/spills, time, and TTGIR/PTX dumps to $OUT."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import scan_layouts as S  # noqa: E402

from sfmamba.ops.selective_scan import chunk as K  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp"))


def main() -> None:
    b, d, l, n = 128, 160, 196, 8
    for dtype in (torch.float32, torch.bfloat16):
        for layout in ("BDL", "BLD"):
            u, delta, A, B, C, D, bias = S.inputs(b, d, l, n, dtype, layout)
            out = torch.empty_like(u)
            ref = torch.empty_like(u)
            kw = dict(NSTATE=n, BLOCK_L=1, BLOCK_D=16, SPLIT_N=1, UNROLL=1, STAGES=1, num_warps=1)
            seq_args = (u, delta, A, B, C, D, bias, ref, l, d, *S.strides(u, layout), *S.bc_strides(B, layout))
            S.fwd_seq[(triton.cdiv(d, 16), b)](*seq_args, **kw)
            ms = triton.testing.do_bench(lambda: S.fwd_seq[(triton.cdiv(d, 16), b)](*seq_args, **kw), warmup=10, rep=30)
            print(f"{dtype} {layout} experiment seq BD16 w1: {ms * 1e3:.1f} us")
            for chunk_len in (l, 49, 25):
                nchunks = triton.cdiv(l, chunk_len)
                P = torch.empty(b, nchunks, d, n, device="cuda")
                Sx = torch.empty_like(P)
                args = (
                    u,
                    delta,
                    A,
                    B,
                    C,
                    D,
                    u,
                    bias,
                    u,
                    u,
                    u,
                    out,
                    u,
                    u,
                    P,
                    Sx,
                    l,
                    d,
                    n,
                    l,
                    chunk_len,
                    nchunks,
                    8,
                    *K._x_strides(u, layout),
                    *K._x_strides(delta, layout),
                    *K._x_strides(u, layout),
                    *K._x_strides(out, layout),
                    *K._bc_strides(B, layout),
                    *K._bc_strides(C, layout),
                )
                for bd, w, unroll in ((32, 1, 1), (32, 1, 4), (64, 2, 1), (16, 1, 1)):
                    flags = dict(
                        HAS_D=True,
                        HAS_Z=False,
                        HAS_BIAS=True,
                        SOFTPLUS=True,
                        HAS_H0=False,
                        RESET=0,
                        STORE_LAST=False,
                        STORE_CKPT=False,
                        BLOCK_D=bd,
                        UNROLL=unroll,
                        num_warps=w,
                    )
                    grid = (triton.cdiv(d, bd), nchunks, b)
                    kern = K.selective_scan_fwd_kernel.fn  # skip the autotuner

                    def call():
                        if nchunks > 1:
                            kern[grid](*args, **flags, SUMMARY=True)
                        return kern[grid](*args, **flags, SUMMARY=False)

                    k = call()
                    err = (out.float() - ref.float()).abs().max().item()
                    ms = triton.testing.do_bench(call, warmup=10, rep=30)
                    print(
                        f"  v1 chunk={chunk_len} BD={bd} w={w} unroll={unroll}: {ms * 1e3:.1f} us regs={k.n_regs} spills={k.n_spills} maxdiff={err:.1e}"
                    )
                    if chunk_len == l and (bd, w, unroll) == (32, 1, 1) and layout == "BLD":
                        (OUT / f"v1_{str(dtype)[6:]}.ttgir").write_text(k.asm["ttgir"])
                        (OUT / f"v1_{str(dtype)[6:]}.ptx").write_text(k.asm["ptx"])


if __name__ == "__main__":
    main()
