"""The Morlet scattering transform and the hybrid front end that replaces conv1-conv2 (Table 4's Scattering row).

Properties from the literature (Mallat 2012; Bruna & Mallat 2013; Oyallon et al. 2017): path count and
resolution, the Littlewood-Paley bound of the filter bank, non-expansiveness, stability to small
translations. Agreement with kymatio itself is checked when ``KYMATIO_PATH`` names an install of it
(see docs/scattering.md).
"""
import math
import os
import sys

import numpy as np
import pytest
import torch

from train.models import Encoder, EncoderSpec
from train.scattering import (Scattering2D, ScatteringFrontend, filter_bank, frontend_output, n_coefficients)


def paths(J: int, L: int) -> int:
    """Scattering paths counted one by one: phi, each psi_{j1,t1}, each pair with j2 > j1."""
    first = [(j, t) for j in range(J) for t in range(L)]
    return 1 + len(first) + sum(1 for a in first for b in first if b[0] > a[0])


@pytest.mark.parametrize("J,L", [(2, 8), (1, 4), (3, 6)])
def test_output_shape_and_path_count(J, L):
    s = Scattering2D((32, 48), J=J, L=L)
    y = s(torch.randn(2, 3, 32, 48))
    assert s.out_channels == n_coefficients(J, L) == paths(J, L)
    assert y.shape == (2, 3, paths(J, L), 32 // 2 ** J, 48 // 2 ** J)
    assert n_coefficients(2, 8) == 81


def conv2_output(arch: str, size: int) -> tuple:
    enc = Encoder(EncoderSpec(arch=arch)).eval()
    x = torch.zeros(1, 3, size, size)
    x = enc.pools["conv1"](enc.blocks["conv1"](x)) if "conv1" in enc.pools else enc.blocks["conv1"](x)
    x = enc.blocks["conv2"](x)
    return tuple((enc.pools["conv2"](x) if "conv2" in enc.pools else x).shape[1:])


@pytest.mark.parametrize("arch,size,want", [("small", 32, (256, 6, 6)), ("alexnet", 224, (256, 13, 13))])
def test_frontend_feeds_conv3(arch, size, want):
    assert frontend_output(arch, size) == conv2_output(arch, size) == want
    front = ScatteringFrontend(arch, size)
    y = front(torch.rand(2, 3, size, size) * 2 - 1)
    assert y.shape == (2, *want)
    assert (y >= 0).all()  # conv3 reads post-ReLU activations, as after conv2
    enc = Encoder(EncoderSpec(arch=arch))
    assert enc.blocks["conv3"](y).shape[:2] == (2, 384)


def test_only_the_adapter_learns():
    front = ScatteringFrontend("small", 32)
    assert list(front.scattering.parameters()) == []
    assert {n.split(".")[0] for n, _ in front.named_parameters()} == {"adapter"}
    assert not front.norm.affine
    # the filters are rebuilt from (J, L, shape), never stored in a checkpoint
    assert not any(k.startswith("scattering") for k in front.state_dict())
    before = front.scattering(torch.ones(1, 3, 32, 32))
    opt = torch.optim.SGD(front.parameters(), lr=0.1)
    front(torch.rand(4, 3, 32, 32)).sum().backward()
    opt.step()
    torch.testing.assert_close(front.scattering(torch.ones(1, 3, 32, 32)), before)


def test_unsupported_arch_and_sizes():
    with pytest.raises(ValueError, match="resnet"):
        frontend_output("resnet", 32)
    with pytest.raises(ValueError, match="multiples of 4"):
        Scattering2D((30, 30))
    with pytest.raises(ValueError, match="32x32"):
        Scattering2D((32, 32))(torch.zeros(1, 16, 16))


def littlewood_paley(J: int, L: int, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A(w) = |phi(w)|^2 + 1/2 sum_lambda (|psi_lambda(w)|^2 + |psi_lambda(-w)|^2), and |w| per frequency."""
    phi, psi = filter_bank(n, n, J, L)
    a = phi[0] ** 2
    for p in psi:
        h = p["levels"][0]
        mirrored = np.roll(np.flip(h, (0, 1)), (1, 1), (0, 1))   # h(-w) on the FFT grid
        a = a + 0.5 * (h ** 2 + mirrored ** 2)
    f = np.fft.fftfreq(n)
    return a, 2 * math.pi * np.sqrt(f[:, None] ** 2 + f[None] ** 2)


def test_littlewood_paley_bound():
    """A(w) <= 1 makes each wavelet-modulus layer non-expansive (Mallat 2012, Prop. 2.5); the low and
    middle frequencies that J = 2 covers are kept with A(w) well above 0, and the wavelets have zero mean."""
    a, radius = littlewood_paley(2, 8)
    assert a.max() <= 1 + 1e-3
    assert a[radius <= 3 * math.pi / 4].min() >= 0.5
    assert a[radius <= math.pi / 2].min() >= 0.7
    _, psi = filter_bank(64, 64, 2, 8)
    assert max(abs(p["levels"][0][0, 0]) for p in psi) < 1e-6


def test_non_expansive():
    """||S x - S y|| <= ||x - y|| (Bruna & Mallat 2013, eq. 9); 2^J accounts for the subsampling."""
    torch.manual_seed(0)
    s = Scattering2D((32, 32))
    smooth = lambda n: torch.nn.functional.avg_pool2d(torch.randn(n, 1, 36, 36), 5, 1)[:, 0]
    for x, y in [(torch.randn(16, 32, 32), torch.randn(16, 32, 32)), (smooth(16), smooth(16)),
                 (torch.ones(2, 32, 32), torch.zeros(2, 32, 32))]:
        ratio = 4 * (s(x) - s(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        assert ratio.max() <= 1 + 1e-3
    # a constant image keeps all its energy in the zeroth order (phi has unit mean)
    assert 4 * s(torch.ones(1, 32, 32)).norm() == pytest.approx(32, rel=1e-3)


def test_stable_to_small_translations():
    """A 1-pixel shift of white noise changes the pixels by ~sqrt(2) but the scattering little, and the
    change grows with the shift (stability to translations below 2^J)."""
    torch.manual_seed(0)
    s = Scattering2D((32, 32))
    big = torch.randn(16, 40, 40)
    rel = lambda a, b: ((a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).mean().item()
    base = big[:, 4:36, 4:36]
    pixels = rel(base, big[:, 5:37, 4:36])
    changes = [rel(s(base), s(big[:, 4 + d:36 + d, 4:36])) for d in (1, 2, 4)]
    assert pixels > 1.3
    assert changes[0] < 0.25
    assert changes[0] < changes[1] < changes[2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_same_on_gpu():
    s = Scattering2D((32, 32))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(s.cuda()(x.cuda()).cpu(), s.cpu()(x), rtol=1e-4, atol=1e-5)


KYMATIO = os.environ.get("KYMATIO_PATH")


@pytest.mark.skipif(not KYMATIO, reason="set KYMATIO_PATH to a `pip install --target` of kymatio 0.3.0 to compare")
@pytest.mark.parametrize("shape", [(32, 32), (64, 48)])
def test_matches_kymatio(shape, monkeypatch):
    monkeypatch.syspath_prepend(KYMATIO)
    import scipy.special as special

    if not hasattr(special, "sph_harm"):  # removed in SciPy 1.17; kymatio imports it for 3-D only
        monkeypatch.setattr(special, "sph_harm", lambda m, n, t, p: special.sph_harm_y(n, m, p, t), raising=False)
    from kymatio.torch import Scattering2D as Kymatio2D

    x = torch.rand(2, 3, *shape) * 2 - 1
    want = Kymatio2D(J=2, shape=shape, L=8)(x)
    torch.testing.assert_close(Scattering2D(shape)(x), want, rtol=0, atol=1e-6)
    sys.modules.pop("kymatio", None)
