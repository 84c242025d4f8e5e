"""Layer tables and their execution.

A table is a tuple of `Layer(source, block, args, auxiliary, tag)` rows in the official parse order, so the row
index is the official `model.<idx>` index. `source` uses the yaml convention: -1 is the previous layer (the
image for row 0), other values are absolute row indices; a tuple gathers several outputs into a list. A `tag` says
what a row is ("backbone.p3", "neck.p5", ...): the auxiliary branch (models/auxiliary.py) names the rows it reads by
tag, and its own rows may be named by tags in their sources until the tables are assembled.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from pgi_detect.models.heads import DetectHead, DualDetectHead

IMAGE = -1  # resolved index of the network input


Source = int | str  # a row index (yaml convention), or a tag before assembly


@dataclass(frozen=True)
class Layer:
    """One row: where its input comes from, which block, the block's args after the input channels, whether it
    belongs to the PGI auxiliary branch (dropped by `strip_auxiliary`), and what it is (`tag`)."""

    source: Source | tuple[Source, ...]
    block: type[nn.Module] | nn.Module
    args: tuple = ()
    auxiliary: bool = False
    tag: str | None = None

    @property
    def sources(self) -> tuple[Source, ...]:
        return self.source if isinstance(self.source, tuple) else (self.source,)


@dataclass(frozen=True)
class MainTable:
    """A single-branch detector table (head last) and where the auxiliary forms attach to it.

    Tags every main table carries: `backbone.p3/p4/p5` (the maps the neck reads at strides 8/16/32),
    `neck.sppelan`, `neck.top_down_p4` and `neck.p3/p4/p5` (the neck's outputs). `fpn_taps` is the backbone the
    auxiliary FPN reads ("backbone", or "first_backbone" for gelan-e's CBNet), `fpn_before_neck` whether its rows go
    right after the backbone (the official yolov9-e order) instead of after the neck (yolov9-t/s).
    """

    rows: tuple[Layer, ...]
    fpn_taps: str = "backbone"
    fpn_before_neck: bool = False

    def index(self, tag: str) -> int:
        for index, row in enumerate(self.rows):
            if row.tag == tag:
                return index
        raise KeyError(f"no row tagged {tag!r} in this table (tags: {', '.join(self.tags)})")

    def row(self, tag: str) -> Layer:
        return self.rows[self.index(tag)]

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.rows if row.tag]

    @property
    def head(self) -> Layer:
        return self.rows[-1]


def resolve(source: int, index: int) -> int:
    """Absolute row index of a yaml-style source seen from row `index` (IMAGE for the network input)."""
    return index + source if source < 0 else source


def is_head(block: type[nn.Module] | nn.Module) -> bool:
    return isinstance(block, type) and issubclass(block, (DetectHead, DualDetectHead))


def build_layers(
    table: Sequence[Layer], num_classes: int, in_channels: int = 3, cls_width: int | None = None
) -> nn.ModuleList:
    """Instantiate every row, tracking channel counts (a block's `out_channels`) from source to consumer.

    Head rows get `num_classes` and `cls_width` (class-branch width override, None = official formula)."""
    channels: list = []
    layers = nn.ModuleList()
    for index, row in enumerate(table):
        c_ins = []
        for source in row.sources:
            absolute = resolve(source, index)
            if not IMAGE <= absolute < index:
                raise ValueError(f"layer {index} reads from {source}, which is not an earlier layer")
            c_ins.append(in_channels if absolute == IMAGE else channels[absolute])
        c_in = c_ins[0] if isinstance(row.source, int) else c_ins
        if isinstance(row.block, nn.Module):
            module = row.block
        elif is_head(row.block):
            module = row.block(c_ins, num_classes, *row.args, cls_width=cls_width)
        else:
            module = row.block(c_in, *row.args)
        channels.append(module.out_channels)
        layers.append(module)
    return layers


class Routing:
    """Precomputed data flow of a table: absolute sources, which outputs must be kept, and when to drop them."""

    def __init__(self, table: Sequence[Layer]) -> None:
        self.sources: list[int | tuple[int, ...]] = []
        last_use: dict[int, int] = {}
        for index, row in enumerate(table):
            absolute = tuple(resolve(s, index) for s in row.sources)
            self.sources.append(absolute[0] if isinstance(row.source, int) else absolute)
            for source in absolute:
                if source != index - 1 and source != IMAGE:
                    last_use[source] = index
        self.keep = [index in last_use for index in range(len(table))]
        self.release: list[tuple[int, ...]] = [() for _ in table]
        for source, index in last_use.items():
            self.release[index] += (source,)


def run_layers(layers: nn.ModuleList, routing: Routing, images: Tensor):
    """Execute the table on `images` and return the last layer's output."""
    outputs: list = [None] * len(layers)
    x = images
    for index, layer in enumerate(layers):
        source = routing.sources[index]
        if type(source) is int:
            if source != index - 1:
                x = images if source == IMAGE else outputs[source]
            x = layer(x)
        else:
            x = layer([x if s == index - 1 else (images if s == IMAGE else outputs[s]) for s in source])
        if routing.keep[index]:
            outputs[index] = x
        for done in routing.release[index]:
            outputs[done] = None
    return x
