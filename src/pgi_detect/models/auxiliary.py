"""PGI's auxiliary branch as a declared, removable part of any detector, and the assembly of a detector's table.

A detector is its main table (`graph.MainTable`: a single-branch network whose rows carry tags such as
"backbone.p3") plus, optionally, an `AuxiliaryPart`: rows that name the main rows they read by tag, the tags of the
three maps its head reads, and the weight of its loss. `Architecture.assemble` lays both out in the official row
order, so the yolov9 tables come out row for row as the official yaml (and official weights load by index), and
records where every main row went: `Detector.strip_auxiliary` keeps exactly those rows, with no index surgery.

The forms (paper section 4; the official configs):
* "fpn" (yolov9-t/s, "multi-level auxiliary information"): a second top-down FPN on the backbone's P3/P4/P5 (SPPELAN
  on P5, upsample + concat P4, a neck block, upsample + concat P3, a neck block) whose widths follow the neck's; the
  auxiliary head reads (aux P3, aux P4, aux P5). On gelan-e it reads the first CBNet backbone and sits between the
  backbones and the neck (yolov9-e).
* "reversible" (yolov9-m/c, "auxiliary reversible branch"): row 0 becomes a Silence that carries the image; CBLinear
  taps (a biased 1x1 conv split by channel) on the backbone's P3/P4/P5; an auxiliary GELAN backbone re-reads the image
  and after each downsample to stride 8/16/32 a CBFuse adds the nearest-upsampled CBLinear slices of that level and
  all deeper ones; the auxiliary head reads that backbone's three outputs. For a zoo table the auxiliary backbone
  repeats the main one (the official form); for a custom backbone it is a GELAN backbone whose widths follow the neck
  or are given (`widths`).
* "deep_supervision" (the paper's baseline "DS"): an auxiliary head straight on the backbone maps, no auxiliary
  network.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, get_args

from pgi_detect.models.blocks import AConv, CBFuse, CBLinear, Concat, Conv, RepNCSPELAN4, Silence, Upsample
from pgi_detect.models.graph import IMAGE, Layer, MainTable, resolve
from pgi_detect.models.heads import DualDetectHead

AuxiliaryForm = Literal["fpn", "reversible", "deep_supervision"]
AUXILIARY_FORMS: tuple[str, ...] = get_args(AuxiliaryForm)  # the one list of forms
AUX_WEIGHT = 0.25  # the official loss weight of the auxiliary branch (main 1.0)
LEVELS = ("p3", "p4", "p5")


@dataclass(frozen=True)
class AuxiliaryPart:
    """The auxiliary branch: its rows (sources: -1, their own tags, or main tags such as "backbone.p3" and "image"),
    the tags of the maps its head reads (P3, P4, P5), the main row after which its rows go, whether it needs a
    Silence row 0 to read the image from, and the weight of its loss."""

    form: str
    rows: tuple[Layer, ...]
    head_taps: tuple[str, str, str]
    after: str | None = None
    carries_image: bool = False
    weight: float = AUX_WEIGHT


def fpn_part(main: MainTable, weight: float = AUX_WEIGHT) -> AuxiliaryPart:
    """The t/s form: a top-down FPN on the backbone, its blocks and widths those of the neck's top-down half."""
    taps = main.fpn_taps
    spp, top_down_p4, top_down_p3 = main.row("neck.sppelan"), main.row("neck.top_down_p4"), main.row("neck.p3")
    rows = (
        Layer(f"{taps}.p5", spp.block, spp.args, tag="aux.p5"),
        Layer(-1, Upsample),
        Layer((-1, f"{taps}.p4"), Concat),
        Layer(-1, top_down_p4.block, top_down_p4.args, tag="aux.p4"),
        Layer(-1, Upsample),
        Layer((-1, f"{taps}.p3"), Concat),
        Layer(-1, top_down_p3.block, top_down_p3.args, tag="aux.p3"),
    )
    return AuxiliaryPart("fpn", rows, ("aux.p3", "aux.p4", "aux.p5"),
                         after="backbone.p5" if main.fpn_before_neck else "neck.p5", weight=weight)


def gelan_backbone_rows(widths: Sequence[int], depth: int) -> tuple[Layer, ...]:
    """A GELAN backbone with P3/P4/P5 widths `widths` (stem and P2 scaled from P3), for the reversible form on
    backbones that are no GELAN table."""
    p3, p4, p5 = (int(w) for w in widths)
    stem, p2 = max(p3 // 4, 16), max(p3 // 2, 32)
    return (
        Layer(-1, Conv, (stem, 3, 2)),
        Layer(-1, Conv, (p2, 3, 2)),
        Layer(-1, RepNCSPELAN4, (p2, p2, p2 // 2, depth)),
        Layer(-1, AConv, (p3,)),
        Layer(-1, RepNCSPELAN4, (p3, p3, p3 // 2, depth), tag="backbone.p3"),
        Layer(-1, AConv, (p4,)),
        Layer(-1, RepNCSPELAN4, (p4, p4, p4 // 2, depth), tag="backbone.p4"),
        Layer(-1, AConv, (p5,)),
        Layer(-1, RepNCSPELAN4, (p5, p5, p5 // 2, depth), tag="backbone.p5"),
    )


def copied_backbone_rows(main: MainTable) -> tuple[Layer, ...] | None:
    """The main table's backbone (rows up to backbone.p5) when it is a plain chain of blocks, else None."""
    rows = main.rows[: main.index("backbone.p5") + 1]
    chain = all(row.sources == (-1,) and isinstance(row.block, type) for row in rows)
    return rows if chain and rows[0].block is not Silence else None


def reversible_part(main: MainTable, widths: Sequence[int] | None = None, depth: int = 1,
                    weight: float = AUX_WEIGHT) -> AuxiliaryPart:
    """The m/c form: CBLinear taps on the backbone's P3/P4/P5 feeding an image-fed auxiliary backbone through a
    CBFuse after each of its downsamples to stride 8/16/32."""
    if any(tag.startswith("first_backbone.") for tag in main.tags):
        raise ValueError("this table already joins two backbones with CBLinear/CBFuse (gelan-e); its PGI form is "
                         "auxiliary='fpn' (yolov9-e)")
    backbone = copied_backbone_rows(main) if widths is None else None
    if backbone is None:
        if widths is None:
            widths = neck_widths(main)
        backbone = gelan_backbone_rows(widths, depth)
    levels = [next(i for i, row in enumerate(backbone) if row.tag == f"backbone.{level}") for level in LEVELS]
    # The width each CBFuse adds into: the output of the downsample right before the level's block.
    fused_widths = [int(backbone[i - 1].args[0]) for i in levels]
    taps = tuple(Layer(f"backbone.{level}", CBLinear, (tuple(fused_widths[: k + 1]),), tag=f"aux.cblinear.{level}")
                 for k, level in enumerate(LEVELS))
    rows: list[Layer] = list(taps)
    for index, row in enumerate(backbone):
        if index in levels:
            k = levels.index(index)
            deeper = tuple(f"aux.cblinear.{level}" for level in LEVELS[k:])
            rows.append(Layer((*deeper, -1), CBFuse, ((k,) * len(deeper),)))
        source = "image" if index == 0 else -1
        tag = f"aux.{row.tag.split('.')[-1]}" if row.tag and row.tag.startswith("backbone.") else None
        rows.append(Layer(source, row.block, row.args, tag=tag))
    return AuxiliaryPart("reversible", tuple(rows), ("aux.p3", "aux.p4", "aux.p5"), after="neck.p5",
                         carries_image=True, weight=weight)


def deep_supervision_part(main: MainTable, weight: float = AUX_WEIGHT) -> AuxiliaryPart:
    """The paper's DS baseline: an auxiliary head on the backbone's P3/P4/P5, no auxiliary network."""
    return AuxiliaryPart("deep_supervision", (), ("backbone.p3", "backbone.p4", "backbone.p5"), weight=weight)


def neck_widths(main: MainTable) -> tuple[int, int, int]:
    """The widths of the neck outputs P3/P4/P5 (their blocks' first argument)."""
    return tuple(int(main.row(f"neck.{level}").args[0]) for level in LEVELS)  # type: ignore[return-value]


def _reversible(main: MainTable, weight: float, widths: Sequence[int] | None) -> AuxiliaryPart:
    """The reversible form, its auxiliary blocks as deep as the neck's (1 for a custom neck without RepNCSPELAN4)."""
    depth = int(main.row("neck.p3").args[-1]) if main.row("neck.p3").block is RepNCSPELAN4 else 1
    return reversible_part(main, widths, depth=depth, weight=weight)


# The registry of forms: name -> builder(main table, loss weight, aux widths); the names are AuxiliaryForm's.
PART_BUILDERS: dict[str, Callable[[MainTable, float, Sequence[int] | None], AuxiliaryPart]] = {
    "fpn": lambda main, weight, widths: fpn_part(main, weight),
    "reversible": _reversible,
    "deep_supervision": lambda main, weight, widths: deep_supervision_part(main, weight),
}
assert tuple(PART_BUILDERS) == AUXILIARY_FORMS, "every auxiliary form needs a builder, and only those"


def auxiliary_part(form: str, main: MainTable, weight: float = AUX_WEIGHT,
                   widths: Sequence[int] | None = None) -> AuxiliaryPart:
    """The auxiliary part of `form` for `main` (`widths`: the reversible form's auxiliary backbone widths)."""
    if form not in PART_BUILDERS:
        raise ValueError(f"unknown auxiliary form {form!r}; use one of {', '.join(AUXILIARY_FORMS)} or None")
    if widths is not None and form != "reversible":
        raise ValueError(f"aux_widths sets the reversible form's auxiliary backbone; the {form!r} form takes its "
                         "widths from the neck")
    return PART_BUILDERS[form](main, weight, widths)


@dataclass(frozen=True)
class Architecture:
    """A detector's rows in the official order (sources resolved to row indices, head last), which of them are the
    main table's (`main_rows[i]`: where main row i went) and the part they were assembled from."""

    table: tuple[Layer, ...]
    main_rows: tuple[int, ...]
    main: MainTable
    part: AuxiliaryPart | None = None

    @property
    def branch_weights(self) -> tuple[float, ...]:
        """Loss weight of each branch the head returns: `(aux, main)` or `(main,)`."""
        return (1.0,) if self.part is None else (self.part.weight, 1.0)

    @classmethod
    def assemble(cls, main: MainTable, part: AuxiliaryPart | None = None) -> Architecture:
        """Lay out `main` and `part` in the official order: [Silence] + main rows up to `part.after` + part rows +
        the remaining main rows + the head (dual when there is a part)."""
        body = list(range(len(main.rows) - 1))
        order: list[tuple[str, int]] = []
        silence = part is not None and part.carries_image and main.rows[0].block is not Silence
        if silence:
            order.append(("silence", 0))
        insert_after = main.index(part.after) if part is not None and part.after and part.rows else None
        for index in body:
            order.append(("main", index))
            if index == insert_after:
                order.extend(("aux", j) for j in range(len(part.rows)))
        if part is not None and part.rows and insert_after is None:
            raise ValueError(f"the {part.form} part has rows but no place in the table")
        order.append(("main", len(main.rows) - 1))
        at = {entry: position for position, entry in enumerate(order)}
        tags: dict[str, int] = {row.tag: at[("main", i)] for i, row in enumerate(main.rows) if row.tag}
        if part is not None:
            tags.update({row.tag: at[("aux", j)] for j, row in enumerate(part.rows) if row.tag})
        image_row = 0 if silence or main.rows[0].block is Silence else None
        if image_row is not None:
            tags["image"] = image_row

        def absolute(source, position: int, previous: int | None) -> int:
            """A row index for a source seen from `position`; -1 keeps meaning the previous row when it still is."""
            if isinstance(source, str):
                if source not in tags:
                    raise KeyError(f"the auxiliary part reads {source!r}, which no row is tagged with")
                return tags[source]
            if source == -1:
                return -1 if previous == position - 1 else (IMAGE if previous is None else previous)
            return source

        table: list[Layer] = []
        for position, (kind, index) in enumerate(order):
            if kind == "silence":
                table.append(Layer(-1, Silence, auxiliary=True))
                continue
            if kind == "aux":
                row = part.rows[index]
                previous = at[("aux", index - 1)] if index else None
                sources = tuple(absolute(s, position, previous) for s in row.sources)
                table.append(replace(row, source=_shaped(sources, row.source), auxiliary=True))
                continue
            row = main.rows[index]
            if index == len(main.rows) - 1 and part is not None:
                taps = tuple(tags[tag] for tag in part.head_taps)
                own = tuple(at[("main", resolve(s, index))] for s in row.sources)
                table.append(Layer(taps + own, DualDetectHead, row.args, tag=row.tag))
                continue
            previous = at[("main", index - 1)] if index else (position - 1 if silence else None)
            sources = tuple(at[("main", s)] if isinstance(s, int) and s >= 0 else absolute(s, position, previous)
                            for s in row.sources)
            table.append(replace(row, source=_shaped(sources, row.source)))
        main_rows = tuple(at[("main", i)] for i in range(len(main.rows)))
        return cls(tuple(table), main_rows, main, part)


def _shaped(sources: tuple[int, ...], like) -> int | tuple[int, ...]:
    return sources[0] if not isinstance(like, tuple) else sources
