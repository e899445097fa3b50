"""Building blocks of the PP-OCRv6 networks, in the deploy form their shipped ONNX files hold.

PaddleOCR trains these nets with BatchNorm after every convolution and with re-parameterisable
side branches; its export folds all of that into plain convolutions with a bias (the ONNX graph
is the authority on the deploy form). The modules here are that deploy form: every ``Conv`` has
a bias and no norm, so the converted weights load one to one and the net computes exactly what
the ONNX computes. Fine-tuning trains this form directly (at a lower learning rate than a
from-scratch net), and export, pruning and quantization see the same graph the ONNX had.

Only ops that every target runtime accepts (Conv, ConvTranspose, elementwise, ReduceMean,
nearest Resize, MatMul, Softmax, LayerNorm as primitives) are used; the TensorRT 8.2 operator
list on a Jetson Nano includes all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HardSigmoid(nn.Module):
    """Paddle's hard sigmoid ``clip(slope * x + 0.5, 0, 1)``: slope 1/6 (= torch's) in the
    backbone's squeeze-excite, 0.2 in the FPN's."""

    def __init__(self, slope: float = 1.0 / 6.0):
        super().__init__()
        self.slope = float(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if abs(self.slope - 1.0 / 6.0) < 1e-7:
            return F.hardsigmoid(x)
        return torch.clamp(x * self.slope + 0.5, 0.0, 1.0)


class Conv(nn.Module):
    """Conv2d with bias (a folded conv + BN) and an optional activation.

    ``same_upper``: ONNX ``auto_pad=SAME_UPPER`` for the even 2x2 stem kernels, i.e. pad the
    right and bottom only, so the output keeps the input size.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int | tuple[int, int] = 1,
        stride: int | tuple[int, int] = 1,
        groups: int = 1,
        act: nn.Module | None = None,
        bias: bool = True,
        same_upper: bool = False,
    ):
        super().__init__()
        kh, kw = (k, k) if isinstance(k, int) else k
        self.same_upper = same_upper
        padding = (0, 0) if same_upper else (kh // 2, kw // 2)
        self.conv = nn.Conv2d(cin, cout, (kh, kw), stride, padding, groups=groups, bias=bias)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_upper:
            kh, kw = self.conv.kernel_size
            x = F.pad(x, (0, kw - 1, 0, kh - 1))
        return self.act(self.conv(x))


class SqueezeExcite(nn.Module):
    """Channel gate ``x * hardsigmoid(W2 relu(W1 mean(x)))`` (PP-LCNet's SE, reduction 4)."""

    def __init__(self, channels: int, reduction: int = 4, slope: float = 1.0 / 6.0):
        super().__init__()
        mid = channels // reduction
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.expand = nn.Conv2d(mid, channels, 1)
        self.gate = HardSigmoid(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(F.relu(self.reduce(s))))


class StemBlock(nn.Module):
    """PP-HGNetV2's stem: 3x3/2 conv, a two-conv 2x2 branch beside a 2x2 max-pool, concat,
    3x3/2 conv, 1x1 conv (stride 4 in all)."""

    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__()
        self.stem1 = Conv(cin, mid, 3, 2, act=nn.ReLU())
        self.stem2a = Conv(mid, mid // 2, 2, act=nn.ReLU(), same_upper=True)
        self.stem2b = Conv(mid // 2, mid, 2, act=nn.ReLU(), same_upper=True)
        self.stem3 = Conv(mid * 2, mid, 3, 2, act=nn.ReLU())
        self.stem4 = Conv(mid, cout, 1, act=nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem1(x)
        branch = self.stem2b(self.stem2a(x))
        # inputs are post-ReLU (>= 0): zero padding is max-pool's -inf padding here
        pooled = F.max_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1)
        x = torch.cat([pooled, branch], dim=1)
        return self.stem4(self.stem3(x))


class LCNetV4Block(nn.Module):
    """Token mixer (depthwise 3x3, optional SE) then channel mixer (1x1 expand x2, GELU, 1x1),
    the channel mixer residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int | tuple[int, int] = 1, se: bool = False):
        super().__init__()
        self.dw = Conv(cin, cin, 3, stride, groups=cin)
        self.se = SqueezeExcite(cin) if se else nn.Identity()
        self.expand = Conv(cin, cin * 2, 1, act=nn.GELU())
        self.project = Conv(cin * 2, cout, 1)
        self.residual = cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.se(self.dw(x))
        y = self.project(self.expand(t))
        return t + y if self.residual else y


Stride = int | tuple[int, int]
#: per variant: the stem's (mid, out) widths, then (channels, stride, se) per block per stage;
#: each stage's first block changes the width. Read off the shipped ONNX graphs (PP-OCRv6 small
#: det / rec).
LCNETV4_LAYOUTS: dict[str, tuple[tuple[int, int], list[list[tuple[int, Stride, bool]]]]] = {
    "det_small": (
        (24, 48),
        [
            [(48, 1, True), (48, 1, False)],
            [(96, 2, False), (96, 1, True), (96, 1, False)],
            [(192, 2, False), (192, 1, True), (192, 1, False), (192, 1, True), (192, 1, False)],
            [(384, 2, False), (384, 1, True), (384, 1, False)],
        ],
    ),
    "rec_small": (
        (48, 96),
        [
            [(96, 1, True), (96, 1, False), (96, 1, False)],
            [(192, (2, 1), False), (192, 1, True), (192, 1, False), (192, 1, True),
             (192, 1, False), (192, 1, True), (192, 1, False)],
            [(384, (2, 1), False), (384, 1, True), (384, 1, False)],
        ],
    ),
}


class PPLCNetV4(nn.Module):
    """The PP-OCRv6 backbone. ``forward`` returns the output of every stage (strides 4, 8, 16,
    32 for the detector layout; the recognizer uses the last one)."""

    def __init__(self, layout: str = "det_small"):
        super().__init__()
        if layout not in LCNETV4_LAYOUTS:
            raise ValueError(f"unknown PPLCNetV4 layout {layout!r}; known: {', '.join(LCNETV4_LAYOUTS)}")
        (mid, width), layout_stages = LCNETV4_LAYOUTS[layout]
        self.stem = StemBlock(3, mid, width)
        stages = []
        for stage in layout_stages:
            blocks = []
            for cout, stride, se in stage:
                blocks.append(LCNetV4Block(width, cout, stride, se))
                width = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = [stage[-1][0] for stage in layout_stages]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs
