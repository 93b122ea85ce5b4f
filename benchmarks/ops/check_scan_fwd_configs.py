"""GPU check of every default config of the step scan forward (`chunk._fwd_configs()`): each config is forced alone,
and the op is compared with the fp32 reference on odd lengths, forced chunk lengths (one chunk; 5 and 16 steps, so
the load ring reaches past a chunk and the unrolled loop runs its remainder), periodic and packed resets, initial and
last states, and every gradient, in fp32 and bf16, BLD layout (the models') and BDL. The interpreter ignores UNROLL
and never compiles the ring, so only this run checks them. Prints one row per config and exits non-zero on any
failure; writes benchmarks/results/scan_fwd_configs_<date>.json.

    PYTHONPATH=src python benchmarks/ops/check_scan_fwd_configs.py [--out benchmarks/results] [--full]

`--jobs J` deals the cases to J processes, each checking its configs on its share (compiling dominates: one process
had not finished the first config after 260 s on an H200, 12 processes of one config each none after 300 s: every
process compiled every backward variant; 16 processes of one case and 12 configs each left the six B/C-form cases
from N = 16 on unfinished after 230 s). With more processes than cases, each case's configs are split among
J // cases processes, so a process compiles the backward of one case and a few forward configs;
`--configs I ...` / `--cases I ...` check only those indices.

By default each config runs a covering subset of the 108 combinations (`COVERING`: 9 cases); `--full` runs all. Both
add `BC_FORMS`: B/C with N = 1, 4, 8, 16, groups, fp16 and sliced from a wider projection, so that B_t/C_t are read
both by 16-byte loads (VECTOR_BC: aligned rows of 16-byte multiples) and by scalar loads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import triton
from bench_conv_bn import environment  # benchmarks/ops is on sys.path when this script runs

from sfmamba.ops.selective_scan import chunk, selective_scan
from sfmamba.ops.selective_scan.naive import selective_scan_naive
from sfmamba.testing import max_relative_error

DEV = "cuda"
TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 6e-2}  # worst tensor's max |err| / max |ref|
LENGTHS = (23, 37, 196)
CHUNK_LENS = (None, 5, 16)  # None: the planner's (one chunk per row here)
RESETS = ("none", "seq_len", "cu_seqlens")
LAYOUTS = ("BLD", "BDL")
DTYPES = (torch.float32, torch.bfloat16)
# the default subset (9 cases per config instead of the 108 of `--full`, which take ~3 min per config on an H200, most
# of it compiling): every length, reset kind, layout, dtype and chunk length, and each reset kind with each chunk
# length (a ring or an unrolled remainder crossing a segment start inside a forced chunk)
COVERING = [
    (23, "none", "BLD", torch.bfloat16, None),
    (37, "seq_len", "BDL", torch.float32, 5),
    (196, "cu_seqlens", "BLD", torch.bfloat16, 16),
    (37, "none", "BDL", torch.float32, 16),
    (196, "seq_len", "BLD", torch.bfloat16, None),
    (23, "cu_seqlens", "BDL", torch.float32, 5),
    (196, "none", "BLD", torch.float32, 5),
    (23, "seq_len", "BDL", torch.bfloat16, 16),
    (37, "cu_seqlens", "BLD", torch.float32, None),
]
# B_t/C_t read by 16-byte loads (VECTOR_BC) or not, in every B/C form (state sizes, groups, fp16, a B/C sliced from
# a wider projection as in the models, whose rows are not 16-byte aligned): (length, resets, layout, dtype, chunk
# length, N, groups, sliced B/C); run by default and with --full
BC_FORMS = [
    (196, "none", "BLD", torch.float16, None, 8, 1, False),
    (37, "seq_len", "BDL", torch.float16, 5, 16, 1, False),
    (196, "cu_seqlens", "BLD", torch.float32, 16, 16, 1, False),
    (23, "none", "BLD", torch.bfloat16, None, 8, 2, False),
    (37, "none", "BLD", torch.bfloat16, 5, 8, 1, True),
    (37, "seq_len", "BLD", torch.bfloat16, None, 4, 1, False),
    (23, "none", "BDL", torch.float32, None, 1, 1, False),
]
TOLERANCE[torch.float16] = 1e-2
SEQUENCES = ("u", "delta", "z", "B", "C")


def make_case(
    length: int, resets: str, layout: str, dtype: torch.dtype, seed: int, nstate: int = 8, groups: int = 1,
    sliced: bool = False,
) -> tuple[dict, dict]:  # fmt: skip
    """(inputs in `dtype` requiring grad, keyword arguments) of a stable scan: 3 images, 40 channels, N states in
    `groups` groups of B/C (sliced: B and C are views into one wider (.., dt_rank + 2N) projection, as in the models)."""
    gen = torch.Generator(device=DEV).manual_seed(seed)
    batch, dim = 3, 40
    seq = (batch, dim, length) if layout == "BDL" else (batch, length, dim)
    group = () if groups == 1 else (groups,)
    bc = (batch, *group, nstate, length) if layout == "BDL" else (batch, length, *group, nstate)

    def rand(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, device=DEV, generator=gen) * scale + shift

    x = {"u": rand(*seq), "delta": rand(*seq, scale=0.5, shift=-1.0), "z": rand(*seq)}
    x |= {"B": rand(*bc), "C": rand(*bc)}
    x = {k: v.to(dtype) for k, v in x.items()}
    x |= {"A": -torch.exp(rand(dim, nstate, scale=0.5)), "D": rand(dim), "delta_bias": rand(dim, scale=0.1)}
    kwargs: dict = {"layout": layout}
    segments = batch
    if resets == "seq_len":
        kwargs["seq_len"] = length if length % 2 else length // 2
        segments = batch * (length // kwargs["seq_len"])
    elif resets == "cu_seqlens":  # one packed row of uneven segments; B/C and the sequences share it
        x = {k: (v[:1] if k in SEQUENCES else v) for k, v in x.items()}
        kwargs["cu_seqlens"] = torch.tensor([0, 1, length // 3, length - 2, length], device=DEV, dtype=torch.int32)
        segments = 4
    x["initial_state"] = rand(segments, dim, nstate, scale=0.5)
    x = {k: v.detach().requires_grad_() for k, v in x.items()}
    if sliced:  # leaves stay separate tensors (for their gradients); the op sees unaligned views of one projection
        return x, kwargs | {"sliced": True}
    return x, kwargs


def sliced_bc(x: dict, layout: str) -> dict:
    """x with B and C replaced by views into one (.., 3 + 2N) tensor along the state axis (differentiable)."""
    axis = -2 if layout == "BDL" else -1
    shape = list(x["B"].shape)
    shape[axis] = 3
    dt_part = x["B"].new_zeros(shape)
    wide = torch.cat([dt_part, x["B"], x["C"]], dim=axis)
    nstate = x["B"].shape[axis]
    return x | {"B": wide.narrow(axis, 3, nstate), "C": wide.narrow(axis, 3 + nstate, nstate)}


def run(fn, x: dict, kwargs: dict) -> list[torch.Tensor]:
    kwargs = dict(kwargs)
    inputs = sliced_bc(x, kwargs["layout"]) if kwargs.pop("sliced", False) else x
    out, last = fn(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["z"],
                   inputs["delta_bias"], True, True, initial_state=inputs["initial_state"], **kwargs)  # fmt: skip
    weight = torch.linspace(-1, 1, out.numel(), device=DEV).view(out.shape)
    grads = torch.autograd.grad((out.float() * weight).sum() + last.float().sum(), list(x.values()))
    return [out, last, *grads]


def all_cases(full: bool) -> list[tuple]:
    """(length, resets, layout, dtype, chunk length, *B/C form) of every case checked per config."""
    grid = itertools.product(LENGTHS, RESETS, LAYOUTS, DTYPES, CHUNK_LENS) if full else COVERING
    return [*grid, *BC_FORMS]


def check_config(config: triton.Config, cases: list[tuple]) -> dict:
    chunk.selective_scan_fwd_kernel.configs = [config]
    chunk.selective_scan_fwd_kernel.cache.clear()
    worst, failures, vector_cases, pruned = 0.0, [], 0, 0
    for length, resets, layout, dtype, chunk_len, *form in cases:
        if not chunk.fwd_config_kept(config, form[0] if form else 8):
            pruned += 1  # the autotuner never times this config at this state size
            continue
        chunk.forced_chunk_len = chunk_len
        try:
            x, kwargs = make_case(length, resets, layout, dtype, length, *form)
            seen = sliced_bc(x, layout) if form and form[2] else x
            vector_cases += chunk.vector_bc(chunk._rows_adjacent(seen["B"], layout), x["A"].shape[1], layout)
            ref_x = {k: v.detach().float().requires_grad_() for k, v in x.items()}
            got, want = run(selective_scan, x, kwargs), run(selective_scan_naive, ref_x, kwargs)
            error = max(max_relative_error(w, g) for w, g in zip(want, got))
        finally:
            chunk.forced_chunk_len = None
        worst = max(worst, error)
        if not error <= TOLERANCE[dtype]:  # NaN fails too
            failures.append(f"L{length} {resets} {layout} {str(dtype)[6:]} chunk {chunk_len} {form}: {error:.2e}")
    return {
        "config": str(config),
        "cases": len(cases) - pruned,
        "pruned_cases": pruned,
        "vector_bc_cases": vector_cases,
        "worst": worst,
        "failures": failures,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the JSON goes")
    parser.add_argument("--full", action="store_true", help="every combination (108 cases per config)")
    parser.add_argument("--configs", type=int, nargs="+", help="indices into _fwd_configs() (default: all)")
    parser.add_argument("--cases", type=int, nargs="+", help="indices into the checked cases (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="processes at once, each checking a share of the cases")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("check_scan_fwd_configs: needs a CUDA GPU")
        return 2
    configs, cases = chunk._fwd_configs(), all_cases(args.full)
    config_ids = args.configs if args.configs is not None else list(range(len(configs)))
    case_ids = args.cases if args.cases is not None else list(range(len(cases)))
    if not all(0 <= i < len(configs) for i in config_ids):
        parser.error(f"--configs: indices must lie in [0, {len(configs)}), got {config_ids}")
    if not all(0 <= i < len(cases) for i in case_ids):
        parser.error(f"--cases: indices must lie in [0, {len(cases)}), got {case_ids}")
    if args.jobs > 1:
        rows = check_in_processes(config_ids, case_ids, args)
    else:
        rows = check_here([configs[i] for i in config_ids], [cases[i] for i in case_ids])
    report = {
        **environment(),
        "tolerance": {str(k)[6:]: v for k, v in TOLERANCE.items()},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scan_fwd_configs_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2))
    failed = [r["config"] for r in rows if r["failures"]]
    print(f"wrote {path}\n" + (f"FAILED: {failed}" if failed else "every config matches the reference"))
    return 1 if failed else 0


def print_row(r: dict) -> None:
    print(
        f"{r['config']:<90} worst {r['worst']:.2e} failures {len(r['failures'])} "
        f"(B_t/C_t by 16-byte loads in {r['vector_bc_cases']} of {r['cases']} cases; {r['pruned_cases']} pruned)",
        flush=True,
    )
    for failure in r["failures"][:5]:
        print("   ", failure)


def check_here(configs: list[triton.Config], cases: list[tuple]) -> list[dict]:
    """Each config checked in this process, one after another, with one backward config, TILES (the forward is what
    is checked; a second backward config would double the compiling, and ROWS, with the cases' initial states, would
    take ~10 minutes to build)."""
    fwd, bwd = chunk.selective_scan_fwd_kernel, chunk.selective_scan_bwd_kernel
    defaults = list(fwd.configs), list(bwd.configs)
    bwd.configs = [c for c in defaults[1] if c.kwargs.get("TILES")][:1]
    rows = []
    try:
        for config in configs:
            rows.append(check_config(config, cases))
            print_row(rows[-1])
    finally:
        fwd.configs, bwd.configs = defaults
        fwd.cache.clear()
        bwd.cache.clear()
    return rows


def _in_order_of_completion(procs: list[subprocess.Popen]):
    """(index, process) of each process as it exits."""
    waiting = dict(enumerate(procs))
    while waiting:
        for j in [j for j, proc in waiting.items() if proc.poll() is not None]:
            yield j, waiting.pop(j)
        time.sleep(0.5)


def check_in_processes(config_ids: list[int], case_ids: list[int], args) -> list[dict]:
    """The cases dealt round-robin to `args.jobs` child processes, each checking every config on its share (so each
    backward variant compiles in one process only); the shares' rows merged per config."""
    shares = deal_shares(config_ids, case_ids, args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for j, (configs, cases) in enumerate(shares):
            cmd = [sys.executable, __file__, "--out", f"{tmp}/{j}", "--configs", *map(str, configs), "--cases"]
            cmd += [*map(str, cases)] + ["--full"] * args.full
            with open(f"{tmp}/{j}.log", "w") as log:  # a file, not a pipe: a full pipe would stall the child
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        merged = {i: {"config": f"index {i}", "cases": 0, "pruned_cases": 0, "vector_bc_cases": 0, "worst": 0.0,
                      "failures": []} for i in config_ids}  # fmt: skip
        for j, proc in _in_order_of_completion(procs):
            reports = [json.loads(f.read_text()) for f in Path(f"{tmp}/{j}").glob("*.json")]
            if not reports:
                output = Path(f"{tmp}/{j}.log").read_text()
                print(
                    f"share {j} (cases {shares[j]}): no result (exit {proc.returncode})\n{output[-3000:]}", flush=True
                )
                for i in shares[j][0]:
                    merged[i]["failures"].append(f"cases {shares[j][1]}: no result, exit {proc.returncode}")
                continue
            print(f"share {j} of {len(shares)} done (configs {shares[j][0]}, cases {shares[j][1]}):", flush=True)
            for row, got in zip([merged[i] for i in shares[j][0]], reports[0]["rows"]):
                print_row(got)  # each share's rows as it ends: a call cut by its time limit still shows them
                row["config"] = got["config"]
                row["worst"] = max(row["worst"], got["worst"])
                for key in ("cases", "pruned_cases", "vector_bc_cases", "failures"):
                    row[key] += got[key]
    for row in merged.values():
        print_row(row)
    return list(merged.values())


def deal_shares(config_ids: list[int], case_ids: list[int], jobs: int) -> list[tuple[list[int], list[int]]]:
    """(config ids, case ids) of each process: the cases dealt round-robin; with more processes than cases, each
    case's configs split among `jobs // cases` processes."""
    if jobs <= len(case_ids):
        return [(config_ids, case_ids[j::jobs]) for j in range(jobs)]
    per_case = min(jobs // len(case_ids), len(config_ids))
    return [(config_ids[k::per_case], [case]) for case in case_ids for k in range(per_case)]


if __name__ == "__main__":
    sys.exit(main())
