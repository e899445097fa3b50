"""Detector backbones in plain torch: ResNet-18 and a MobileNetV3 (large/small) feature pyramid.

Why written here: torchvision does not import beside the pinned CPU torch (see DESIGN.md), and
no weights can be downloaded anyway, so both nets are defined from the papers and trained from
scratch.  Every backbone returns four feature maps at strides 4, 8, 16 and 32 and exposes their
channel counts as ``out_channels`` so the FPN neck can be built without running the net.

Only ONNX-friendly ops are used (Conv, BatchNorm, ReLU, HardSwish/HardSigmoid, MaxPool,
global average pooling) so the exported graph quantizes with onnxruntime's static QDQ and builds
in TensorRT without plugins.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channel counts to multiples of 8, as MobileNet does (SIMD- and TensorRT-friendly)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # never round down by more than 10 %
        new_v += divisor
    return new_v


def conv_bn_act(
    cin: int,
    cout: int,
    k: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias, BN follows) + BN + optional activation: the building block everywhere."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.Hardswish) else act())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# ResNet-18
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs + identity or 1x1 projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn_act(cin, cout, 3, stride)
        self.conv2 = conv_bn_act(cout, cout, 3, 1, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) without the classifier; ``width_mult`` scales every stage.

    Output strides 4/8/16/32 with 64/128/256/512 channels at width 1.0.  At 640x640 the trunk
    alone costs ~15 GMAC, which is why it is the accuracy option, not the edge default.
    """

    def __init__(self, width_mult: float = 1.0, in_channels: int = 3):
        super().__init__()
        widths = [make_divisible(c * width_mult) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(conv_bn_act(in_channels, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.out_channels: list[int] = widths
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


# --------------------------------------------------------------------------------------------
# MobileNetV3
# --------------------------------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with hard-sigmoid gating (MobileNetV3 §5.3), reduction 4."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        mid = make_divisible(channels / reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, mid, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(mid, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck: 1x1 expand -> depthwise kxk (stride) -> optional SE -> 1x1 project."""

    def __init__(self, cin: int, exp: int, cout: int, k: int, stride: int, use_se: bool, act: str):
        super().__init__()
        act_cls: type[nn.Module] = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(conv_bn_act(cin, exp, 1, 1, act=act_cls))
        layers.append(conv_bn_act(exp, exp, k, stride, groups=exp, act=act_cls))
        if use_se:
            layers.append(SqueezeExcite(exp))
        layers.append(conv_bn_act(exp, cout, 1, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


# (kernel, expansion, out, SE, activation, stride) from Howard et al. 2019, tables 1 and 2.
MOBILENETV3_LARGE: list[tuple[int, int, int, bool, str, int]] = [
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
]
MOBILENETV3_SMALL: list[tuple[int, int, int, bool, str, int]] = [
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]
# Channels of the last 1x1 conv (the stride-32 output), as in the paper and PP-OCR's detector.
_LAST_CONV = {"large": 960, "small": 576}


class MobileNetV3(nn.Module):
    """MobileNetV3 trunk returning strides 4/8/16/32 (the last after the 1x1 "conv_last").

    ``width_mult`` 0.5 with the large table is the PP-OCR mobile detector's choice: about
    0.6 GMAC at 640x640 for the trunk, a ~25x saving over ResNet-18.
    """

    def __init__(self, variant: str = "large", width_mult: float = 0.5, in_channels: int = 3):
        super().__init__()
        if variant not in _LAST_CONV:
            raise ValueError(f"MobileNetV3 variant must be 'large' or 'small', got {variant!r}")
        table = MOBILENETV3_LARGE if variant == "large" else MOBILENETV3_SMALL
        cin = make_divisible(16 * width_mult)
        self.stem = conv_bn_act(in_channels, cin, 3, 2, act=nn.Hardswish)
        blocks: list[nn.Module] = []
        strides: list[int] = []
        stride = 2
        for k, exp, cout, se, act, s in table:
            exp_c = make_divisible(exp * width_mult)
            out_c = make_divisible(cout * width_mult)
            blocks.append(InvertedResidual(cin, exp_c, out_c, k, s, se, act))
            stride *= s
            strides.append(stride)
            cin = out_c
        self.blocks = nn.ModuleList(blocks)
        # the output of the last block at each stride is a pyramid level
        self.taps: list[int] = [max(i for i, s in enumerate(strides) if s == t) for t in (4, 8, 16)]
        last_c = make_divisible(_LAST_CONV[variant] * width_mult)
        self.conv_last = conv_bn_act(cin, last_c, 1, 1, act=nn.Hardswish)
        self.out_channels: list[int] = [
            *(_block_out(self.blocks[i]) for i in self.taps),
            last_c,
        ]
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        feats.append(self.conv_last(x))
        return feats


def _block_out(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


def _init_weights(model: nn.Module) -> None:
    """Kaiming init for convs, unit BN: training from scratch needs a sane start."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Conv1d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


BACKBONES: dict[str, type[nn.Module]] = {"resnet18": ResNet18, "mobilenetv3": MobileNetV3}


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Instantiate a backbone by registry name (the registry in engine.models validates names)."""
    return BACKBONES[name](**kwargs)


def feature_channels(backbone: nn.Module) -> Sequence[int]:
    """Channels of the stride-4/8/16/32 outputs."""
    return list(backbone.out_channels)  # type: ignore[arg-type]
