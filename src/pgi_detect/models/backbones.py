"""Custom backbones: the interface, a timm adapter, and the GELAN neck that joins them to a DetectHead.

A backbone is any nn.Module mapping images `(B, 3, H, W)` in [0, 1] to three maps at strides 8, 16, 32
(P3, P4, P5) and exposing their widths as `out_channels: tuple[int, int, int]`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pgi_detect.models.blocks import AConv, Concat, RepNCSPELAN4, SPPELAN, Upsample
from pgi_detect.models.graph import Layer, MainTable
from pgi_detect.models.heads import STRIDES, DetectHead


class Backbone(nn.Module):
    """Base class for custom backbones: set `out_channels` and return `(p3, p4, p5)` from `forward`."""

    out_channels: tuple[int, int, int]

    def forward(self, images: Tensor) -> Sequence[Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


class TimmBackbone(Backbone):
    """A timm model (`features_only=True`) reduced to its stride 8/16/32 feature maps.

    Inputs in [0, 1] are normalised with the model's pretrained mean/std when `normalize` is set, so
    `pretrained=True` weights see what they were trained on. `out_indices` picks timm feature levels
    explicitly; by default the levels whose reduction is 8, 16 and 32 are used.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        out_indices: Sequence[int] | None = None,
        normalize: bool = True,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        import timm  # imported on use: ~1.4 s that zoo-model users do not pay

        self.body = timm.create_model(model_name, pretrained=pretrained, features_only=True, **timm_kwargs)
        reductions = list(self.body.feature_info.reduction())
        channels = list(self.body.feature_info.channels())
        if out_indices is None:
            missing = [s for s in STRIDES if s not in reductions]
            if missing:
                raise ValueError(
                    f"timm model {model_name!r} has feature reductions {reductions}, "
                    f"none at stride(s) {missing}; pass out_indices"
                )
            positions = [reductions.index(s) for s in STRIDES]
        else:
            if len(out_indices) != 3:
                raise ValueError(f"out_indices needs 3 levels (P3, P4, P5), got {out_indices}")
            positions = list(out_indices)
        self.positions = positions
        self.out_channels = tuple(channels[p] for p in positions)
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.0, 0.0, 0.0)), cfg.get("std", (1.0, 1.0, 1.0))
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> list[Tensor]:
        if self.normalize:
            images = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        features = self.body(images)
        return [features[p] for p in self.positions]


class Pick(nn.Module):
    """Selects one map from a backbone's output tuple, giving it a row of its own in the layer table."""

    def __init__(self, c_ins: Sequence[int], index: int) -> None:
        super().__init__()
        self.index = index
        self.out_channels = c_ins[index]

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return features[self.index]


@dataclass(frozen=True)
class NeckSpec:
    """Widths of the neck outputs (P3, P4, P5) and the RepNCSP depth inside each GELAN block."""

    widths: tuple[int, int, int]
    depth: int = 3


NECKS: dict[str, NeckSpec] = {
    "gelan-t": NeckSpec((64, 96, 128), depth=3),
    "gelan-s": NeckSpec((128, 192, 256), depth=3),
}


def gelan_neck_table(backbone: nn.Module, neck: str | NeckSpec = "gelan-s") -> MainTable:
    """Layer table: backbone, SPPELAN, top-down and bottom-up RepNCSPELAN4 path (as in gelan-t/s), head; tagged
    like the zoo tables, so every auxiliary form attaches to it."""
    out_channels = getattr(backbone, "out_channels", None)
    if out_channels is None or len(tuple(out_channels)) != 3:
        raise ValueError(
            f"{type(backbone).__name__} needs `out_channels` = (P3, P4, P5) widths, got {out_channels}"
        )
    if isinstance(neck, str):
        if neck not in NECKS:
            raise KeyError(f"unknown neck {neck!r}; available: {', '.join(NECKS)}")
        neck = NECKS[neck]
    p3, p4, p5 = neck.widths
    depth = neck.depth
    return MainTable((
        Layer(-1, backbone),                                   # 0  (P3, P4, P5)
        Layer(0, Pick, (0,), tag="backbone.p3"),               # 1  P3
        Layer(0, Pick, (1,), tag="backbone.p4"),               # 2  P4
        Layer(0, Pick, (2,), tag="backbone.p5"),               # 3  P5
        Layer(-1, SPPELAN, (p5, p5 // 2), tag="neck.sppelan"), # 4
        Layer(-1, Upsample),                                   # 5
        Layer((-1, 2), Concat),                                # 6
        Layer(-1, RepNCSPELAN4, (p4, p4, p4 // 2, depth), tag="neck.top_down_p4"),  # 7
        Layer(-1, Upsample),                                   # 8
        Layer((-1, 1), Concat),                                # 9
        Layer(-1, RepNCSPELAN4, (p3, p3, p3 // 2, depth), tag="neck.p3"),  # 10 P3 out
        Layer(-1, AConv, (p4 // 2,)),                          # 11
        Layer((-1, 7), Concat),                                # 12
        Layer(-1, RepNCSPELAN4, (p4, p4, p4 // 2, depth), tag="neck.p4"),  # 13 P4 out
        Layer(-1, AConv, (p5 // 2,)),                          # 14
        Layer((-1, 4), Concat),                                # 15
        Layer(-1, RepNCSPELAN4, (p5, p5, p5 // 2, depth), tag="neck.p5"),  # 16 P5 out
        Layer((10, 13, 16), DetectHead),                       # 17
    ))
