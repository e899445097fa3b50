"""PP-OCRv6 small text recognizer: PPLCNetV4 backbone, light SVTR neck, CTC classifier.

Input N×3×48×W (W a multiple of 8, BGR scaled to [-1, 1]); output raw logits N×(W/8)×C as
engine.models.crnn's recognizer does (softmax is the decoder's and the CTC loss's business; the
shipped ONNX applies it inside). The classifier is a plain ``Linear`` named ``classifier``, so a
charset cut or remap (engine.training.pretrained.remap_charset) is the same row selection for every recognizer.

The neck, read off the shipped graph: a 1x1 conv + BN + swish shortcut beside (1x1 conv + BN +
swish) + (depthwise 1x7 + BN + swish), two pre-norm transformer blocks over the W/8 steps
(8 heads of 15, swish MLP x2), a final LayerNorm, then the shortcut added back. Its BatchNorms
are real ones in the ONNX (not folded), so they stay BatchNorm here.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import PPLCNetV4


class ConvBNSwish(nn.Module):
    def __init__(self, cin: int, cout: int, k: tuple[int, int] = (1, 1), groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=(k[0] // 2, k[1] // 2), groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Attention(nn.Module):
    """Multi-head self-attention written as MatMul + Softmax (what every target builds)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, c))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LightSVTRNeck(nn.Module):
    """N×C×1×T backbone features -> N×T×dims sequence features."""

    def __init__(self, cin: int, dims: int = 120, depth: int = 2, heads: int = 8,
                 mlp_ratio: float = 2.0, local_kernel: int = 7):
        super().__init__()
        self.shortcut = ConvBNSwish(cin, dims)
        self.conv = ConvBNSwish(cin, dims)
        self.local = ConvBNSwish(dims, dims, (1, local_kernel), groups=dims)
        self.blocks = nn.ModuleList(TransformerBlock(dims, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dims, eps=1e-6)
        self.out_channels = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = self.shortcut(x)
        z = self.conv(x)
        z = z + self.local(z)
        n, c, h, w = z.shape
        seq = z.flatten(2).transpose(1, 2)  # N×(H·W)×C, H = 1
        for block in self.blocks:
            seq = block(seq)
        seq = self.norm(seq)
        z = seq.transpose(1, 2).reshape(n, c, h, w) + short
        return z.flatten(2).transpose(1, 2)  # N×T×C


class PPOCRv6Recognizer(nn.Module):
    """Backbone (stride 4 in width, stride 16 in height) + average pool over the remaining
    height and 2 columns -> T = W/8 steps.  Pretrained at height 48 (pool 3×2); height 32
    (pool 2×2) is the same function on smaller lines, about 0.44× the MACs of a line, for
    recipes that fine-tune the backbone to the smaller scale."""

    downsample = 8

    def __init__(self, num_classes: int, height: int = 48, layout: str = "rec_small",
                 dims: int = 120, depth: int = 2, heads: int = 8, mlp_ratio: float = 2.0,
                 local_kernel: int = 7):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must count the blank plus >= 1 character, got {num_classes}")
        if height % 16 or height < 16:
            raise ValueError(f"the PP-OCRv6 recognizer reads lines whose height is a multiple "
                             f"of 16, got height {height}")
        self.height, self.num_classes = height, num_classes
        self.backbone = PPLCNetV4(layout)
        self.pool = nn.AvgPool2d((height // 16, 2), (height // 16, 2))
        self.neck = LightSVTRNeck(self.backbone.out_channels[-1], dims, depth, heads, mlp_ratio,
                                  local_kernel)
        self.classifier = nn.Linear(dims, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.pool(self.backbone(x)[-1])
        return self.classifier(self.neck(feat))
