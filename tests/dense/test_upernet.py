"""UperNet segmentation on our backbones: output shapes at odd sizes, gradients everywhere, the pyramid pooling's
global context, batch independence in eval, a classification checkpoint as the backbone, the loss, learning, errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import sfmamba.models  # noqa: F401  (registers the models)
from sfmamba.dense import MultiScaleBackbone, UperNet, UperNetHead, segmentation_loss
from sfmamba.train import save_weights

SMALL = dict(channels=32, aux_channels=16)


@pytest.mark.parametrize("name", ["sf_mamba_nano", "mambavision_nano", "vmamba_v2_nano"])
def test_logits_at_the_input_size_and_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = UperNet(name, num_classes=5, **SMALL)
    x = torch.randn(2, 3, 70, 90)  # not a multiple of 32: the backbone pads and crops
    out = model(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 5, 70, 90)
    segmentation_loss(out, torch.randint(0, 5, (2, 70, 90))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"


def test_any_timm_backbone_with_those_strides():
    """A ResNet's features also include stride 2: UperNet takes its maps at strides 4-32."""
    model = UperNet("resnet18", num_classes=3, **SMALL).eval()
    assert model.backbone.channels == [64, 128, 256, 512]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96))["out"].shape == (1, 3, 64, 96)


def test_without_the_auxiliary_head():
    model = UperNet("mambavision_nano", num_classes=3, channels=32, aux_channels=0).eval()
    assert model.aux_head is None and set(model(torch.randn(1, 3, 64, 64))) == {"out"}


def test_pyramid_pooling_gives_every_pixel_the_global_context():
    """The coarsest map reaches every output pixel through the 1x1 pooled branch, not only those nearby."""
    torch.manual_seed(0)
    head = UperNetHead([8, 16, 24, 32], num_classes=2, channels=16).eval()
    feats = [torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 24, 32])]
    before = head(feats)
    feats[-1] = feats[-1].clone()
    feats[-1][..., 0, 0] += 5.0  # one corner of the 4 x 4 map
    changed = (head(feats) - before).abs().amax(dim=1)[0]  # [32, 32]
    assert before.shape == (1, 2, 32, 32) and (changed > 1e-6).all()


def test_eval_outputs_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = UperNet("sf_mamba_nano", num_classes=4, **SMALL).eval()
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        whole = model(x)["out"]
        alone = torch.cat([model(x[i : i + 1])["out"] for i in range(3)])
    torch.testing.assert_close(whole, alone, rtol=1e-4, atol=1e-5)


def test_backbone_starts_from_a_classification_checkpoint(tmp_path):
    torch.manual_seed(0)
    classifier = timm.create_model("sf_mamba_nano", num_classes=10).eval()
    path = tmp_path / "cls.safetensors"
    save_weights(path, classifier, dict(model="sf_mamba_nano", num_classes=10))
    model = UperNet("sf_mamba_nano", num_classes=3, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                    **SMALL).eval()  # fmt: skip
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, expected = classifier.forward_intermediates(x)
        got = model.backbone(x)
        assert len(got) == len(expected) == 4
        for g, want in zip(got, expected):
            torch.testing.assert_close(g, want)


def test_loss_leaves_out_ignored_pixels_and_weights_the_aux_head():
    torch.manual_seed(0)
    out = {"out": torch.randn(1, 3, 4, 4), "aux": torch.randn(1, 3, 4, 4)}
    target = torch.full((1, 4, 4), 255)
    target[0, 1, 2] = 2
    expected = F.cross_entropy(out["out"][:, :, 1, 2], torch.tensor([2]))
    expected = expected + 0.4 * F.cross_entropy(out["aux"][:, :, 1, 2], torch.tensor([2]))
    torch.testing.assert_close(segmentation_loss(out, target), expected)
    with pytest.raises(ValueError, match=r"target must be \[B, H, W\] = \(1, 4, 4\) class indices, got \(1, 1, 4, 4\)"):
        segmentation_loss(out, target[:, None])


def test_loss_of_a_batch_with_every_pixel_ignored_is_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = segmentation_loss({"out": logits}, torch.full((2, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_it_learns_to_find_a_square():
    """Each image has a bright square at a random place, its pixels labelled 1: a few AdamW steps cut the loss."""
    torch.manual_seed(0)
    model = UperNet("mambavision_nano", num_classes=2, channels=32, aux_channels=0, drop_path_rate=0.0)
    x = 0.3 * torch.randn(4, 3, 32, 32)
    target = torch.zeros(4, 32, 32, dtype=torch.long)
    for i, (top, left) in enumerate([(2, 3), (14, 16), (8, 1), (16, 4)]):
        x[i, :, top : top + 14, left : left + 14] += 2.0
        target[i, top : top + 14, left : left + 14] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = segmentation_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_bad_arguments():
    with pytest.raises(ValueError, match="backbone must be a timm model name or a features_only module"):
        UperNet(torch.nn.Linear(2, 2), num_classes=3)
    with pytest.raises(ValueError, match=r"the backbone gives maps at strides \[2, 4, 8, 16, 32\], not \[64\]"):
        MultiScaleBackbone("resnet18", (16, 32, 64))
    with pytest.raises(ValueError, match=r"strides must be distinct and increasing, got \[32, 8, 16, 4\]"):
        MultiScaleBackbone("resnet18", (32, 8, 16, 4))
    with pytest.raises(ValueError, match="backbone must be a timm model name or a features_only module"):
        UperNet(timm.create_model("resnet18"), num_classes=3)  # a classifier, not features_only
    with pytest.raises(ValueError, match=r"aux_channels must be >= 0 \(0: no auxiliary head\), got -1"):
        UperNet("mambavision_nano", num_classes=3, aux_channels=-1)
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        UperNet("mambavision_nano", num_classes=0)
    with pytest.raises(ValueError, match="expected 4 feature maps, got 3"):
        UperNetHead([8, 8, 8, 8], 2, channels=8)([torch.zeros(1, 8, 4, 4)] * 3)
