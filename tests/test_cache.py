"""The prepared-example cache (``cobl.cache``): the loss on cached examples equals the loss on freshly decoded
scenes, the two tiers hold the same rows, a disk entry is reused only while nothing it depends on changed,
an interrupted fill redoes only what is missing, and the seeded order splits over ranks and resumes."""

from __future__ import annotations

import os

import pytest
import torch

from cobl.cache import CacheSpec, cached_batches, choose_tier, disk_store, memory_store
from cobl.codec import VAECodec
from cobl.configs import tiny_config
from cobl.data import collate, make_dataset
from cobl.factory import build
from tests.sdfolder import sd_like_vae
from tests.shardmaker import write_shard
from train.loss import diffusion_loss

torch.set_num_threads(1)
SPEC = CacheSpec(num_objects=3, resolution=32, depth=True, depth_source="monocular")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("cache_shards")
    urls = [str(root / f"train-{i:06d}.tar") for i in range(2)]
    for i, url in enumerate(urls):
        write_shard(url, 6, size=32, max_objects=3, seed=i)
    return urls


def _decoded(urls: list[str], spec: CacheSpec):
    ds = make_dataset(urls, spec.num_objects, spec.resolution, shuffle=False, epochs=1, ids=False,
                      depth=spec.depth, depth_source=spec.depth_source)
    return list(ds)


@pytest.mark.parametrize("codec_kind", ["space_to_depth", "vae"])
def test_the_loss_on_cached_examples_equals_the_loss_on_decoded_scenes(shards, tmp_path, codec_kind):
    config = tiny_config(num_objects=3, resolution=32).replace(depth_condition=True, depth_source="monocular")
    torch.manual_seed(0)
    # the VAE: random weights of SD's kind (the equality does not need a fitted one)
    model, codec, sched = build(config, vae=_saved_vae(tmp_path) if codec_kind == "vae" else None)
    assert isinstance(codec, VAECodec) == (codec_kind == "vae")
    store = memory_store(shards, SPEC, codec, "cpu")
    samples = _decoded(shards, SPEC)
    assert [s.key for s in samples] == store.chunks[0].keys  # shard order, then in-shard order
    pick = [5, 0, 7, 2]
    fresh = collate([samples[i] for i in pick])
    cached = store.gather(pick)
    options = dict(object_weight=10.0, hidden_weight=3.0, slot_matching=True)
    a = diffusion_loss(model, codec, sched, fresh, step=3, seed=1, **options)
    b = diffusion_loss(model, codec, sched, cached, step=3, seed=1, **options)
    assert torch.equal(a, b), (a.item(), b.item())
    assert torch.equal(cached.photo, fresh.photo) and torch.equal(cached.depth, fresh.depth)


def _saved_vae(tmp_path):
    sd_like_vae().save_pretrained(tmp_path / "vae")
    return str(tmp_path / "vae")


def test_disk_tier_holds_the_memory_tiers_rows_and_is_reused_only_while_unchanged(shards, tmp_path):
    import shutil

    shards = [str(shutil.copy(u, tmp_path / os.path.basename(u))) for u in shards]  # this test rewrites one
    codec = build(tiny_config(num_objects=3, resolution=32))[1]
    memory = memory_store(shards, SPEC, codec, "cpu")
    first = disk_store(shards, SPEC, codec, "cpu", tmp_path / "c")
    assert (first.filled, first.reused) == (2, 0) and len(first) == len(memory) == 12
    a, b = memory.gather(list(range(12))), first.gather(list(range(12)))
    for name in ("latents", "photo", "depth", "object_area", "hidden_area", "occupied", "overlap"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.keys == b.keys
    assert memory.skipped == {} and first.skipped == {}  # clean shards: nothing skipped (reads not counted)

    again = disk_store(shards, SPEC, codec, "cpu", tmp_path / "c")
    assert (again.filled, again.reused) == (0, 2)
    other_source = disk_store(shards, CacheSpec(3, 32, True, "rendered"), codec, "cpu", tmp_path / "c")
    assert other_source.filled == 2  # the depth source changes the examples: new entries
    assert not torch.equal(other_source.gather([0]).depth, b.depth[:1])
    factor8 = build(tiny_config(3, 32).replace(space_to_depth_factor=8))[1]
    other_codec = disk_store(shards, SPEC, factor8, "cpu", tmp_path / "c")
    assert other_codec.filled == 2

    # a shard rewritten with other scenes (new size/mtime): only it is encoded again, and its new rows read
    write_shard(shards[1], 6, size=32, max_objects=3, seed=99)
    os.utime(shards[1], ns=(1, 1))
    changed = disk_store(shards, SPEC, codec, "cpu", tmp_path / "c")
    assert (changed.filled, changed.reused) == (1, 1)
    assert changed.gather([6]).keys == ["scene099_00000"]
    assert torch.equal(changed.gather([0]).latents, b.latents[:1])


def test_an_interrupted_fill_redoes_only_unfinished_shards(shards, tmp_path):
    codec = build(tiny_config(num_objects=3, resolution=32))[1]
    disk_store(shards, SPEC, codec, "cpu", tmp_path / "c")
    index = sorted((tmp_path / "c").glob("train-000001-*.json"))
    index[0].unlink()  # as if killed before the shard's index was written
    redo = disk_store(shards, SPEC, codec, "cpu", tmp_path / "c")
    assert (redo.filled, redo.reused) == (1, 1) and len(redo) == 12


def test_cached_order_splits_over_ranks_and_resumes(shards):
    codec = build(tiny_config(num_objects=3, resolution=32))[1]
    store = memory_store(shards, SPEC, codec, "cpu")
    one = cached_batches(store, 4, seed=5)
    ranks = [cached_batches(store, 2, seed=5, rank=r, world=2) for r in range(2)]
    seen = []
    for _ in range(6):  # 24 items: two epochs of 12
        keys = next(one).keys
        assert keys == next(ranks[0]).keys + next(ranks[1]).keys
        seen += keys
    assert sorted(seen[:12]) == sorted(store.chunks[0].keys) == sorted(seen[12:])
    assert seen[:12] != seen[12:]  # a new order every epoch
    resumed = cached_batches(store, 4, seed=5, offset=8)
    assert next(resumed).keys == seen[8:12]


def test_auto_keeps_small_data_in_memory_and_streams_remote_shards(shards, monkeypatch):
    from cobl import cache
    from core.errors import UserError

    codec = build(tiny_config(num_objects=3, resolution=32))[1]
    assert choose_tier("auto", shards, SPEC, codec) == "memory"
    monkeypatch.setattr(cache, "MEMORY_LIMIT_BYTES", 12 * cache.row_bytes(SPEC, codec) - 1)  # 12 scenes
    assert choose_tier("auto", shards, SPEC, codec) == "disk"
    remote = ["https://example.org/train-000000.tar"]
    assert choose_tier("auto", remote, SPEC, codec) == "off"
    with pytest.raises(UserError, match="remote") as err:
        choose_tier("disk", remote, SPEC, codec)
    assert err.value.option == "cache"
