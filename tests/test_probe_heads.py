"""Pooling dimensions, the learning-rate schedules and ten-crop averaging."""
import pytest
import torch

from probe.heads import (LayerProbe, build_probes, lr_at, make_pool, milestones, pool_side, probe_dims,
                         ten_crop_average)

# AlexNet activation shapes after each ReLU on 224x224 inputs.
ALEXNET_224 = {"conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
               "conv5": (256, 13, 13)}
PAPER_DIMS = {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}


@pytest.mark.parametrize("pooling", ["paper", "released"])
def test_pooled_dims_match_the_paper(pooling):
    assert probe_dims(ALEXNET_224, pooling, "alexnet") == PAPER_DIMS


def test_released_pools_have_the_paper_sizes_but_other_windows():
    # Same 10x10 grid on conv1, but the released pool pads by 3 and uses fixed 6x6 windows.
    x = torch.randn(2, 96, 55, 55)
    released, paper = make_pool("released", "conv1", 96, "alexnet")(x), make_pool("paper", "conv1", 96, "alexnet")(x)
    assert released.shape == paper.shape == (2, 96, 10, 10)
    assert not torch.equal(released, paper)


def test_small_encoder_dims():
    shapes = {"conv1": (96, 11, 11), "conv2": (256, 6, 6), "conv3": (384, 3, 3), "conv4": (256, 3, 3)}
    assert probe_dims(shapes, "none", "small") == {"conv1": 11616, "conv2": 9216, "conv3": 3456, "conv4": 2304}
    assert [pool_side(c) for c in (96, 256, 384)] == [10, 6, 5]
    with pytest.raises(ValueError, match="released"):
        make_pool("released", "conv1", 96, "small")


def test_probe_forward_shape_and_bn_is_not_affine():
    probes = build_probes({"conv1": (96, 55, 55)}, "paper", "alexnet", 7)
    assert probes["conv1"](torch.randn(3, 96, 55, 55)).shape == (3, 7)
    assert not probes["conv1"].bn.affine and isinstance(probes["conv1"].bn, torch.nn.BatchNorm1d)
    assert probes["conv1"].shape == (96, 10, 10) and probes["conv1"].dim == 9600
    assert isinstance(LayerProbe(torch.nn.Identity(), (4, 1, 1), 2, bn="none").bn, torch.nn.Identity)
    with pytest.raises(ValueError, match="probe bn"):
        LayerProbe(torch.nn.Identity(), (4, 1, 1), 2, bn="group")


def test_channel_bn_normalises_each_channel_of_the_pooled_map():
    torch.manual_seed(0)
    probe = build_probes({"conv2": (8, 12, 12)}, "none", "small", 3, bn="channel")["conv2"]
    assert isinstance(probe.bn, torch.nn.BatchNorm2d) and not probe.bn.affine and probe.bn.num_features == 8
    # Channel c has mean 10c and scale c+1 at every position: a per-channel BN maps every channel to
    # mean 0 / variance 1 over (N, h, w), while positions inside a channel keep their differences.
    x = torch.randn(64, 8, 12, 12) * torch.arange(1, 9).view(1, 8, 1, 1) + 10 * torch.arange(8).view(1, 8, 1, 1)
    x[:, :, 0, 0] += 5.0
    seen = {}
    probe.fc.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    probe.train()(x)
    z = seen["x"].view(64, *probe.shape)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var((0, 2, 3), unbiased=False), torch.ones(8), atol=1e-3, rtol=0)
    assert (z[:, :, 0, 0].mean(0) > z[:, :, 1, 1].mean(0) + 0.3).all()  # a per-feature BN would erase this
    pooled = probe.pool(x)
    want = probe.fc(torch.flatten(torch.nn.functional.batch_norm(pooled, None, None, training=True), 1))
    torch.testing.assert_close(probe(x), want)
    flat = LayerProbe(torch.nn.Identity(), probe.shape, 3, bn="channel")  # cached CIFAR features: flattened
    flat.fc.load_state_dict(probe.fc.state_dict())
    torch.testing.assert_close(flat.train()(torch.flatten(pooled, 1)), want)


@pytest.mark.parametrize("shape,classes", [((96, 10, 10), 1000), ((256, 6, 6), 7), ((64, 1, 1), 4)])
def test_xavier_init_is_the_released_conv_init(shape, classes):
    torch.manual_seed(3)
    probe = LayerProbe(torch.nn.Identity(), shape, classes, init="xavier")
    c, h, w = shape
    bound = (6.0 / ((c + classes) * h * w)) ** 0.5  # the fans of Conv2d(c, classes, kernel h x w)
    weight = probe.fc.weight
    assert weight.abs().max() <= bound and weight.abs().max() > 0.98 * bound
    assert torch.count_nonzero(probe.fc.bias) == 0
    torch.manual_seed(3)
    torch.nn.Linear(c * h * w, classes)  # the default init runs first, then the released one replaces it
    conv = torch.empty(classes, c, h, w)
    torch.nn.init.xavier_uniform_(conv)
    torch.testing.assert_close(weight, conv.reshape(classes, -1))
    torch.manual_seed(3)
    default = LayerProbe(torch.nn.Identity(), shape, classes).fc.weight
    torch.manual_seed(3)
    torch.testing.assert_close(default, torch.nn.Linear(c * h * w, classes).weight)  # --linear-init default


def test_paper_schedule_each_epoch():
    lrs = [lr_at(e, "paper", 36) for e in range(36)]
    want = [0.01] * 5 + [0.002] * 10 + [0.0004] * 10 + [0.00008] * 11
    assert lrs == pytest.approx(want)


def test_released_schedule_each_epoch():
    lrs = [lr_at(e, "released", 36) for e in range(36)]
    want = [0.01] * 10 + [0.001] * 10 + [0.0001] * 10 + [0.00001] * 6
    assert lrs == pytest.approx(want)


def test_shortened_schedule_scales_milestones():
    assert milestones("paper", 36) == [5, 15, 25]
    assert milestones("paper", 18) == [2, 8, 12]  # round(2.5)=2 (banker's), 7.5->8, 12.5->12
    assert milestones("released", 9) == [2, 5, 8]
    assert min(milestones("paper", 1)) >= 1


def test_ten_crop_average_on_known_input():
    # Image 0: one crop strongly favours class 1, nine mildly favour class 0.
    logits = torch.zeros(1, 10, 2)
    logits[0, 0] = torch.tensor([0.0, 50.0])
    logits[0, 1:] = torch.tensor([1.0, 0.0])
    by_logits = ten_crop_average(logits, "logits")
    by_softmax = ten_crop_average(logits, "softmax")
    torch.testing.assert_close(by_logits, torch.tensor([[0.9, 5.0]]))
    assert by_logits.argmax(1).item() == 1
    assert by_softmax.argmax(1).item() == 0
    p = torch.tensor([1.0, 0.0]).softmax(0)
    torch.testing.assert_close(by_softmax[0], (torch.tensor([0.0, 1.0]) + 9 * p) / 10, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        ten_crop_average(logits, "median")
