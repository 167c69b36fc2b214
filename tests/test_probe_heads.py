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
    assert not probes["conv1"].bn.affine
    assert isinstance(LayerProbe(torch.nn.Identity(), 4, 2, bn=False).bn, torch.nn.Identity)


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
