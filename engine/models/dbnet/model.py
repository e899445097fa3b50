"""DBNet (Liao et al., "Real-time Scene Text Detection with Differentiable Binarization", 2020).

backbone (strides 4..32) -> FPN neck -> DB head.  The head predicts a probability map P and a
threshold map T at full input resolution; training also uses the approximate binary map
B = sigmoid(k (P - T)) (k = 50), which makes the binarization differentiable so the threshold
branch learns where text borders are.  At inference only P is needed (the paper thresholds P at a
fixed value and unclips), so eval mode runs and returns just P: that is the graph ONNX export,
quantization and TensorRT see, and it skips the threshold branch's cost.

Input height and width must be multiples of 32 (engine.runtime.preprocess.detector_input pads
to that) so the 2x nearest upsampling in the neck lines up exactly with the lateral features; a
fixed ``scale_factor`` also keeps the exported Resize nodes free of shape arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import _init_weights, build_backbone, conv_bn_act


class FPN(nn.Module):
    """Reduce each level to ``inner`` channels (1x1), add top-down, smooth (3x3 to inner/4),
    upsample every level to stride 4 and concatenate -> ``inner`` channels at 1/4 resolution."""

    def __init__(self, in_channels: Sequence[int], inner: int = 256):
        super().__init__()
        if inner % 4:
            raise ValueError(f"FPN inner channels must be divisible by 4, got {inner}")
        self.lateral = nn.ModuleList(nn.Conv2d(c, inner, 1, bias=False) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Conv2d(inner, inner // 4, 3, padding=1, bias=False) for _ in in_channels
        )
        self.out_channels = inner

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 1, 0, -1):  # top-down pathway
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2.0, mode="nearest")
        outs = []
        for i, (conv, x) in enumerate(zip(self.smooth, lat, strict=True)):
            y = conv(x)
            if i:
                y = F.interpolate(y, scale_factor=float(2**i), mode="nearest")
            outs.append(y)
        return torch.cat(outs[::-1], dim=1)  # coarse first, as in the reference implementation


class DBHeadBranch(nn.Module):
    """conv3x3-BN-ReLU at 1/4, two 2x2 stride-2 transposed convs up to full size, sigmoid."""

    def __init__(self, inner: int, bias_init: float = 0.0):
        super().__init__()
        mid = inner // 4
        self.body = nn.Sequential(
            conv_bn_act(inner, mid, 3),
            nn.ConvTranspose2d(mid, mid, 2, 2),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(mid, 1, 2, 2),
        )
        self._bias_init = bias_init

    def reset_output_bias(self) -> None:
        last = self.body[-1]
        assert isinstance(last, nn.ConvTranspose2d) and last.bias is not None
        nn.init.constant_(last.bias, self._bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


class DBNet(nn.Module):
    """DBNet detector.

    forward(x N×3×H×W, H and W multiples of 32):
      * train mode -> {"prob", "thresh", "binary"}, each N×1×H×W in [0, 1];
      * eval mode  -> the probability map N×1×H×W (sigmoid applied inside).
    """

    def __init__(
        self,
        backbone: str = "mobilenetv3",
        inner_channels: int = 96,
        k: float = 50.0,
        width_mult: float | None = None,
        variant: str | None = None,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        bb_kwargs: dict[str, object] = {}
        if width_mult is not None:
            bb_kwargs["width_mult"] = width_mult
        if variant is not None:
            if backbone != "mobilenetv3":
                raise ValueError("'variant' (large/small) only applies to the mobilenetv3 backbone")
            bb_kwargs["variant"] = variant
        self.backbone = build_backbone(backbone, **bb_kwargs)
        self.neck = FPN(self.backbone.out_channels, inner_channels)  # type: ignore[arg-type]
        # Most pixels are background: start P near `prior_prob` (focal-loss style prior) so the
        # first steps do not spend themselves pushing a 0.5 map down everywhere.
        bias = float(torch.logit(torch.tensor(prior_prob)))
        self.prob_head = DBHeadBranch(inner_channels, bias_init=bias)
        self.thresh_head = DBHeadBranch(inner_channels, bias_init=0.0)
        self.k = float(k)
        _init_weights(self.neck)
        _init_weights(self.prob_head)
        _init_weights(self.thresh_head)
        self.prob_head.reset_output_bias()
        self.thresh_head.reset_output_bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()) and (
            x.shape[-1] % 32 or x.shape[-2] % 32
        ):
            raise ValueError(
                f"DBNet input H and W must be multiples of 32, got {tuple(x.shape[-2:])}; "
                "use engine.runtime.preprocess.detector_input"
            )
        feat = self.neck(self.backbone(x))
        prob = self.prob_head(feat)
        if not self.training:
            return prob
        thresh = self.thresh_head(feat)
        binary = torch.sigmoid(self.k * (prob - thresh))
        return {"prob": prob, "thresh": thresh, "binary": binary}
