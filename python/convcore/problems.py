"""Problem shapes as data: one compact string per problem, shared by the
tests and the benchmarks.

Convolution: ``n100_c6_h12_w12_k12_r5_s1_p0`` = batch N, input channels C,
input H x W, output channels K, kernel r (``r5`` or ``r5x3`` for kH x kW),
stride s, padding p, and optionally dilation d and groups g.  Each of
r/s/p/d takes ``a`` or ``axb``.

Max pooling: ``pool_n100_c6_h24_w24_r2_s2_p0``.

Batch normalisation: ``bn_n100_c32_h28_w28`` (the input; statistics per channel).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PAIR = r"(\d+)(?:x(\d+))?"


def _pair(m_a, m_b) -> tuple[int, int]:
    a = int(m_a)
    return (a, int(m_b) if m_b is not None else a)


def _fmt(v: tuple[int, int]) -> str:
    return str(v[0]) if v[0] == v[1] else f"{v[0]}x{v[1]}"


@dataclass(frozen=True)
class ConvProblem:
    N: int
    C: int
    H: int
    W: int
    K: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def name(self) -> str:
        s = (
            f"n{self.N}_c{self.C}_h{self.H}_w{self.W}_k{self.K}_r{_fmt(self.kernel)}"
            f"_s{_fmt(self.stride)}_p{_fmt(self.padding)}"
        )
        if self.dilation != (1, 1):
            s += f"_d{_fmt(self.dilation)}"
        if self.groups != 1:
            s += f"_g{self.groups}"
        return s

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.K, self.C // self.groups, *self.kernel)

    @property
    def output_hw(self) -> tuple[int, int]:
        out = []
        for i, size in enumerate((self.H, self.W)):
            eff = self.dilation[i] * (self.kernel[i] - 1) + 1
            out.append((size + 2 * self.padding[i] - eff) // self.stride[i] + 1)
        return out[0], out[1]

    @property
    def flops(self) -> float:
        """Floating-point operations of one pass (2 per multiply-add)."""
        P, Q = self.output_hw
        return (
            2.0
            * self.N
            * self.K
            * P
            * Q
            * (self.C // self.groups)
            * self.kernel[0]
            * self.kernel[1]
        )

    def kwargs(self) -> dict:
        return dict(
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups
        )


@dataclass(frozen=True)
class PoolProblem:
    N: int
    C: int
    H: int
    W: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)

    @property
    def name(self) -> str:
        return (
            f"pool_n{self.N}_c{self.C}_h{self.H}_w{self.W}_r{_fmt(self.kernel)}"
            f"_s{_fmt(self.stride)}_p{_fmt(self.padding)}"
        )

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    def kwargs(self) -> dict:
        return dict(kernel_size=self.kernel, stride=self.stride, padding=self.padding)


@dataclass(frozen=True)
class BatchNormProblem:
    N: int
    C: int
    H: int
    W: int

    @property
    def name(self) -> str:
        return f"bn_n{self.N}_c{self.C}_h{self.H}_w{self.W}"

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)


_CONV_RE = re.compile(
    rf"^n(\d+)_c(\d+)_h(\d+)_w(\d+)_k(\d+)_r{_PAIR}(?:_s{_PAIR})?(?:_p{_PAIR})?(?:_d{_PAIR})?(?:_g(\d+))?$"
)
_POOL_RE = re.compile(rf"^pool_n(\d+)_c(\d+)_h(\d+)_w(\d+)_r{_PAIR}(?:_s{_PAIR})?(?:_p{_PAIR})?$")

_BN_RE = re.compile(r"^bn_n(\d+)_c(\d+)_h(\d+)_w(\d+)$")


def parse(name: str):
    """Parse a compact problem string into a ConvProblem, PoolProblem or
    BatchNormProblem."""
    m = _BN_RE.match(name)
    if m:
        return BatchNormProblem(*(int(v) for v in m.groups()))
    m = _POOL_RE.match(name)
    if m:
        g = m.groups()
        kernel = _pair(g[4], g[5])
        stride = _pair(g[6], g[7]) if g[6] is not None else kernel
        padding = _pair(g[8], g[9]) if g[8] is not None else (0, 0)
        return PoolProblem(int(g[0]), int(g[1]), int(g[2]), int(g[3]), kernel, stride, padding)
    m = _CONV_RE.match(name)
    if not m:
        raise ValueError(f"not a problem string: {name!r}")
    g = m.groups()
    return ConvProblem(
        N=int(g[0]),
        C=int(g[1]),
        H=int(g[2]),
        W=int(g[3]),
        K=int(g[4]),
        kernel=_pair(g[5], g[6]),
        stride=_pair(g[7], g[8]) if g[7] is not None else (1, 1),
        padding=_pair(g[9], g[10]) if g[9] is not None else (0, 0),
        dilation=_pair(g[11], g[12]) if g[11] is not None else (1, 1),
        groups=int(g[13]) if g[13] is not None else 1,
    )


# The exact layers of the two Fashion-MNIST models at the training batch size (100).
TUTORIAL_LAYERS = [
    "n100_c1_h28_w28_k6_r5_s1_p0",
    "pool_n100_c6_h24_w24_r2_s2_p0",
    "n100_c6_h12_w12_k12_r5_s1_p0",
    "pool_n100_c12_h8_w8_r2_s2_p0",
]
WIDE_LAYERS = [
    "n100_c1_h28_w28_k32_r3_s1_p1",
    "n100_c32_h28_w28_k32_r3_s1_p1",
    "pool_n100_c32_h28_w28_r2_s2_p0",
    "n100_c32_h14_w14_k64_r3_s1_p1",
    "n100_c64_h14_w14_k64_r3_s1_p1",
    "pool_n100_c64_h14_w14_r2_s2_p0",
]
GENERIC_LAYERS = [
    "n32_c64_h56_w56_k128_r3_s1_p1",
    "n32_c64_h56_w56_k128_r3_s2_p1",
]
# Small awkward problems every implementation must get right.
EDGE_CASES = [
    "n1_c1_h1_w1_k1_r1_s1_p0",
    "n1_c1_h5_w5_k1_r5_s1_p0",  # kernel as large as the input
    "n1_c1_h3_w3_k2_r5_s1_p1",  # kernel as large as the padded input
    "n2_c3_h7_w9_k5_r3_s4_p0",  # stride larger than kernel
    "n1_c3_h5_w6_k4_r3_s1_p4",  # padding larger than the kernel
    "n3_c5_h11_w13_k7_r3x2_s2x1_p1x0",
    "n2_c4_h9_w9_k6_r3_s1_p2_d2",
    "n2_c6_h8_w7_k9_r3_s1_p1_g3",
    "n2_c8_h6_w6_k8_r3_s1_p1_g8",  # depthwise
    "n1_c9_h4_w3_k17_r1_s1_p0",  # pointwise, channels not a multiple of 8
    "n5_c2_h3_w20_k3_r2_s1_p0",  # width below one SIMD tile after the kernel
    "n1_c16_h2_w2_k16_r2_s2_p0",
]

ALL_CONV = [
    p
    for p in TUTORIAL_LAYERS + WIDE_LAYERS + GENERIC_LAYERS + EDGE_CASES
    if not p.startswith("pool_")
]
ALL_POOL = [p for p in TUTORIAL_LAYERS + WIDE_LAYERS if p.startswith("pool_")]
# Batch normalisation after the wide model's convolutions (conv -> BN -> ReLU),
# and a deeper 7x7 stage at batch 128.
BN_LAYERS = ["bn_n100_c32_h28_w28", "bn_n100_c64_h14_w14", "bn_n128_c64_h7_w7"]
