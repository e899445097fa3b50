"""PP-OCRv6 small text detector: PPLCNetV4 backbone, RepLK-FPN neck, DB head (deploy form).

Inference returns the probability map, as the shipped ONNX does. Training returns the DB dict
``{"prob", "thresh", "binary"}`` (engine.models.dbnet's contract, so the DB loss, labels and
training task serve both detectors): the threshold branch is not in the ONNX, so it starts
fresh, a copy of the probability branch's shape with its own initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Conv, PPLCNetV4, SqueezeExcite


class RSELayer(nn.Module):
    """1x1 (or given) conv without bias, then a squeeze-excite gate with a shortcut:
    ``y = c + c * gate(c)`` (PP-OCRv3's RSE-FPN)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.se = SqueezeExcite(cout, reduction=4, slope=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv(x)
        return c + self.se(c)


class LargeKernelRSE(nn.Module):
    """The RepLK smoothing of one level: a re-parameterised depthwise large kernel (one conv
    with bias in deploy form), then an RSE layer down to a quarter of the width."""

    def __init__(self, channels: int, out: int, kernel: int):
        super().__init__()
        self.dw = Conv(channels, channels, kernel, groups=channels)
        self.rse = RSELayer(channels, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rse(self.dw(x))


class RepLKFPN(nn.Module):
    """Lateral RSE per level, top-down nearest-upsample sums, large-kernel smoothing per level,
    everything upsampled to stride 4 and concatenated coarse-first (``out`` channels)."""

    def __init__(self, in_channels: Sequence[int], out: int = 96, kernel: int = 7):
        super().__init__()
        if out % 4:
            raise ValueError(f"RepLKFPN width must be divisible by 4, got {out}")
        # created coarse first, as the ONNX graph orders them
        self.lateral = nn.ModuleList(RSELayer(c, out) for c in reversed(in_channels))
        self.smooth = nn.ModuleList(LargeKernelRSE(out, out // 4, kernel) for _ in in_channels)
        self.out_channels = out

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        lat = [conv(f) for conv, f in zip(self.lateral, feats[::-1], strict=True)]  # coarse first
        merged = [lat[0]]
        for x in lat[1:]:
            merged.append(x + F.interpolate(merged[-1], scale_factor=2.0, mode="nearest"))
        outs = []
        for i, (smooth, x) in enumerate(zip(self.smooth, merged, strict=True)):
            y = smooth(x)
            up = 2 ** (len(merged) - 1 - i)
            outs.append(F.interpolate(y, scale_factor=float(up), mode="nearest") if up > 1 else y)
        return torch.cat(outs, dim=1)


class DBHeadBranch(nn.Module):
    """conv3x3 + ReLU at stride 4, two 2x2/2 transposed convs up to full size, sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        mid = channels // 4
        self.conv = Conv(channels, mid, 3, act=nn.ReLU())
        self.up1 = nn.ConvTranspose2d(mid, mid, 2, 2)
        self.up2 = nn.ConvTranspose2d(mid, 1, 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.up2(F.relu(self.up1(self.conv(x)))))


def _fresh(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class PPOCRv6Detector(nn.Module):
    """forward(x N×3×H×W, H and W multiples of 32): eval -> probability map N×1×H×W;
    train -> {"prob", "thresh", "binary"}."""

    def __init__(self, layout: str = "det_small", neck_channels: int = 96, kernel: int = 7,
                 k: float = 50.0):
        super().__init__()
        self.backbone = PPLCNetV4(layout)
        self.neck = RepLKFPN(self.backbone.out_channels, neck_channels, kernel)
        self.prob_head = DBHeadBranch(neck_channels)
        self.thresh_head = DBHeadBranch(neck_channels)
        self.k = float(k)
        _fresh(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()) and (
            x.shape[-1] % 32 or x.shape[-2] % 32
        ):
            raise ValueError(f"detector input H and W must be multiples of 32, got {tuple(x.shape[-2:])}")
        feat = self.neck(self.backbone(x))
        prob = self.prob_head(feat)
        if not self.training:
            return prob
        thresh = self.thresh_head(feat)
        return {"prob": prob, "thresh": thresh, "binary": torch.sigmoid(self.k * (prob - thresh))}
