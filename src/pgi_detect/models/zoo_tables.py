"""The zoo: the five GELAN tables (gelan-t/s/m/c/e) in official row order, and the yolov9 names, each a GELAN table
with the official auxiliary form of its size (models/auxiliary.py assembles the yolov9 tables from these).

Row i is official `model.i`. Args follow the input channels, as in the yaml: Conv(c_out, kernel, stride),
RepNCSPELAN4(c_out, c_split, c_stage, depth), ELAN1(c_out, c_split, c_stage), AConv/ADown(c_out),
SPPELAN(c_out, c_hidden), CBLinear(splits), CBFuse(picks). Heads get their input channels and the class
count from the builder. Tags name the rows the auxiliary branch reads (`graph.MainTable`).
"""
from __future__ import annotations

from pgi_detect.models.blocks import (
    ADown,
    AConv,
    CBFuse,
    CBLinear,
    Concat,
    Conv,
    ELAN1,
    RepNCSPELAN4,
    Silence,
    SPPELAN,
    Upsample,
)
from pgi_detect.models.graph import Layer, MainTable
from pgi_detect.models.heads import DetectHead

Rows = tuple[Layer, ...]
# Rows of gelan-t/s/m/c that the auxiliary forms and the neck name.
GELAN_TAGS = {4: "backbone.p3", 6: "backbone.p4", 8: "backbone.p5", 9: "neck.sppelan", 12: "neck.top_down_p4",
              15: "neck.p3", 18: "neck.p4", 21: "neck.p5"}
# gelan-e: backbone 1 (rows 1-9) feeds backbone 2 (15-28), which feeds the neck.
GELAN_E_TAGS = {5: "first_backbone.p3", 7: "first_backbone.p4", 9: "first_backbone.p5", 22: "backbone.p3",
                25: "backbone.p4", 28: "backbone.p5", 29: "neck.sppelan", 32: "neck.top_down_p4", 35: "neck.p3",
                38: "neck.p4", 41: "neck.p5"}


def main(source, block, *args) -> Layer:
    """A row of the main network."""
    return Layer(source, block, tuple(args))


def tagged(rows: Rows, tags: dict[int, str]) -> Rows:
    return tuple(Layer(row.source, row.block, row.args, tag=tags.get(index)) for index, row in enumerate(rows))

GELAN_T = MainTable(tagged((
    main(-1, Conv, 16, 3, 2),                       # 0  P1/2
    main(-1, Conv, 32, 3, 2),                       # 1  P2/4
    main(-1, ELAN1, 32, 32, 16),                    # 2
    main(-1, AConv, 64),                            # 3  P3/8
    main(-1, RepNCSPELAN4, 64, 64, 32, 3),          # 4
    main(-1, AConv, 96),                            # 5  P4/16
    main(-1, RepNCSPELAN4, 96, 96, 48, 3),          # 6
    main(-1, AConv, 128),                           # 7  P5/32
    main(-1, RepNCSPELAN4, 128, 128, 64, 3),        # 8
    main(-1, SPPELAN, 128, 64),                     # 9
    main(-1, Upsample),                             # 10
    main((-1, 6), Concat),                          # 11
    main(-1, RepNCSPELAN4, 96, 96, 48, 3),          # 12
    main(-1, Upsample),                             # 13
    main((-1, 4), Concat),                          # 14
    main(-1, RepNCSPELAN4, 64, 64, 32, 3),          # 15 P3 out
    main(-1, AConv, 48),                            # 16
    main((-1, 12), Concat),                         # 17
    main(-1, RepNCSPELAN4, 96, 96, 48, 3),          # 18 P4 out
    main(-1, AConv, 64),                            # 19
    main((-1, 9), Concat),                          # 20
    main(-1, RepNCSPELAN4, 128, 128, 64, 3),        # 21 P5 out
    main((15, 18, 21), DetectHead),                 # 22
), GELAN_TAGS))

GELAN_S = MainTable(tagged((
    main(-1, Conv, 32, 3, 2),                       # 0
    main(-1, Conv, 64, 3, 2),                       # 1
    main(-1, ELAN1, 64, 64, 32),                    # 2
    main(-1, AConv, 128),                           # 3
    main(-1, RepNCSPELAN4, 128, 128, 64, 3),        # 4
    main(-1, AConv, 192),                           # 5
    main(-1, RepNCSPELAN4, 192, 192, 96, 3),        # 6
    main(-1, AConv, 256),                           # 7
    main(-1, RepNCSPELAN4, 256, 256, 128, 3),       # 8
    main(-1, SPPELAN, 256, 128),                    # 9
    main(-1, Upsample),                             # 10
    main((-1, 6), Concat),                          # 11
    main(-1, RepNCSPELAN4, 192, 192, 96, 3),        # 12
    main(-1, Upsample),                             # 13
    main((-1, 4), Concat),                          # 14
    main(-1, RepNCSPELAN4, 128, 128, 64, 3),        # 15 P3 out
    main(-1, AConv, 96),                            # 16
    main((-1, 12), Concat),                         # 17
    main(-1, RepNCSPELAN4, 192, 192, 96, 3),        # 18 P4 out
    main(-1, AConv, 128),                           # 19
    main((-1, 9), Concat),                          # 20
    main(-1, RepNCSPELAN4, 256, 256, 128, 3),       # 21 P5 out
    main((15, 18, 21), DetectHead),                 # 22
), GELAN_TAGS))

GELAN_M = MainTable(tagged((
    main(-1, Conv, 32, 3, 2),                       # 0
    main(-1, Conv, 64, 3, 2),                       # 1
    main(-1, RepNCSPELAN4, 128, 128, 64, 1),        # 2
    main(-1, AConv, 240),                           # 3
    main(-1, RepNCSPELAN4, 240, 240, 120, 1),       # 4
    main(-1, AConv, 360),                           # 5
    main(-1, RepNCSPELAN4, 360, 360, 180, 1),       # 6
    main(-1, AConv, 480),                           # 7
    main(-1, RepNCSPELAN4, 480, 480, 240, 1),       # 8
    main(-1, SPPELAN, 480, 240),                    # 9
    main(-1, Upsample),                             # 10
    main((-1, 6), Concat),                          # 11
    main(-1, RepNCSPELAN4, 360, 360, 180, 1),       # 12
    main(-1, Upsample),                             # 13
    main((-1, 4), Concat),                          # 14
    main(-1, RepNCSPELAN4, 240, 240, 120, 1),       # 15 P3 out
    main(-1, AConv, 184),                           # 16
    main((-1, 12), Concat),                         # 17
    main(-1, RepNCSPELAN4, 360, 360, 180, 1),       # 18 P4 out
    main(-1, AConv, 240),                           # 19
    main((-1, 9), Concat),                          # 20
    main(-1, RepNCSPELAN4, 480, 480, 240, 1),       # 21 P5 out
    main((15, 18, 21), DetectHead),                 # 22
), GELAN_TAGS))

GELAN_C = MainTable(tagged((
    main(-1, Conv, 64, 3, 2),                       # 0
    main(-1, Conv, 128, 3, 2),                      # 1
    main(-1, RepNCSPELAN4, 256, 128, 64, 1),        # 2
    main(-1, ADown, 256),                           # 3
    main(-1, RepNCSPELAN4, 512, 256, 128, 1),       # 4
    main(-1, ADown, 512),                           # 5
    main(-1, RepNCSPELAN4, 512, 512, 256, 1),       # 6
    main(-1, ADown, 512),                           # 7
    main(-1, RepNCSPELAN4, 512, 512, 256, 1),       # 8
    main(-1, SPPELAN, 512, 256),                    # 9
    main(-1, Upsample),                             # 10
    main((-1, 6), Concat),                          # 11
    main(-1, RepNCSPELAN4, 512, 512, 256, 1),       # 12
    main(-1, Upsample),                             # 13
    main((-1, 4), Concat),                          # 14
    main(-1, RepNCSPELAN4, 256, 256, 128, 1),       # 15 P3 out
    main(-1, ADown, 256),                           # 16
    main((-1, 12), Concat),                         # 17
    main(-1, RepNCSPELAN4, 512, 512, 256, 1),       # 18 P4 out
    main(-1, ADown, 512),                           # 19
    main((-1, 9), Concat),                          # 20
    main(-1, RepNCSPELAN4, 512, 512, 256, 1),       # 21 P5 out
    main((15, 18, 21), DetectHead),                 # 22
), GELAN_TAGS))

# gelan-e keeps the CBNet dual backbone: backbone 1 (1-9) feeds backbone 2 (15-28) through CBLinear/CBFuse.
GELAN_E = MainTable(tagged((
    main(-1, Silence),                              # 0  image router
    main(-1, Conv, 64, 3, 2),                       # 1
    main(-1, Conv, 128, 3, 2),                      # 2
    main(-1, RepNCSPELAN4, 256, 128, 64, 2),        # 3
    main(-1, ADown, 256),                           # 4
    main(-1, RepNCSPELAN4, 512, 256, 128, 2),       # 5
    main(-1, ADown, 512),                           # 6
    main(-1, RepNCSPELAN4, 1024, 512, 256, 2),      # 7
    main(-1, ADown, 1024),                          # 8
    main(-1, RepNCSPELAN4, 1024, 512, 256, 2),      # 9
    main(1, CBLinear, (64,)),                       # 10
    main(3, CBLinear, (64, 128)),                   # 11
    main(5, CBLinear, (64, 128, 256)),              # 12
    main(7, CBLinear, (64, 128, 256, 512)),         # 13
    main(9, CBLinear, (64, 128, 256, 512, 1024)),   # 14
    main(0, Conv, 64, 3, 2),                        # 15 backbone 2 starts from the image
    main((10, 11, 12, 13, 14, -1), CBFuse, (0, 0, 0, 0, 0)),# 16
    main(-1, Conv, 128, 3, 2),                      # 17
    main((11, 12, 13, 14, -1), CBFuse, (1, 1, 1, 1)),# 18
    main(-1, RepNCSPELAN4, 256, 128, 64, 2),        # 19
    main(-1, ADown, 256),                           # 20
    main((12, 13, 14, -1), CBFuse, (2, 2, 2)),      # 21
    main(-1, RepNCSPELAN4, 512, 256, 128, 2),       # 22
    main(-1, ADown, 512),                           # 23
    main((13, 14, -1), CBFuse, (3, 3)),             # 24
    main(-1, RepNCSPELAN4, 1024, 512, 256, 2),      # 25
    main(-1, ADown, 1024),                          # 26
    main((14, -1), CBFuse, (4,)),                   # 27
    main(-1, RepNCSPELAN4, 1024, 512, 256, 2),      # 28
    main(28, SPPELAN, 512, 256),                    # 29
    main(-1, Upsample),                             # 30
    main((-1, 25), Concat),                         # 31
    main(-1, RepNCSPELAN4, 512, 512, 256, 2),       # 32
    main(-1, Upsample),                             # 33
    main((-1, 22), Concat),                         # 34
    main(-1, RepNCSPELAN4, 256, 256, 128, 2),       # 35 P3 out
    main(-1, ADown, 256),                           # 36
    main((-1, 32), Concat),                         # 37
    main(-1, RepNCSPELAN4, 512, 512, 256, 2),       # 38 P4 out
    main(-1, ADown, 512),                           # 39
    main((-1, 29), Concat),                         # 40
    main(-1, RepNCSPELAN4, 512, 1024, 512, 2),      # 41 P5 out
    main((35, 38, 41), DetectHead),                 # 42
), GELAN_E_TAGS), fpn_taps="first_backbone", fpn_before_neck=True)

MAIN_TABLES: dict[str, MainTable] = {
    "gelan-t": GELAN_T,
    "gelan-s": GELAN_S,
    "gelan-m": GELAN_M,
    "gelan-c": GELAN_C,
    "gelan-e": GELAN_E,
}
# The yolov9 models: a GELAN table and its official auxiliary form (paper: "multi-level auxiliary information" for
# t/s, the "auxiliary reversible branch" for m/c, an auxiliary FPN on the first CBNet backbone for e).
YOLOV9_MODELS: dict[str, tuple[str, str]] = {
    "yolov9-t": ("gelan-t", "fpn"),
    "yolov9-s": ("gelan-s", "fpn"),
    "yolov9-m": ("gelan-m", "reversible"),
    "yolov9-c": ("gelan-c", "reversible"),
    "yolov9-e": ("gelan-e", "fpn"),
}
ZOO_MODELS: tuple[str, ...] = (*MAIN_TABLES, *YOLOV9_MODELS)


def inference_name(name: str) -> str:
    """Zoo name of the architecture left after `strip_auxiliary` (yolov9-x -> gelan-x)."""
    return YOLOV9_MODELS[name][0] if name in YOLOV9_MODELS else name


def zoo_parts(name: str) -> tuple[MainTable, str | None]:
    """The GELAN table of a zoo name and its official auxiliary form (None for gelan models)."""
    if name in MAIN_TABLES:
        return MAIN_TABLES[name], None
    if name in YOLOV9_MODELS:
        table, form = YOLOV9_MODELS[name]
        return MAIN_TABLES[table], form
    raise KeyError(f"unknown model {name!r}; available: {', '.join(ZOO_MODELS)}")
