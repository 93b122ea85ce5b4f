"""`sfmamba bench` on the CPU with a tiny model and one or two iterations: JSON and table, profile breakdown,
wildcards, the official baseline on our scan, and argument errors."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

from sfmamba.bench.official import official_model
from sfmamba.bench.profile import categorize, kernel_breakdown
from sfmamba.cli import UsageError
from sfmamba.cli.bench import resolve_models
from sfmamba.cli.main import COMMANDS, main

FAST = ["--device", "cpu", "-b", "2", "--img-size", "32", "--num-warm-iter", "0", "--num-bench-iter", "2"]


@pytest.fixture
def no_mamba_ssm(monkeypatch):
    """Forget any mamba_ssm (stand-in or real) another test imported, so this test sees a clean process."""
    for name in [n for n in sys.modules if n.split(".")[0] == "mamba_ssm"]:
        monkeypatch.delitem(sys.modules, name)


def _results(path) -> dict:
    return json.loads(path.read_text())


def test_bench_both_writes_json_and_table(tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    assert "bench" in COMMANDS
    assert main(["bench", *FAST, "--model", "mambavision_nano", "--results-file", str(path)]) == 0
    data = _results(path)
    assert [(r["model"], r["mode"]) for r in data["results"]] == [
        ("mambavision_nano", "inference"),
        ("mambavision_nano", "train"),
    ]
    for row in data["results"]:
        assert row["img_per_sec_median"] > 0 and row["iters"] == 2 and row["img_size"] == [32, 32]
        assert row["params_m"] == pytest.approx(2.56, abs=0.01)
    env = data["environment"]
    assert {"date", "device", "torch", "timm", "triton", "tf32"} <= set(env)
    assert set(env["tf32"]) == {"matmul", "cudnn", "float32_matmul_precision"}
    assert data["settings"]["batch_size"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # atomic write: no temp file left
    out = capsys.readouterr().out
    assert "mambavision_nano  inference" in out and "img/s median" in out and str(path) in out


def test_bench_profile_breaks_time_into_categories(tmp_path, capsys):
    path = tmp_path / "profile.json"
    args = ["bench", *FAST, "--bench", "profile", "--profile-top", "5", "--model", "mambavision_nano"]
    assert main([*args, "--results-file", str(path)]) == 0
    (row,) = _results(path)["results"]
    assert row["mode"] == "profile" and row["profiled"] == "inference"
    assert sum(c["percent"] for c in row["categories"]) == pytest.approx(100.0)
    assert len(row["top_kernels"]) == 5
    assert {"conv", "gemm", "norm"} <= {c["category"] for c in row["categories"]}
    assert "top kernels" in capsys.readouterr().out


def test_profile_command_is_bench_profile(tmp_path, capsys):
    """`sfmamba profile` (SPEC's name) runs bench's profile, with bench's flags and without --bench."""
    path = tmp_path / "profile.json"
    args = ["profile", *FAST, "--profile-top", "3", "--profile-mode", "train", "--model", "sf_mamba_nano"]
    assert main([*args, "--results-file", str(path)]) == 0
    (row,) = _results(path)["results"]
    assert row["mode"] == "profile" and row["profiled"] == "train" and len(row["top_kernels"]) == 3
    assert "top kernels" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["profile", *FAST, "--bench", "inference"])
    assert "unrecognized arguments: --bench inference" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, category",
    [
        ("selective_scan_fwd_kernel", "scan"),
        ("void selective_scan_fwd_kernel<Selective_Scan_fwd_kernel_traits<32, 4, true>>", "scan"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "gemm"),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "conv"),
        ("depthwise_conv1d_fwd_kernel", "conv"),
        ("void cudnn::bn_fw_inf_1C11_kernel_NCHW<float, float, int, 512, true, 1, true>", "norm"),
        ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>", "norm"),
        ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", "attention"),
        ("void at::native::vectorized_elementwise_kernel<4, CUDAFunctorOnSelf_add<float>>", "elementwise/copy"),
        ("Memcpy DtoD (Device -> Device)", "elementwise/copy"),
        ("triton_poi_fused__to_copy_add_0", "elementwise/copy"),
        ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
        ("aten::mkldnn_convolution", "conv"),
        ("aten::addmm", "gemm"),
        ("aten::native_layer_norm", "norm"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("some_unknown_kernel", "other"),
    ],
)  # fmt: skip
def test_kernel_categories(name, category):
    assert categorize(name) == category


def test_cuda_breakdown_counts_device_kernels_only():
    """The CUDA branch of `kernel_breakdown`, on stand-in profiler events (no GPU here)."""

    def event(name, device_type, us):
        return SimpleNamespace(name=name, device_type=device_type, time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [
        event("aten::addmm", DeviceType.CPU, 500.0),  # host-side operator: not GPU time
        event("sm90_xmma_gemm_bf16bf16", DeviceType.CUDA, 30.0),
        event("selective_scan_fwd_kernel", DeviceType.CUDA, 10.0),
        event("selective_scan_fwd_kernel", DeviceType.CUDA, 10.0),
        event("vectorized_elementwise_kernel<add>", DeviceType.CUDA, 50.0),
    ]
    prof = SimpleNamespace(events=lambda: events)
    result = kernel_breakdown(prof, torch.device("cuda"), steps=2, top=2)
    assert result["total_ms_per_step"] == pytest.approx(0.05)
    assert [(k["name"], k["calls_per_step"]) for k in result["top_kernels"]] == [
        ("vectorized_elementwise_kernel<add>", 0.5),
        ("sm90_xmma_gemm_bf16bf16", 0.5),
    ]
    percents = {c["category"]: c["percent"] for c in result["categories"]}
    assert percents == pytest.approx({"elementwise/copy": 50.0, "gemm": 30.0, "scan": 20.0})


def test_model_names_and_wildcards():
    names = resolve_models(["mambavision_t*", "official:mamba_vision_T*", "deit_small_patch16_224", "mambavision_tiny"])
    assert names == [
        "mambavision_tiny", "mambavision_tiny2", "official:mamba_vision_T", "official:mamba_vision_T2",
        "deit_small_patch16_224",
    ]  # fmt: skip
    with pytest.raises(UsageError, match="no_such_model"):
        resolve_models(["no_such_model"])


def test_per_model_kwargs_and_repeats(tmp_path):
    path = tmp_path / "kwargs.json"
    models = ["mambavision_nano", "mambavision_nano:num_classes=7,drop_path_rate=0.0"]
    args = ["bench", *FAST, "--bench", "inference", "--repeats", "3", "--model", *models]
    assert main([*args, "--results-file", str(path)]) == 0
    plain, seven = _results(path)["results"]
    assert seven["model"] == models[1]
    # 256 features: a 7-class head has 993 * 257 fewer parameters than the 1000-class one
    assert plain["params_m"] - seven["params_m"] == pytest.approx(993 * 257 / 1e6)
    assert len(plain["repeat_img_per_sec_medians"]) == 3
    assert plain["runs_img_per_sec_mean"] == pytest.approx(sum(plain["repeat_img_per_sec_medians"]) / 3)
    assert resolve_models(["mambavision_nan*:fold=1"]) == ["mambavision_nano:fold=1"]
    with pytest.raises(UsageError, match="key=value"):
        resolve_models(["mambavision_nano:=1"])


def test_official_baseline_on_our_scan(tmp_path, no_mamba_ssm):
    path = tmp_path / "official.json"
    args = ["bench", *FAST, "--bench", "inference", "--model", "official:mamba_vision_T", "--official-scan", "sfmamba"]
    assert main([*args, "--results-file", str(path)]) == 0
    (row,) = _results(path)["results"]
    assert "error" not in row and row["params_m"] == pytest.approx(31.79, abs=0.01)


def test_official_baseline_without_mamba_ssm_is_reported_not_raised(tmp_path, no_mamba_ssm, capsys):
    path = tmp_path / "official.json"
    args = ["bench", *FAST, "--bench", "inference", "--model", "official:mamba_vision_T", "mambavision_nano"]
    assert main([*args, "--official-scan", "mamba_ssm", "--results-file", str(path)]) == 1
    official, ours = _results(path)["results"]
    assert "mamba_baseline" in official["error"] and "build_on_device.sh" in official["error"]
    assert "error" not in ours  # the run goes on after a failed model
    assert "failed:" in capsys.readouterr().out


def test_official_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="official model"):
        official_model("official:mamba_vision_XL", scan="sfmamba")
    with pytest.raises(ValueError, match="scan"):
        official_model("mamba_vision_T", scan="cuda")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cuda-graph"], "--cuda-graph needs a CUDA device"),
        (["--model", "nothing_like_this_*"], "matches no registered model"),
        (["-b", "0"], "not a positive integer"),
        (["--torchcompile", "fastest"], "--torchcompile 'fastest': not a torch.compile backend"),
        (["--torchcompile", "--torchcompile-mode", "fastest"], "invalid choice"),
        (["--torchcompile-mode", "max-autotune"], "--torchcompile-mode needs --torchcompile"),
    ],
)
def test_bad_requests_exit_with_usage_errors(extra, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "--device", "cpu", "--model", "mambavision_nano", *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
