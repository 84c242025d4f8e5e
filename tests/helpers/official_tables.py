"""The five yolov9 tables as literal rows, exactly as pgi_detect wrote them before the auxiliary branch became a
declared part (models/auxiliary.py): the official yaml row for row. tests/unit/models/test_models_auxiliary.py checks that the
assembled tables (gelan table + auxiliary part) equal these."""
from __future__ import annotations

from pgi_detect.models.blocks import (
    ADown,
    AConv,
    CBFuse,
    CBLinear,
    Concat,
    Conv,
    RepNCSPELAN4,
    Silence,
    SPPELAN,
    Upsample,
)
from pgi_detect.models.zoo_tables import GELAN_E, GELAN_S, GELAN_T
from pgi_detect.models.graph import Layer
from pgi_detect.models.heads import DualDetectHead

Table = tuple[Layer, ...]


def main(source, block, *args) -> Layer:
    return Layer(source, block, tuple(args))


def aux(source, block, *args) -> Layer:
    return Layer(source, block, tuple(args), auxiliary=True)


# yolov9-t/s: the auxiliary branch is a second top-down FPN on the same backbone (no CBLinear/CBFuse).
YOLOV9_T: Table = GELAN_T.rows[:22] + (
    aux(8, SPPELAN, 128, 64),                       # 22
    aux(-1, Upsample),                              # 23
    aux((-1, 6), Concat),                           # 24
    aux(-1, RepNCSPELAN4, 96, 96, 48, 3),           # 25 aux P4
    aux(-1, Upsample),                              # 26
    aux((-1, 4), Concat),                           # 27
    aux(-1, RepNCSPELAN4, 64, 64, 32, 3),           # 28 aux P3
    main((28, 25, 22, 15, 18, 21), DualDetectHead), # 29
)

YOLOV9_S: Table = GELAN_S.rows[:22] + (
    aux(8, SPPELAN, 256, 128),                      # 22
    aux(-1, Upsample),                              # 23
    aux((-1, 6), Concat),                           # 24
    aux(-1, RepNCSPELAN4, 192, 192, 96, 3),         # 25 aux P4
    aux(-1, Upsample),                              # 26
    aux((-1, 4), Concat),                           # 27
    aux(-1, RepNCSPELAN4, 128, 128, 64, 3),         # 28 aux P3
    main((28, 25, 22, 15, 18, 21), DualDetectHead), # 29
)

# yolov9-m/c: main network at rows 1-22 (gelan row i = row i+1 here); an auxiliary reversible backbone
# (26-37) reads the image and the main backbone's P3-P5 through CBLinear 23-25.
YOLOV9_M: Table = (
    main(-1, Silence),                              # 0
    main(-1, Conv, 32, 3, 2),                       # 1
    main(-1, Conv, 64, 3, 2),                       # 2
    main(-1, RepNCSPELAN4, 128, 128, 64, 1),        # 3
    main(-1, AConv, 240),                           # 4
    main(-1, RepNCSPELAN4, 240, 240, 120, 1),       # 5  B3
    main(-1, AConv, 360),                           # 6
    main(-1, RepNCSPELAN4, 360, 360, 180, 1),       # 7  B4
    main(-1, AConv, 480),                           # 8
    main(-1, RepNCSPELAN4, 480, 480, 240, 1),       # 9  B5
    main(-1, SPPELAN, 480, 240),                    # 10
    main(-1, Upsample),                             # 11
    main((-1, 7), Concat),                          # 12
    main(-1, RepNCSPELAN4, 360, 360, 180, 1),       # 13
    main(-1, Upsample),                             # 14
    main((-1, 5), Concat),                          # 15
    main(-1, RepNCSPELAN4, 240, 240, 120, 1),       # 16 P3 out
    main(-1, AConv, 184),                           # 17
    main((-1, 13), Concat),                         # 18
    main(-1, RepNCSPELAN4, 360, 360, 180, 1),       # 19 P4 out
    main(-1, AConv, 240),                           # 20
    main((-1, 10), Concat),                         # 21
    main(-1, RepNCSPELAN4, 480, 480, 240, 1),       # 22 P5 out
    aux(5, CBLinear, (240,)),                       # 23
    aux(7, CBLinear, (240, 360)),                   # 24
    aux(9, CBLinear, (240, 360, 480)),              # 25
    aux(0, Conv, 32, 3, 2),                         # 26
    aux(-1, Conv, 64, 3, 2),                        # 27
    aux(-1, RepNCSPELAN4, 128, 128, 64, 1),         # 28
    aux(-1, AConv, 240),                            # 29
    aux((23, 24, 25, -1), CBFuse, (0, 0, 0)),       # 30
    aux(-1, RepNCSPELAN4, 240, 240, 120, 1),        # 31 aux P3
    aux(-1, AConv, 360),                            # 32
    aux((24, 25, -1), CBFuse, (1, 1)),              # 33
    aux(-1, RepNCSPELAN4, 360, 360, 180, 1),        # 34 aux P4
    aux(-1, AConv, 480),                            # 35
    aux((25, -1), CBFuse, (2,)),                    # 36
    aux(-1, RepNCSPELAN4, 480, 480, 240, 1),        # 37 aux P5
    main((31, 34, 37, 16, 19, 22), DualDetectHead), # 38
)

YOLOV9_C: Table = (
    main(-1, Silence),                              # 0
    main(-1, Conv, 64, 3, 2),                       # 1
    main(-1, Conv, 128, 3, 2),                      # 2
    main(-1, RepNCSPELAN4, 256, 128, 64, 1),        # 3
    main(-1, ADown, 256),                           # 4
    main(-1, RepNCSPELAN4, 512, 256, 128, 1),       # 5  B3
    main(-1, ADown, 512),                           # 6
    main(-1, RepNCSPELAN4, 512, 512, 256, 1),       # 7  B4
    main(-1, ADown, 512),                           # 8
    main(-1, RepNCSPELAN4, 512, 512, 256, 1),       # 9  B5
    main(-1, SPPELAN, 512, 256),                    # 10
    main(-1, Upsample),                             # 11
    main((-1, 7), Concat),                          # 12
    main(-1, RepNCSPELAN4, 512, 512, 256, 1),       # 13
    main(-1, Upsample),                             # 14
    main((-1, 5), Concat),                          # 15
    main(-1, RepNCSPELAN4, 256, 256, 128, 1),       # 16 P3 out
    main(-1, ADown, 256),                           # 17
    main((-1, 13), Concat),                         # 18
    main(-1, RepNCSPELAN4, 512, 512, 256, 1),       # 19 P4 out
    main(-1, ADown, 512),                           # 20
    main((-1, 10), Concat),                         # 21
    main(-1, RepNCSPELAN4, 512, 512, 256, 1),       # 22 P5 out
    aux(5, CBLinear, (256,)),                       # 23
    aux(7, CBLinear, (256, 512)),                   # 24
    aux(9, CBLinear, (256, 512, 512)),              # 25
    aux(0, Conv, 64, 3, 2),                         # 26
    aux(-1, Conv, 128, 3, 2),                       # 27
    aux(-1, RepNCSPELAN4, 256, 128, 64, 1),         # 28
    aux(-1, ADown, 256),                            # 29
    aux((23, 24, 25, -1), CBFuse, (0, 0, 0)),       # 30
    aux(-1, RepNCSPELAN4, 512, 256, 128, 1),        # 31 aux P3
    aux(-1, ADown, 512),                            # 32
    aux((24, 25, -1), CBFuse, (1, 1)),              # 33
    aux(-1, RepNCSPELAN4, 512, 512, 256, 1),        # 34 aux P4
    aux(-1, ADown, 512),                            # 35
    aux((25, -1), CBFuse, (2,)),                    # 36
    aux(-1, RepNCSPELAN4, 512, 512, 256, 1),        # 37 aux P5
    main((31, 34, 37, 16, 19, 22), DualDetectHead), # 38
)

# yolov9-e: rows 0-28 are gelan-e's dual backbone; the auxiliary branch is an FPN on backbone 1 (29-35),
# the main neck sits on backbone 2 (36-48).
YOLOV9_E: Table = GELAN_E.rows[:29] + (
    aux(9, SPPELAN, 512, 256),                      # 29 aux P5
    aux(-1, Upsample),                              # 30
    aux((-1, 7), Concat),                           # 31
    aux(-1, RepNCSPELAN4, 512, 512, 256, 2),        # 32 aux P4
    aux(-1, Upsample),                              # 33
    aux((-1, 5), Concat),                           # 34
    aux(-1, RepNCSPELAN4, 256, 256, 128, 2),        # 35 aux P3
    main(28, SPPELAN, 512, 256),                    # 36
    main(-1, Upsample),                             # 37
    main((-1, 25), Concat),                         # 38
    main(-1, RepNCSPELAN4, 512, 512, 256, 2),       # 39
    main(-1, Upsample),                             # 40
    main((-1, 22), Concat),                         # 41
    main(-1, RepNCSPELAN4, 256, 256, 128, 2),       # 42 P3 out
    main(-1, ADown, 256),                           # 43
    main((-1, 39), Concat),                         # 44
    main(-1, RepNCSPELAN4, 512, 512, 256, 2),       # 45 P4 out
    main(-1, ADown, 512),                           # 46
    main((-1, 36), Concat),                         # 47
    main(-1, RepNCSPELAN4, 512, 1024, 512, 2),      # 48 P5 out
    main((35, 32, 29, 42, 45, 48), DualDetectHead), # 49
)


LITERAL_TABLES = {"yolov9-t": YOLOV9_T, "yolov9-s": YOLOV9_S, "yolov9-m": YOLOV9_M, "yolov9-c": YOLOV9_C,
                  "yolov9-e": YOLOV9_E}
