"""A fixed 2-D Morlet scattering transform (J = 2, L = 8, order 2) and the hybrid front end built on it.

The transform follows kymatio 0.3.0's ``Scattering2D`` step for step (same Morlet filters, built in the
Fourier domain on the reflection-padded grid; same periodisation, subsampling and unpadding), so its
output can be compared with kymatio's number for number (``docs/scattering.md``). It is written in
torch (FFT-based) because kymatio 0.3.0 no longer imports with current SciPy and this project does not
depend on SciPy at all.

``ScatteringFrontend`` stands in for an encoder's conv1-conv2, as in Oyallon et al. (2017)'s hybrid
networks: the scattering coefficients (fixed) are averaged to conv2's spatial size (fixed), normalised
by a BatchNorm without affine parameters (running statistics only), and mapped to conv2's 256 channels
by a learned 1x1 convolution + BatchNorm + ReLU, which is what conv3 reads.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from train.models import ARCHS, Encoder, EncoderSpec

J_DEFAULT = 2     # Oyallon et al. (2017), CIFAR hybrid: J = 2 (8 x 8 output on 32 x 32 inputs)
L_DEFAULT = 8     # angles per scale; kymatio's filters are designed for L = 8


def n_coefficients(J: int, L: int) -> int:
    """Scattering paths of order <= 2 per input channel: 1 + J*L + L^2*J*(J-1)/2 (81 for J=2, L=8)."""
    return 1 + J * L + L * L * J * (J - 1) // 2


def gabor_2d(M: int, N: int, sigma: float, theta: float, xi: float, slant: float = 1.0) -> np.ndarray:
    """Gabor filter g_sigma(u) e^{i xi.u} on an M x N grid, periodised over 5 x 5 tiles (kymatio's)."""
    c, s = math.cos(theta), math.sin(theta)
    R = np.array([[c, -s], [s, c]])
    curv = R @ np.diag([1.0, slant * slant]) @ R.T / (2 * sigma * sigma)
    gab = np.zeros((M, N), np.complex128)
    for ex in range(-2, 3):
        for ey in range(-2, 3):
            xx, yy = np.mgrid[ex * M:(ex + 1) * M, ey * N:(ey + 1) * N]
            arg = -(curv[0, 0] * xx * xx + (curv[0, 1] + curv[1, 0]) * xx * yy + curv[1, 1] * yy * yy) \
                + 1j * xi * (xx * c + yy * s)
            gab += np.exp(arg)
    # kymatio's normalisation constant, including its 3.1415 for pi: kept so outputs match to float precision
    return gab / (2 * 3.1415 * sigma * sigma / slant)


def morlet_2d(M: int, N: int, sigma: float, theta: float, xi: float, slant: float = 0.5) -> np.ndarray:
    """Morlet wavelet: a Gabor minus the Gaussian envelope times the constant that makes its mean zero."""
    wave = gabor_2d(M, N, sigma, theta, xi, slant)
    envelope = gabor_2d(M, N, sigma, theta, 0.0, slant)
    return wave - wave.sum() / envelope.sum() * envelope


def periodize(x_hat: np.ndarray, res: int) -> np.ndarray:
    """The Fourier filter of the same wavelet on a grid subsampled ``2**res`` times (kymatio's crop)."""
    M, N = x_hat.shape
    k = 2 ** res
    mask = np.ones_like(x_hat)
    mask[int(M * 2 ** (-res - 1)):int(M * 2 ** (-res - 1)) + int(M * (1 - 2 ** -res)), :] = 0
    mask[:, int(N * 2 ** (-res - 1)):int(N * 2 ** (-res - 1)) + int(N * (1 - 2 ** -res))] = 0
    return (x_hat * mask).reshape(k, M // k, k, N // k).sum(axis=(0, 2))


def filter_bank(M: int, N: int, J: int, L: int) -> tuple[list[np.ndarray], list[dict]]:
    """Low-pass phi at resolutions 0..J-1, and the L*J Morlet wavelets psi_{j,theta} (Fourier, real).

    Wavelet parameters are kymatio's: sigma = 0.8 * 2^j, xi = 3/4 * pi / 2^j, slant 4/L, angles
    (L/2 - 1 - theta) * pi / L; the low-pass is a Gaussian of sigma = 0.8 * 2^(J-1).
    """
    psi = []
    for j in range(J):
        for theta in range(L):
            wave = morlet_2d(M, N, 0.8 * 2 ** j, (int(L - L / 2 - 1) - theta) * np.pi / L,
                             3.0 / 4.0 * np.pi / 2 ** j, 4.0 / L)
            hat = np.real(np.fft.fft2(wave))
            psi.append({"j": j, "theta": theta,
                        "levels": [periodize(hat, r) for r in range(min(j + 1, max(J - 1, 1)))]})
    phi_hat = np.real(np.fft.fft2(gabor_2d(M, N, 0.8 * 2 ** (J - 1), 0.0, 0.0)))
    return [periodize(phi_hat, r) for r in range(J)], psi


def padded_size(n: int, J: int) -> int:
    """kymatio's padded side: the next multiple of 2^J with at least 2^(J-1) pixels each side."""
    return ((n + 2 ** J) // 2 ** J + 1) * 2 ** J


def _subsample(x_hat: torch.Tensor, k: int) -> torch.Tensor:
    """Fourier transform of the signal subsampled k times: the spectrum folded (periodised) k x k.

    Done on the real view, one axis at a time over contiguous blocks: several times faster on the CPU
    than a complex mean over the two strided axes.
    """
    if k == 1:
        return x_hat
    *lead, M, N = x_hat.shape
    r = torch.view_as_real(x_hat).reshape(*lead, k, M // k * N * 2).sum(dim=-2)         # fold the rows
    r = r.reshape(*lead, M // k, k, N // k * 2).sum(dim=-2).div_(k * k)                 # then the columns
    return torch.view_as_complex(r.reshape(*lead, M // k, N // k, 2))


def _filter(x_hat: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Spectrum times a real Fourier filter (broadcast), without promoting the filter to complex."""
    return torch.view_as_complex(torch.view_as_real(x_hat) * f[..., None])


class Scattering2D(nn.Module):
    """Order-2 Morlet scattering of ``... x H x W`` inputs -> ``... x K x H/2^J x W/2^J``, K = n_coefficients.

    Paths are ordered as kymatio orders them: phi; then |x*psi_{j1,t1}|*phi for (j1, t1); then
    ||x*psi_{j1,t1}|*psi_{j2,t2}|*phi for j2 > j1, (j1, t1) major. Filters are buffers that are not
    saved in checkpoints (``persistent=False``): they are rebuilt exactly from (J, L, shape).
    """

    def __init__(self, shape: tuple[int, int], J: int = J_DEFAULT, L: int = L_DEFAULT):
        super().__init__()
        H, W = shape
        if H % 2 ** J or W % 2 ** J or min(H, W) <= 2 ** (J + 1):
            raise ValueError(f"scattering with J={J} needs sides that are multiples of {2 ** J} and larger "
                             f"than {2 ** (J + 1)}; got {H}x{W}")
        self.J, self.L, self.shape = J, L, (H, W)
        self.padded = (padded_size(H, J), padded_size(W, J))
        self.pad = ((self.padded[0] - H) // 2, (self.padded[0] - H + 1) // 2,
                    (self.padded[1] - W) // 2, (self.padded[1] - W + 1) // 2)
        phi, psi = filter_bank(*self.padded, J, L)
        for r, f in enumerate(phi):
            self.register_buffer(f"phi{r}", torch.from_numpy(f).float(), persistent=False)
        # psi{j}_{r}: the L wavelets of scale j at resolution r, stacked: L x M/2^r x N/2^r
        for j in range(J):
            for r in range(len(psi[j * L]["levels"])):
                bank = np.stack([p["levels"][r] for p in psi if p["j"] == j])
                self.register_buffer(f"psi{j}_{r}", torch.from_numpy(bank).float(), persistent=False)

    @property
    def out_channels(self) -> int:
        return n_coefficients(self.J, self.L)

    def _low_pass(self, u_hat: torch.Tensor, j: int) -> torch.Tensor:
        """(U convolved with phi), subsampled to 2^J and unpadded, from U's spectrum at resolution j."""
        s = torch.fft.ifft2(_subsample(_filter(u_hat, getattr(self, f"phi{j}")), 2 ** (self.J - j))).real
        return s[..., 1:-1, 1:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scattering coefficients; the leading dimensions of ``x`` are kept, K is inserted before H, W."""
        if tuple(x.shape[-2:]) != self.shape:
            raise ValueError(f"this scattering was built for {self.shape[0]}x{self.shape[1]} inputs, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        lead = x.shape[:-2]
        top, bottom, left, right = self.pad
        x = nn.functional.pad(x.reshape(-1, 1, *self.shape), (left, right, top, bottom), mode="reflect")
        x_hat = torch.fft.fft2(x[:, 0])                                        # B x M x N
        order0, order1, order2 = [self._low_pass(x_hat, 0)[:, None]], [], []
        for j1 in range(self.J):
            u1 = torch.fft.ifft2(_subsample(_filter(x_hat[:, None], getattr(self, f"psi{j1}_0")), 2 ** j1)).abs()
            u1_hat = torch.fft.fft2(u1)                                        # B x L x M/2^j1 x N/2^j1
            order1.append(self._low_pass(u1_hat, j1))
            second = []
            for j2 in range(j1 + 1, self.J):
                psi2 = getattr(self, f"psi{j2}_{j1}")                          # L x M/2^j1 x N/2^j1
                # one first-order angle at a time: the full-resolution product is L times smaller
                u2 = torch.stack([torch.fft.ifft2(_subsample(_filter(u1_hat[:, t, None], psi2), 2 ** (j2 - j1)))
                                  for t in range(self.L)], dim=1).abs()
                second.append(self._low_pass(torch.fft.fft2(u2), j2))          # B x L x L x h x w
            if second:  # paths (j1, t1) major, then (j2, t2): kymatio's order
                order2.append(torch.cat(second, dim=2).flatten(1, 2))
        out = torch.cat(order0 + order1 + order2, dim=1)
        return out.reshape(*lead, *out.shape[1:])


@lru_cache(maxsize=None)
def frontend_output(arch: str, input_size: int) -> tuple[int, int, int]:
    """(channels, height, width) that the ``arch`` encoder's conv3 reads for a square input of ``input_size``.

    Measured on the encoder itself (conv1, conv2 and their pools): small at 32 -> (256, 6, 6),
    alexnet at 224 -> (256, 13, 13).
    """
    if arch not in ARCHS:
        raise ValueError(f"the scattering front end replaces conv1-conv2 of {', '.join(sorted(ARCHS))}; "
                         f"not of {arch!r}")
    enc = Encoder(EncoderSpec(arch=arch)).eval()
    x = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            x = enc.blocks[name](x)
            if name in enc.pools:
                x = enc.pools[name](x)
    return tuple(x.shape[1:])


class ScatteringFrontend(nn.Module):
    """Fixed scattering + the smallest learned adapter to conv2's output: ``N x 3 x S x S`` -> conv3's input.

    Fixed (no parameters): ``Scattering2D`` (J, L, order 2) per colour channel -> ``N x 3K x S/2^J x S/2^J``
    (K = 81), then adaptive average pooling to conv2's spatial size (8 -> 6 for ``small`` at 32,
    56 -> 13 for ``alexnet`` at 224). Learned: ``BatchNorm2d(3K, affine=False)`` (running statistics
    only, Oyallon et al.'s ``bn0``), a 1x1 convolution 3K -> 256 with bias, ``BatchNorm2d(256)`` and
    ReLU (Oyallon et al.'s ``conv1 + bn1 + relu``, with a 1x1 instead of a 3x3 kernel so that every
    spatial filter is the scattering's).
    """

    def __init__(self, arch: str, input_size: int, J: int = J_DEFAULT, L: int = L_DEFAULT, in_channels: int = 3):
        super().__init__()
        channels, h, w = frontend_output(arch, input_size)
        self.arch, self.input_size, self.out_shape = arch, input_size, (channels, h, w)
        self.scattering = Scattering2D((input_size, input_size), J, L)
        k = in_channels * self.scattering.out_channels
        self.pool = nn.AdaptiveAvgPool2d((h, w))
        self.norm = nn.BatchNorm2d(k, affine=False)
        self.adapter = nn.Sequential(nn.Conv2d(k, channels, 1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in (-1, 1) -> ``N x 256 x h x w``, the tensor conv3 takes."""
        s = self.scattering(x)                                   # N x C x K x H/2^J x W/2^J
        s = self.pool(s.flatten(1, 2))
        return self.adapter(self.norm(s))
