"""Encoder shapes (conv1..conv5 / conv1..conv4), heads, spec round trip."""
import pytest
import torch

from train.models import AlexNetClassifier, EncoderSpec, SmallClassifier, build_encoder

ALEX_224 = {"conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
            "conv5": (256, 13, 13)}
SMALL_32 = {"conv1": (96, 11, 11), "conv2": (256, 6, 6), "conv3": (384, 3, 3), "conv4": (256, 3, 3)}


@pytest.mark.parametrize("arch,size,shapes,out", [("alexnet", 224, ALEX_224, (256, 6, 6)),
                                                   ("small", 32, SMALL_32, (256, 3, 3))])
def test_feature_shapes(arch, size, shapes, out):
    enc = build_encoder({"arch": arch}).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = enc.features(x)
        assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == shapes
        assert tuple(enc(x).shape) == (2, *out)
        # After the ReLU, before pooling.
        assert all((v >= 0).all() for v in feats.values())
        assert list(enc.features(x, ["conv2"])) == ["conv2"]
    with pytest.raises(KeyError, match="conv9"):
        enc.features(x, ["conv9"])


def test_heads_and_sobel():
    net = AlexNetClassifier(EncoderSpec(sobel=True), num_classes=4, input_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert net.embed(x).shape == (2, 4096) and net(x).shape == (2, 4)
    assert net.encoder.blocks["conv1"][0].in_channels == 2
    small = SmallClassifier(EncoderSpec(arch="small"), num_classes=10).eval()
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_spec_round_trip_rebuilds_the_same_encoder():
    spec = EncoderSpec(arch="small", norm="layer", act="leaky")
    a = build_encoder(spec)
    b = build_encoder(spec.to_dict())
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert b.spec == spec and torch.equal(a.eval()(x), b.eval()(x))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_encoder({"arch": "vgg"})


@pytest.mark.parametrize("arch,size,params,last", [("wrn16_4", 32, 2748890, (256, 8, 8)),
                                                   ("wrn40_4", 32, 8949210, (256, 8, 8)),
                                                   ("resnet18", 64, 11181642, (512, 2, 2))])
def test_residual_archs_have_the_reference_sizes(arch, size, params, last):
    from train.classifier import build_classifier

    # WRN-16-4 2.7M and WRN-40-4 8.9M parameters (Zagoruyko & Komodakis); ResNet-18 as torchvision's, 10 classes
    net = build_classifier(EncoderSpec(arch=arch), 10, size).eval()
    assert sum(p.numel() for p in net.parameters()) == params
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = net.encoder.features(x)
        assert net(x).shape == (2, 10) and tuple(list(feats.values())[-1].shape[1:]) == last
    b = build_encoder(net.encoder.spec.to_dict())
    b.load_state_dict(net.encoder.state_dict())
    assert torch.equal(b.eval()(x), net.encoder(x))
