"""A hook-based multiply-accumulate (MAC) counter for the models defined here.

Why our own: fvcore/thop are not dependencies, and the numbers that matter for choosing an edge
default are the convolution/linear/LSTM MACs, which forward hooks count exactly for these nets.
Elementwise ops (BN, activations, adds, upsampling) are ignored — they are memory-bound, not
MAC-bound, and a few percent of the total.  FLOPs ≈ 2 × MACs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Cost:
    macs: int
    params: int
    by_module: dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return 2.0 * self.macs / 1e9

    def __str__(self) -> str:
        return f"{self.macs / 1e9:.3f} GMAC ({self.gflops:.2f} GFLOP), {self.params / 1e6:.3f} M params"


def _conv_macs(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(m, nn.ConvTranspose1d | nn.ConvTranspose2d):
        # every input element is multiplied by a (cout/groups)·k kernel
        k = int(torch.tensor(m.kernel_size).prod())
        return inp.numel() * (m.out_channels // m.groups) * k
    assert isinstance(m, nn.Conv1d | nn.Conv2d)
    k = int(torch.tensor(m.kernel_size).prod())
    return out.numel() * (m.in_channels // m.groups) * k


def _lstm_macs(m: nn.LSTM, inp: torch.Tensor) -> int:
    t = inp.shape[1] if m.batch_first else inp.shape[0]
    n = inp.shape[0] if m.batch_first else inp.shape[1]
    dirs = 2 if m.bidirectional else 1
    total = 0
    d_in = m.input_size
    for _ in range(m.num_layers):
        total += dirs * 4 * m.hidden_size * (d_in + m.hidden_size)
        d_in = m.hidden_size * dirs
    return total * t * n


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> Cost:
    """Run ``model(*inputs)`` under no_grad with hooks; return MACs, params and a per-module split.

    The model's current mode is used (eval mode counts what is exported).
    """
    by_module: dict[str, int] = {}
    hooks = []

    def make_hook(name: str):
        def hook(m: nn.Module, args, out):
            x = args[0]
            if isinstance(m, nn.LSTM):
                macs = _lstm_macs(m, x)
            elif isinstance(m, nn.Linear):
                macs = x.numel() // m.in_features * m.in_features * m.out_features
            else:
                macs = _conv_macs(m, x, out)
            by_module[name] = by_module.get(name, 0) + int(macs)

        return hook

    kinds = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear, nn.LSTM)
    for name, m in model.named_modules():
        if isinstance(m, kinds):
            hooks.append(m.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return Cost(sum(by_module.values()), params, by_module)


def report(size: int = 640, rec_width: int = 320) -> list[str]:
    """Cost lines for every registered variant (detector at size×size, recognizer at each height it accepts × rec_width)."""
    from . import DEFAULT_CONFIGS, build_detector, build_recognizer
    from .registry import input_spec

    lines = []
    x = torch.zeros(1, 3, size, size)
    for arch, variants in DEFAULT_CONFIGS["detector"].items():
        for backbone in variants:
            model = build_detector(arch, backbone).eval()
            lines.append(f"{arch}/{backbone} @{size}x{size}: {count_macs(model, x)}")
    for arch, variants in DEFAULT_CONFIGS["recognizer"].items():
        for seq in variants:
            for h in input_spec("recognizer", arch)["heights"]:
                model = build_recognizer(arch, seq, num_classes=76, height=h).eval()
                xr = torch.zeros(1, 3, h, rec_width)
                lines.append(f"{arch}/{seq} @{h}x{rec_width}: {count_macs(model, xr)}")
    return lines


if __name__ == "__main__":
    for line in report():
        print(line)
