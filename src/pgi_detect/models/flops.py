"""GFLOPs the way the reference reports them (spec section 1.1), without thop.

GFLOPs = 2 * (sum over convs of H_out*W_out*C_out*(C_in/groups)*k^2 + sum over BNs of 4*numel
+ sum over upsamples of out numel) / 1e9. Everything else (bias, activations, pooling, interpolation in
CBFuse, DFL) counts zero. The forward runs on the meta device, so even 640x640 costs no compute.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from pgi_detect.models.blocks import Upsample


def _conv_macs(module: nn.Conv2d, output: Tensor) -> int:
    kernel = module.kernel_size[0] * module.kernel_size[1]
    return output.numel() * (module.in_channels // module.groups) * kernel


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers live on the meta device (no data is copied)."""
    memo: dict[int, object] = {}
    for tensor in model.parameters():
        memo[id(tensor)] = nn.Parameter(torch.empty_like(tensor, device="meta"), tensor.requires_grad)
    for tensor in model.buffers():
        memo[id(tensor)] = torch.empty_like(tensor, device="meta")
    return copy.deepcopy(model, memo)


def count_gflops(model: nn.Module, image_size: int | tuple[int, int] = 640, batch: int = 1) -> float:
    """GFLOPs of one forward of a `(batch, 3, H, W)` input; `model` itself is not touched."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    meta_model = meta_copy(model).eval()
    total = 0

    def on_forward(module: nn.Module, _inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += _conv_macs(module, output)
        elif isinstance(module, nn.BatchNorm2d):
            total += 4 * output.numel()
        elif isinstance(module, Upsample):
            total += output.numel()

    handles = [
        m.register_forward_hook(on_forward)
        for m in meta_model.modules()
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, Upsample))
    ]
    try:
        with torch.no_grad():
            meta_model(torch.zeros(batch, 3, height, width, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return 2 * total / 1e9


def count_parameters(model: nn.Module) -> int:
    """All parameters, frozen ones included (the reference counts the DFL bins)."""
    return sum(p.numel() for p in model.parameters())
