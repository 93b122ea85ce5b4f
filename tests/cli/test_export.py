"""`sfmamba export`: a `sfmamba train` checkpoint to .pt2 and ONNX, the check against eager, argument errors."""

from __future__ import annotations

import pytest
import timm
import torch

from sfmamba import export
from sfmamba.cli.main import main
from sfmamba.train import save_weights

IMG = 16


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("sf_mamba_nano", num_classes=10).eval()
    meta = dict(model="sf_mamba_nano", model_kwargs={}, num_classes=10, img_size=IMG, dataset="fashion_mnist")
    path = tmp_path / "best.safetensors"
    save_weights(path, model, meta)
    return path, model


def test_checkpoint_to_pt2_runs_like_the_model(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    out = tmp_path / "out" / "model.pt2"
    assert main(["export", "--checkpoint", str(path), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out} (pt2" in printed and f"{IMG} px, dynamic batch, float32, cpu" in printed
    assert "max relative difference to eager" in printed
    x = torch.randn(5, 3, IMG, IMG)  # the checkpoint's image size, a batch the program was not traced with
    with torch.no_grad():
        torch.testing.assert_close(export.load_program(out).module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_checkpoint_to_onnx_with_a_static_batch(checkpoint, tmp_path, capsys):
    import onnxruntime

    path, model = checkpoint
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(path), "--output", str(out), "--static-batch", "-b", "1"]) == 0
    assert "(onnx" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, IMG, IMG]
    x = torch.randn(1, 3, IMG, IMG)
    (logits,) = session.run(None, {"input0": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("difference, printed", [(0.5, "5.00e-01 > --tolerance 0.00025"), (float("inf"), "inf >")])
def test_a_failed_check_writes_nothing(checkpoint, tmp_path, capsys, monkeypatch, difference, printed):
    path, _ = checkpoint
    out = tmp_path / "model.pt2"
    monkeypatch.setattr(export, "check_program", lambda *args, **kwargs: difference)  # inf: a non-finite output
    assert main(["export", "--checkpoint", str(path), "--output", str(out), "--tolerance", "2.5e-4"]) == 1
    assert f"differs from eager by {printed}" in capsys.readouterr().out
    assert not out.exists()


def test_input_channels_from_the_model_kwargs(tmp_path, capsys):
    out = tmp_path / "grey.pt2"
    args = ["--model", "mambavision_nano", "--model-kwargs", "in_chans=1", "--num-classes", "3", "--img-size", "32"]
    assert main(["export", *args, "--output", str(out)]) == 0
    assert export.load_program(out).module()(torch.randn(3, 1, 32, 32)).shape == (3, 3)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output", "m.zip"], "--output must end in .pt2 or .onnx"),
        (["--output", "m.onnx", "--dtype", "bfloat16"], "--dtype must be float32 for ONNX, got bfloat16"),
        (["--output", "m.onnx", "--kernels", "triton"], "--kernels must be naive for ONNX"),
        (["--output", "m.pt2", "--opset", "18"], "--opset applies to ONNX only"),
        (["--output", "m.pt2", "--model", "no_such_model"], "--model 'no_such_model' is not registered"),
        (["--output", "m.pt2", "--num-classes", "4"], "--num-classes 4 conflicts with the checkpoint's 10"),
    ],
)
def test_usage_errors(checkpoint, tmp_path, capsys, extra, message):
    path, _ = checkpoint
    extra = [str(tmp_path / e) if e.startswith("m.") else e for e in extra]
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint", str(path), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_onnx_without_its_packages_says_what_to_install(checkpoint, tmp_path, capsys, monkeypatch):
    path, _ = checkpoint
    monkeypatch.setattr(export, "missing_onnx_packages", lambda: ["onnxscript"])
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(path), "--output", str(tmp_path / "m.onnx")])
    assert "ONNX export needs onnxscript: pip install 'sfmamba[export]'" in capsys.readouterr().err


def test_detector_file_exports_its_network_at_max_size_rounded_up(tmp_path, capsys):
    """A train-det weights file exports `DetectionNetwork` at max_size rounded up to 32 (80 -> 96): the program takes
    the detector's normalised, padded batch; --img-size must be a multiple of 32."""
    from sfmamba.dense import DetectionNetwork, create_detector

    torch.manual_seed(0)
    detector = create_detector("fcos", "sf_mamba_nano", 3, 64, min_size=48, max_size=80).eval()
    meta = dict(model="sf_mamba_nano", task="detection", detector="fcos", num_classes=3, fpn_channels=64, extra={},
                min_size=48, max_size=80, dataset="coco", seed=0)  # fmt: skip
    save_weights(tmp_path / "det.safetensors", detector, meta)
    out = tmp_path / "det.pt2"
    assert main(["export", "--checkpoint", str(tmp_path / "det.safetensors"), "--output", str(out)]) == 0
    assert "(fcos: the network before box decoding and NMS) -> " in capsys.readouterr().out
    batch = detector.transform([torch.rand(3, 30, 50), torch.rand(3, 50, 30)])[0].tensors  # 96 x 96 (padded)
    assert batch.shape[-2:] == (96, 96)
    with torch.no_grad():
        got, expected = export.load_program(out).module()(batch), DetectionNetwork(detector)(batch)
    assert list(got) == list(expected)
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(tmp_path / "det.safetensors"), "--output", str(out), "--img-size", "80"])
    assert "--img-size must be a multiple of 32 for a detector" in capsys.readouterr().err


def test_pretrained_weights_that_cannot_be_downloaded_give_one_line(tmp_path, capsys, monkeypatch):
    import urllib.error

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(SystemExit):
        main(["export", "--model", "mambavision_nano", "--pretrained", "--output", str(tmp_path / "m.pt2")])
    err = capsys.readouterr().err
    assert "--pretrained: the mambavision_nano weights could not be read or downloaded (URLError" in err
    assert "Traceback" not in err
