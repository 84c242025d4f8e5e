"""Rectangular validation under DDP: each rank gets a disjoint share of the aspect-ratio batches, all ranks run the
same number of steps, batches keep one padded shape, and Lightning keeps our sampler instead of injecting its own."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from pgi_detect.data.pipeline.samplers import RectShardSampler, rect_batches
from helpers.datasets import datamodule, rectangles_coco

SIZES = ((64, 96), (96, 40), (60, 90))  # h/w 0.67, 2.4, 0.67: several padded shapes


def rect_datamodule(root, num_images: int, rank: int | None = None, world_size: int = 1):
    if not (root / "ann.json").exists():
        rectangles_coco(root, num_images, sizes=SIZES)
    dm = datamodule(root, rect_val=True, val_batch_size=2)
    if rank is not None:
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)  # what the datamodule reads
    dm.setup("validate")
    return dm


def batches_of(loader) -> list[tuple[list[int], tuple[int, int]]]:
    return [(b["image_ids"].tolist(), tuple(b["images"].shape[-2:])) for b in loader]


@pytest.mark.parametrize("num_images", [8, 10])  # 4 batches (even split), 5 batches (rank 1 repeats one)
def test_rect_val_batches_are_sharded_over_two_ranks(tmp_path, num_images):
    single = batches_of(rect_datamodule(tmp_path, num_images).val_dataloader())
    shape_of = {image_id: shape for ids, shape in single for image_id in ids}
    assert len(shape_of) == num_images and len(set(shape_of.values())) >= 2

    ranks = [batches_of(rect_datamodule(tmp_path, num_images, r, 2).val_dataloader()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == (len(single) + 1) // 2  # equal step counts: no collective hangs
    for batches in ranks:
        for ids, shape in batches:
            assert {shape_of[i] for i in ids} == {shape}  # still one aspect-ratio group per batch
    # rank r evaluates batches r, r+2, ...; a short rank repeats its first batch, never the other rank's
    assert [ids for ids, _ in ranks[0]] == [ids for ids, _ in single[0::2]]
    own = [ids for ids, _ in single[1::2]]
    assert [ids for ids, _ in ranks[1]] == own + own[:1] * (len(ranks[1]) - len(own))
    unique = [{i for ids, _ in batches for i in ids} for batches in ranks]
    assert not unique[0] & unique[1] and unique[0] | unique[1] == set(shape_of)  # each image on exactly one rank


def test_rect_shard_sampler_edge_cases():
    batches, _ = rect_batches([(64, 96)] * 3, batch_size=2, img_size=64)
    assert batches == [[0, 1], [2]]
    assert list(RectShardSampler(range(3), batches)) == [0, 1, 2]
    assert [list(RectShardSampler(range(3), batches, r, 4)) for r in range(4)] == [[0, 1], [2], [0, 1], [0, 1]]
    assert list(RectShardSampler(range(0), [], 1, 2)) == []
    with pytest.raises(ValueError, match="same size"):
        RectShardSampler(range(3), [[0], [1, 2]])


def test_rect_loader_is_already_sharded_for_lightning(tmp_path):
    """Lightning (use_distributed_sampler=True) leaves a loader alone when its sampler is a DistributedSampler, and
    otherwise replaces the sampler, which would break the rect batches. tests/e2e/test_training_ddp.py runs the real
    2-process case end to end."""
    from torch.utils.data import DistributedSampler

    dm = rect_datamodule(tmp_path, 10, rank=1, world_size=2)
    loader = dm.val_dataloader()
    assert isinstance(loader.sampler, DistributedSampler) and isinstance(loader.sampler, RectShardSampler)
    assert (loader.sampler.rank, loader.sampler.num_replicas) == (1, 2)
