"""CRNN text-line recognizer (Shi et al. 2015): conv features -> sequence model -> per-step classes.

The conv extractor is a VGG-style stack with BatchNorm: two 2x2 poolings (width / 4, which is
enough time steps for CTC on dense nameplate text at the default crop aspect) followed by
height-only (2, 1) poolings, and a learned (H/16, 1) convolution that collapses the remaining
height to 1.  Input height must be a multiple of 16 (32 and 48 are the supported defaults);
width is free (a multiple of 4 gives exactly T = W / 4 steps; recognizer_input uses multiples of 8).

Two sequence models:
  * ``"bilstm"`` — 2-layer bidirectional LSTM, the classic CRNN;
  * ``"conv"``  — residual 1-D convolutions (Conv-BN-ReLU, kernel 5 by default).  Everything is
    a Conv, so onnxruntime's static QDQ quantizes the whole net (onnxruntime quantizes LSTM only
    dynamically) and TensorRT builds it without RNN layers.

forward(x N×3×H×W in [-1, 1]) returns raw logits N×T×C in both train and eval mode; softmax is
applied outside (the CTC loss takes log_softmax, the runtime decoder softmaxes).  Class 0 is the
CTC blank, class i is character i-1 of the charset.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..backbones import _init_weights, conv_bn_act


class ConvFeatures(nn.Module):
    """VGG-ish extractor: N×3×H×W -> N×C×1×(W/4)."""

    def __init__(self, height: int = 32, channels: Sequence[int] = (32, 64, 128, 256)):
        super().__init__()
        if height % 16 or height < 16:
            raise ValueError(f"recognizer height must be a positive multiple of 16, got {height}")
        c0, c1, c2, c3 = channels
        self.body = nn.Sequential(
            conv_bn_act(3, c0, 3),
            nn.MaxPool2d(2, 2),  # H/2, W/2
            conv_bn_act(c0, c1, 3),
            nn.MaxPool2d(2, 2),  # H/4, W/4
            conv_bn_act(c1, c2, 3),
            conv_bn_act(c2, c2, 3),
            nn.MaxPool2d((2, 1), (2, 1)),  # H/8
            conv_bn_act(c2, c3, 3),
            nn.MaxPool2d((2, 1), (2, 1)),  # H/16
        )
        self.collapse = nn.Sequential(
            nn.Conv2d(c3, c3, (height // 16, 1), bias=False), nn.BatchNorm2d(c3), nn.ReLU(True)
        )
        self.out_channels = c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.collapse(self.body(x))


class BiLSTMSequence(nn.Module):
    def __init__(self, dim: int, hidden: int = 128, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.rnn = nn.LSTM(
            dim,
            hidden,
            num_layers=layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # N×T×D -> N×T×2h
        return self.rnn(x)[0]


class ConvSequence(nn.Module):
    """Residual 1-D conv stack over time; receptive field grows by (kernel-1) per layer."""

    def __init__(self, dim: int, hidden: int = 256, layers: int = 4, kernel: int = 5):
        super().__init__()
        self.inp = nn.Conv1d(dim, hidden, 1) if dim != hidden else nn.Identity()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
            )
            for _ in range(layers)
        )
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # N×T×D -> N×T×hidden
        y = self.inp(x.transpose(1, 2))
        for block in self.blocks:
            y = y + block(y)
        return y.transpose(1, 2)


class CRNN(nn.Module):
    """Conv features + sequence model + linear classifier -> logits N×T×C."""

    def __init__(
        self,
        num_classes: int,
        height: int = 32,
        sequence: str = "bilstm",
        channels: Sequence[int] = (32, 64, 128, 256),
        hidden: int = 128,
        layers: int = 2,
        kernel: int = 5,
        dropout: float = 0.0,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"num_classes must count the blank plus >= 1 character, got {num_classes}"
            )
        self.height = height
        self.num_classes = num_classes
        self.features = ConvFeatures(height, channels)
        dim = self.features.out_channels
        self.sequence: nn.Module
        if sequence == "bilstm":
            self.sequence = BiLSTMSequence(dim, hidden, layers, dropout)
        elif sequence == "conv":
            self.sequence = ConvSequence(dim, hidden, layers, kernel)
        else:  # the registry reports unknown names with suggestions; this guards direct use
            raise ValueError(f"unknown sequence model {sequence!r} (known: bilstm, conv)")
        self.classifier = nn.Linear(self.sequence.out_dim, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).squeeze(2).transpose(1, 2)  # N×T×C
        return self.classifier(self.sequence(f))
