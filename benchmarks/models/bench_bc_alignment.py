"""B/C row alignment in the mixers: MambaVision-T's stage-3 mixer (d_model 320, N 8, dt_rank 20, bs 128 x 196 tokens,
bf16 autocast) with x_proj's rows padded so that the scan reads B_t/C_t by 16-byte loads (`dt_pad` 4, the default on
the GPU) against the unpadded rows (`dt_pad` 0: scalar loads), inference forward and training forward+backward.

Checks the padded mixer against the unpadded one first, then times each with `triton.testing.do_bench_cudagraph`
(median over `--repeats` runs, with their min and max). Writes JSON to benchmarks/results/ and a table to stdout.

    python benchmarks/models/bench_bc_alignment.py [--batch 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks" / "ops"))

from bench_conv_bn import environment  # noqa: E402

from sfmamba.layers import MambaVisionMixer  # noqa: E402
from sfmamba.testing import relative_error  # noqa: E402


def step(mixer: MambaVisionMixer, x: torch.Tensor, train: bool):
    leaves = [x, *mixer.parameters()]

    def run() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = mixer(x)
        if train:  # autograd.grad, not .backward(): accumulating into .grad under a capture fails (session 28)
            torch.autograd.grad(out.float().square().mean(), leaves, allow_unused=True)
        return out

    return run


def timed_us(run, repeats: int) -> dict:
    import triton.testing

    run()
    run()  # compiles and autotunes outside the capture
    times = [triton.testing.do_bench_cudagraph(run, return_mode="median") * 1e3 for _ in range(repeats)]
    return dict(median=statistics.median(times), min=min(times), max=max(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_bc_alignment.py times CUDA graphs: it needs a GPU")
    torch.manual_seed(0)
    mixer = MambaVisionMixer(320, d_state=8, d_conv=3, expand=1).cuda()
    padded = mixer.dt_pad
    x = torch.randn(args.batch, 196, 320, device="cuda", requires_grad=True)
    rows = []
    for mode, train in (("forward", False), ("fwd+bwd", True)):
        outputs, times = {}, {}
        for pad in (padded, 0):
            mixer.dt_pad = pad
            print(f"# {mode}, dt_pad {pad}: building and tuning the kernels", flush=True)  # minutes on a fresh host
            with torch.set_grad_enabled(train):
                # detached: a kept graph keeps x's gradient node, bound to the default stream, which the capture's
                # backward would then wait on (cudaErrorStreamCaptureImplicit, sessions 28-29)
                outputs[pad] = step(mixer, x, train)().float().detach()
                times[pad] = timed_us(step(mixer, x, train), args.repeats)
            print(f"# {mode}, dt_pad {pad}: {times[pad]['median']:.1f} us", flush=True)
        error = relative_error(outputs[0], outputs[padded])
        rows.append(dict(mode=mode, dt_pad=padded, padded_us=times[padded], unpadded_us=times[0], rel_error=error,
                         speedup=times[0]["median"] / times[padded]["median"]))  # fmt: skip
    mixer.dt_pad = padded
    print(
        "| mode | dt_pad 4 (us) [min, max] | dt_pad 0 (us) [min, max] | speed-up | rel. error |\n|---|---|---|---|---|"
    )
    for r in rows:
        a, b = r["padded_us"], r["unpadded_us"]
        print(f"| {r['mode']} | {a['median']:.1f} [{a['min']:.1f}, {a['max']:.1f}] | {b['median']:.1f} "
              f"[{b['min']:.1f}, {b['max']:.1f}] | {r['speedup']:.3f}x | {r['rel_error']:.1e} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"bc_alignment_{stamp}.json"
    settings = dict(batch=args.batch, tokens=196, d_model=320, d_state=8, dtype="bf16 autocast", repeats=args.repeats,
                    timer="do_bench_cudagraph median per repeat")  # fmt: skip
    path.write_text(json.dumps(dict(environment=environment(), settings=settings, rows=rows), indent=1))
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
