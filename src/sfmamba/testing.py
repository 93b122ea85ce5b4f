"""Test helpers shared by the op tests and kernel benchmarks: relative-error comparison, and building kernels for sm_90
without a GPU."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
from collections.abc import Callable, Collection

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes


def relative_error(ref: Tensor, out: Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64 (0 when both are zero)."""
    ref64, out64 = ref.detach().double(), out.detach().double()
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def max_relative_error(ref: Tensor, out: Tensor) -> float:
    """max |out - ref| / max |ref| (the GPU check scripts' per-tensor error; never below 1e-12 in the denominator)."""
    return float(
        (out.detach().float() - ref.detach().float()).abs().max() / ref.detach().float().abs().max().clamp_min(1e-12)
    )


def assert_close(name: str, ref: Tensor, out: Tensor, ratio: float, atol: float = 1e-6) -> None:
    """Fail unless `out` is finite wherever `ref` is, and ||out-ref||/||ref|| <= ratio (or max|diff| <= atol)."""
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    finite = torch.isfinite(ref)
    assert torch.isfinite(out[finite]).all(), f"{name}: non-finite values where the reference is finite"
    max_diff = (out.detach().double() - ref.detach().double()).abs().max().item() if ref.numel() else 0.0
    if max_diff <= atol:
        return
    err = relative_error(ref, out)
    assert err <= ratio, f"{name}: relative error {err:.3e} > {ratio:.1e} (max abs diff {max_diff:.3e})"


SCAN_SEQUENCE_ARGS = frozenset(
    {"u_ptr", "delta_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr", "B_ptr", "C_ptr"}
)


def scan_pointer_type(dtype: str) -> Callable[[str], str]:
    """Pointer types of the selective-scan kernels: sequences and B/C in `dtype`, segment tables int32, the rest
    (A, D, bias, states, partial sums) fp32."""

    def pointer_type(name: str) -> str:
        if name in ("seg_ids_ptr", "cu_ptr"):
            return "*i32"
        return f"*{dtype}" if name in SCAN_SEQUENCE_ARGS else "*fp32"

    return pointer_type


def jit_function(kernel):
    """The `triton.jit` function under a kernel's autotune / heuristics wrappers."""
    while type(kernel).__name__ != "JITFunction":
        kernel = kernel.fn
    return kernel


def compile_for_sm90(
    kernel, constexprs: dict, num_warps: int, pointer_type: Callable[[str], str], divisible_by_16: Collection[str] = (),
    maxnreg: int | None = None,
):  # fmt: skip
    """Build a Triton kernel (under any autotune/heuristics wrappers) for an H100 with Triton's bundled ptxas -- no GPU
    needed -- so CI catches what the GPU compiler rejects (the interpreter never compiles). Arguments named in
    `constexprs` are bound to those values (constexprs not named there take their defaults), other `*_ptr` arguments
    typed by `pointer_type(name)`, the rest int32.
    `divisible_by_16`: arguments to mark as a GPU launch does for pointers and integers divisible by 16 (it changes
    the layouts Triton picks: vectorised loads anchor other layouts). `maxnreg`: a config's register cap.
    Returns Triton's compiled kernel (`.asm` holds ttgir, ptx, cubin). Call it where TRITON_INTERPRET is unset."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = jit_function(kernel)
    defaults = {p.name: p.default for p in fn.params if p.is_constexpr and p.default is not inspect.Parameter.empty}
    constexprs = defaults | constexprs  # a constexpr with a default (UNROLL: tl.constexpr = 1) need not be named
    signature = {
        name: "constexpr" if name in constexprs else pointer_type(name) if name.endswith("_ptr") else "i32"
        for name in fn.arg_names
    }
    constants = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    attrs = {
        (fn.arg_names.index(n),): [["tt.divisibility", 16]]
        for n in divisible_by_16
        if signature.get(n, "constexpr") != "constexpr"
    }
    source = ASTSource(fn, signature, constants, attrs)
    options = {"num_warps": num_warps} | ({"maxnreg": maxnreg} if maxnreg else {})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def run_without_interpreter(code: str, timeout: float = 600, env: dict[str, str] | None = None):
    """Run Python `code` in a fresh process with TRITON_INTERPRET unset (test modules set it at import, and Triton
    reads it once) and `env` added, e.g. to compile kernels for sm_90 with `compile_for_sm90`; returns the
    subprocess.CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | (env or {})
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


def randomise_norms(module: nn.Module) -> nn.Module:
    """Give every BatchNorm2d / LayerNorm in `module` non-trivial affine parameters and running statistics (fresh
    norms are identities, which hide a wrong fold or a skipped norm); returns `module`."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(std=0.2)
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.normal_(std=0.2)
                m.running_var.uniform_(0.5, 2.0)
    return module


X_PROJ_SCALE = 4.0  # B and C (and the dt inputs) this many times the init's


def randomise_scan_parameters(module: nn.Module) -> nn.Module:
    """Move every Mamba mixer's and SS2D's scan parameters (A_log, D, dt_proj's bias, x_proj's weight) away from their
    init, whose A = -(1..N), steps of 0.001-0.1 and small B and C leave the scan's share of the output and its
    gradients (~1e-8 for A_log in the nano models) too small to compare; returns `module`."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(getattr(m, "A_log", None), nn.Parameter):  # MambaVisionMixer, ScanMixer
                m.A_log.normal_(0, 0.5)
                m.D.normal_()
                m.dt_proj.bias.normal_(0, 0.5)  # steps around softplus(0) = 0.7
                m.x_proj.weight.mul_(X_PROJ_SCALE)
            if isinstance(getattr(m, "A_logs", None), nn.Parameter):  # SS2D
                m.A_logs.normal_(0, 0.5)
                m.Ds.normal_()
                m.dt_projs_bias.normal_(0, 0.5)
                m.x_proj_weight.mul_(X_PROJ_SCALE)
    return module


def autograd_node_names(t: Tensor) -> set[str]:
    """The class names of every autograd node behind `t` (which ops' backward a step would run)."""
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions)
    return {type(n).__name__ for n in seen}


class FillRecorder(TorchDispatchMode):
    """Records the element count of every tensor an aten fill / zeros op writes while active (autograd's zero-filled
    gradients of unused outputs among them). `unrecorded(fn)` runs `fn` outside it (the Triton interpreter's kernels
    are plain Python over raw pointers)."""

    FILLS = ("fill", "zero", "zeros", "new_zeros", "zeros_like", "full", "full_like", "new_full")

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__.rstrip("_") in self.FILLS and isinstance(out, Tensor):
            self.sizes.append(out.numel())
        return out

    @staticmethod
    def unrecorded(fn: Callable) -> Callable:
        def run(*args, **kwargs):
            with _disable_current_modes():
                return fn(*args, **kwargs)

        return run


def speed_up_triton_interpreter() -> bool:
    """Cut the Triton interpreter's per-op overhead (a third to a half of the scan kernels' interpreter time), results
    unchanged:
    - patch `triton.language` once per kernel launch instead of again at every call of a `@triton.jit` helper inside
      it (Triton 3.8 re-walks the whole language module, inspect.getmembers, at each device-function call, ~1 ms). A
      call whose language modules are all still patched by the launch around it gets an empty patch scope; a launch,
      which restores the language when it ends, patches as before.
    - skip the interpreter's int32 overflow check on every integer add/sub/mul (compiled kernels never make it; on
      the tests' small shapes no index comes near 2**31).
    Returns False, changing nothing, where the interpreter lacks what this replaces."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang", None)
    scope_type = getattr(interpreter, "_LangPatchScope", None)
    builder = getattr(interpreter, "interpreter_builder", None)
    if None in (original, scope_type, builder) or getattr(original, "once_per_launch", False):
        return False
    langs_of: dict = {}  # jit function -> the language modules in its globals

    def patch_lang(fn):
        langs = langs_of.get(fn)
        if langs is None:
            langs = [value for value in fn.__globals__.values() if inspect.ismodule(value) and value in (tl, tl.core)]
            langs_of[fn] = langs
        if langs and all(not tl.core.is_builtin(lang.load) for lang in langs):
            return scope_type()  # already patched by the launch that runs this call
        return original(fn)

    patch_lang.once_per_launch = True
    interpreter._patch_lang = patch_lang
    builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)
    return True
