"""Shard reading: decoding, padding, skipping, splitting over workers, resuming, URL expansion."""

from __future__ import annotations

import io
import json
import tarfile
import warnings

import numpy as np
import pytest
import torch
import webdataset as wds

from cobl.batch import Sample
from cobl.data import (
    SkipSample,
    TooManyObjects,
    collate,
    decode_sample,
    expand_urls,
    make_dataset,
    make_loader,
)
from core import schema
from core.errors import UserError
from core.layers import EMPTY_RGB, composite
from tests.shardmaker import make_scene, scene_members, write_shard

torch.set_num_threads(1)


def _members(num_objects: int, max_layers: int, size: int = 32, seed: int = 0) -> dict:
    scene = make_scene(np.random.default_rng(seed), size, num_objects)
    files = scene_members(scene, max_layers, "k0")
    files["__key__"] = "k0"
    return files, scene


def test_decode_sample_pads_with_empty_slots_and_recomposites():
    files, scene = _members(2, max_layers=3)
    out = decode_sample(files, num_objects=4, resolution=32)
    assert out.layers.shape == (4, 4, 32, 32) and out.num_objects == 2 and out.key == "k0"
    torch.testing.assert_close(out.layers[:2, 3], torch.from_numpy(scene["layers"][:, 3]))
    for k in (2, 3):  # padding: alpha 0 and the neutral colour
        assert out.layers[k, 3].max() == 0
        torch.testing.assert_close(out.layers[k, :3], torch.tensor(EMPTY_RGB).view(3, 1, 1).expand(3, 32, 32))
    # Front-to-back order preserved: the composite of the decoded stack is the photo.
    torch.testing.assert_close(composite(out.layers, out.background), out.photo, atol=2e-3, rtol=0)
    assert out.ids.max() <= 2 and out.scene["scene_id"] == "k0"


def test_decode_sample_resizes_consistently():
    files, _ = _members(2, max_layers=2, size=64)
    out = decode_sample(files, num_objects=2, resolution=32)
    assert out.photo.shape == (3, 32, 32) and out.layers.shape == (2, 4, 32, 32) and out.ids.shape == (32, 32)
    assert torch.all((out.layers >= 0) & (out.layers <= 1))
    err = (composite(out.layers, out.background) - out.photo).abs().mean()
    assert err < 0.02


def test_too_many_objects_and_corrupt_samples_are_skipped_and_counted(tmp_path):
    files, _ = _members(3, max_layers=3)
    with pytest.raises(TooManyObjects):
        decode_sample(files, num_objects=2, resolution=32)
    write_shard(tmp_path / "a.tar", 6, max_objects=3, seed=1, corrupt=(1, 4))
    ds = make_dataset(str(tmp_path / "a.tar"), num_objects=3, resolution=32, shuffle=False, epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = list(ds)
    assert len(got) == 4 and ds.counts["corrupt"] == 2
    assert any("skipping" in str(w.message) for w in caught)
    assert got[-1].skipped["corrupt"] == 2

    ds2 = make_dataset(str(tmp_path / "a.tar"), num_objects=1, resolution=32, shuffle=False, epochs=1)
    kept = list(ds2)
    assert all(s.num_objects <= 1 for s in kept)
    assert ds2.counts["too_many_objects"] + len(kept) + ds2.counts["corrupt"] == 6


def test_truncated_shard_does_not_crash(tmp_path):
    write_shard(tmp_path / "b.tar", 4, seed=2)
    data = (tmp_path / "b.tar").read_bytes()
    (tmp_path / "c.tar").write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = list(
            make_dataset(str(tmp_path / "c.tar"), num_objects=3, resolution=32, shuffle=False, epochs=1)
        )
    assert 0 < len(got) < 4


def test_workers_split_shards_and_resume_continues_the_stream(tmp_path):
    keys = []
    for i in range(2):
        keys += write_shard(tmp_path / f"s-{i}.tar", 5, seed=i)
    pattern = str(tmp_path / "s-{0..1}.tar")
    ds = make_dataset(pattern, num_objects=3, resolution=32, shuffle=True, seed=3, shuffle_buffer=4, epochs=1)
    got = list(make_loader(ds, num_workers=2))
    assert sorted(s.key for s in got) == sorted(keys)  # each sample exactly once across the workers
    assert {s.worker for s in got} == {0, 1}

    full = [
        s.key for s in make_dataset(pattern, num_objects=3, resolution=32, seed=3, shuffle_buffer=4, epochs=3)
    ]
    stopped = make_dataset(pattern, num_objects=3, resolution=32, seed=3, shuffle_buffer=4, epochs=3)
    first = [s for _, s in zip(range(7), stopped, strict=False)]
    skip = {first[-1].worker: first[-1].position + 1}
    resumed = make_dataset(
        pattern, num_objects=3, resolution=32, seed=3, shuffle_buffer=4, epochs=3, skip=skip
    )
    assert [s.key for s in first] + [s.key for s in resumed] == full
    assert full[:10] != full[10:20]  # epochs are reshuffled


def test_expand_urls_braces_globs_and_errors(tmp_path):
    for i in range(3):
        write_shard(tmp_path / f"train-{i:06d}.tar", 1, seed=i)
    assert len(expand_urls(str(tmp_path / "train-{000000..000002}.tar"))) == 3
    assert len(expand_urls(str(tmp_path / "train-*.tar"))) == 3
    with pytest.raises(UserError, match="no shard file matches"):
        expand_urls(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(UserError, match="missing: .*train-000003"):
        expand_urls(str(tmp_path / "train-{000000..000009}.tar"))


def test_written_shard_follows_the_schema(tmp_path):
    write_shard(tmp_path / "d.tar", 2, max_objects=2, max_layers=4, seed=0)
    with tarfile.open(tmp_path / "d.tar") as tar:
        names = tar.getnames()
    first_key = names[0].split(".")[0]
    assert [n.split(".", 1)[1] for n in names if n.startswith(first_key)] == schema.member_names(4)
    sample = next(iter(wds.WebDataset(str(tmp_path / "d.tar"), shardshuffle=False)))
    assert np.load(io.BytesIO(sample[schema.DEPTH])).shape == (32, 32)


def _reference_decode(files: dict, num_objects: int, resolution: int) -> dict:
    """The straightforward decode: every member through PIL, each image converted to float on its own."""
    from PIL import Image

    def png(name: str, mode: str) -> torch.Tensor:
        with Image.open(io.BytesIO(files[name])) as im:
            return torch.from_numpy(np.array(im.convert(mode)))

    photo = png(schema.RGB, "RGB").permute(2, 0, 1).float() / 255
    background = png(schema.BACKGROUND, "RGB").permute(2, 0, 1).float() / 255
    ids = png(schema.IDS, "L").long()
    names = sorted(n for n in files if schema.layer_index(n) is not None)
    layers = [t for t in (png(n, "RGBA").permute(2, 0, 1).float() / 255 for n in names) if t[3].any()]
    h, w = photo.shape[-2:]
    empty = torch.tensor([*EMPTY_RGB, 0.0]).view(4, 1, 1).expand(4, h, w)
    stack = torch.stack([*layers, *([empty] * (num_objects - len(layers)))])
    stack = torch.where(stack[:, 3:4] == 0, empty[None], stack)
    if (h, w) != (resolution, resolution):
        from cobl.data import _resize

        alpha = _resize(stack[:, 3:4], resolution)
        premult = _resize(stack[:, :3] * stack[:, 3:4], resolution)
        rgb = torch.where(alpha > 1e-4, premult / alpha.clamp_min(1e-4), empty[None, :3, :1, :1])
        stack = torch.cat([rgb.clamp(0, 1), alpha.clamp(0, 1)], dim=1)
        photo = _resize(photo, resolution).clamp(0, 1)
        background = _resize(background, resolution).clamp(0, 1)
        ids = _resize(ids[None, None].float(), resolution, mode="nearest")[0, 0].long()
    return {"photo": photo, "layers": stack, "background": background, "ids": ids, "num_objects": len(layers)}


def _assert_identical(got: Sample, want: dict, names=("photo", "layers", "background", "ids")) -> None:
    for name in names:
        value = getattr(got, name)
        assert value.dtype == want[name].dtype and value.shape == want[name].shape, name
        assert torch.equal(value, want[name]), name  # bit-identical, not merely close
    assert got.num_objects == want["num_objects"]


@pytest.mark.parametrize(("size", "resolution"), [(32, 32), (48, 32)])
def test_fast_decode_is_bit_identical_to_the_reference_decode(size, resolution):
    from synth.dataset.shards import empty_layer_png

    for seed in range(3):
        files, _ = _members(1 + seed, max_layers=5, size=size, seed=seed)
        if seed == 1:  # an empty slot in front (dropped, not kept as a hole) and the canonical empty PNG
            files[schema.layer_name(0)], files[schema.layer_name(4)] = (
                files[schema.layer_name(4)],
                empty_layer_png(size, size),
            )
            files[schema.SCENE] = json.dumps({"scene_id": "k0", "num_objects": 1}).encode()  # as dropped
        want = _reference_decode(files, 6, resolution)
        for _ in range(2):  # the second pass recognises the empty slots by their bytes
            got = decode_sample(files, num_objects=6, resolution=resolution)
            _assert_identical(got, want)
            assert all(getattr(got, n).is_contiguous() for n in ("photo", "layers", "background", "ids"))
        no_ids = decode_sample(files, num_objects=6, resolution=resolution, ids=False)
        assert no_ids.ids is None
        _assert_identical(no_ids, want, names=("photo", "layers", "background"))


def test_fast_decode_keeps_corrupt_and_mixed_size_samples_skipped():
    files, _ = _members(2, max_layers=3, seed=4)
    small, _ = _members(2, max_layers=3, size=16, seed=4)
    broken = dict(files, **{schema.layer_name(1): files[schema.layer_name(1)][:60]})
    with pytest.raises(SkipSample, match="Error"):
        decode_sample(broken, num_objects=3, resolution=32)
    mixed = dict(files, **{schema.layer_name(0): small[schema.layer_name(0)]})
    with pytest.raises(SkipSample, match="different sizes"):
        decode_sample(mixed, num_objects=3, resolution=32)
    with pytest.raises(SkipSample, match="different sizes"):  # ids.png is checked only when decoded
        decode_sample(dict(files, **{schema.IDS: small[schema.IDS]}), num_objects=3, resolution=32)
    assert decode_sample(dict(files, **{schema.IDS: b"junk"}), 3, 32, ids=False).num_objects == 2


def test_loader_without_ids_batches_and_passes_scenes_through(tmp_path):
    write_shard(tmp_path / "e.tar", 4, seed=5)
    ds = make_dataset(
        str(tmp_path / "e.tar"), num_objects=3, resolution=32, shuffle=False, epochs=1, ids=False
    )
    got = list(make_loader(ds, num_workers=0))
    batch = collate(got)
    assert batch.ids is None and batch.layers.shape == (4, 3, 4, 32, 32)
    assert [s.scene["scene_id"] for s in got] == [s.key for s in got]
    with_ids = collate(list(make_dataset(str(tmp_path / "e.tar"), 3, 32, shuffle=False, epochs=1)))
    assert with_ids.ids.shape == (4, 32, 32) and torch.equal(with_ids.layers, batch.layers)
