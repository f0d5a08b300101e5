"""Reading scene shards (``core.schema`` members) into tensors, for training and evaluation.

``decode_sample`` turns one WebDataset sample into ``core.layers``-layout tensors: non-empty layers in
front-to-back order (``layer_00`` frontmost), padded with empty slots (alpha 0, ``EMPTY_RGB``) up to K.
``make_dataset`` is the streaming pipeline: shards split over nodes (ranks) and DataLoader workers
(``wds.split_by_node``/``wds.split_by_worker``), shuffled per epoch, samples shuffled in a seeded buffer,
decoded; a corrupt sample or one with more than K objects is skipped, warned about and counted, never fatal.

Resumable position: the stream of every (rank, worker) is an endless, seeded sequence of epochs. Each yielded
sample carries ``worker`` (global worker index) and ``position`` (index in that worker's raw stream); the
trainer records the last position per worker and passes ``skip`` back on resume, so the resumed stream
continues exactly where the interrupted one stopped (skipped raw samples are not decoded).
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import logging
import random
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cobl.batch import Batch, Sample
from cobl.depth import depth_from_npy_bytes, simulate_monocular
from cobl.sample_check import SkipLedger, layer_record_mismatch
from core import schema
from core.errors import UserError
from core.layers import ALPHA_CHANNEL, EMPTY_RGB
from core.policy import DEPTH_SOURCES

log = logging.getLogger(__name__)


class SkipSample(ValueError):
    """A sample the pipeline drops (counted under ``reason``)."""

    reason = "corrupt"


class TooManyObjects(SkipSample):
    reason = "too_many_objects"


# --------------------------------------------------------------------------- urls
def expand_urls(pattern: str | list[str]) -> list[str]:
    """Expand WebDataset brace patterns (``train-{000000..000009}.tar``) and shell globs into files."""
    import braceexpand

    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    urls: list[str] = []
    for pat in patterns:
        for part in pat.split("::"):
            for url in braceexpand.braceexpand(part):
                if url.startswith(("http://", "https://", "pipe:", "s3://", "gs://")):
                    urls.append(url)
                elif glob.has_magic(url):
                    urls.extend(sorted(glob.glob(url)))
                else:
                    urls.append(url)
    local_missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not _exists(u)]
    if not urls or local_missing:
        shown = local_missing[0] if local_missing else pattern
        raise UserError(f"{pattern!r}: no shard file matches (missing: {shown})", option="data")
    return urls


def _exists(path: str) -> bool:
    import os

    return os.path.isfile(path)


# --------------------------------------------------------------------------- one sample
# PNG byte strings already seen to decode to a fully transparent image -> (height, width). Shards repeat the
# same encoder output for every empty layer slot, so after the first one an empty slot costs a dict lookup
# instead of an inflate (exact: equal bytes decode to equal pixels). Bounded; only tiny PNGs are kept.
_EMPTY_PNGS: dict[bytes, tuple[int, int]] = {}
_EMPTY_CACHE_SIZE = 64
_EMPTY_CACHE_MAX_BYTES = 4096


def _png(data: bytes, mode: str) -> np.ndarray:
    """uint8 ``[H, W, C]`` (read-only, no extra copy): PIL's decode, converted only if the mode differs."""
    with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
        return np.asarray(im if im.mode == mode else im.convert(mode))


def _layer_png(data: bytes) -> np.ndarray | tuple[int, int]:
    """RGBA uint8 ``[H, W, 4]`` of a layer member, or its ``(H, W)`` when it is fully transparent."""
    size = _EMPTY_PNGS.get(data)
    if size is not None:
        return size
    rgba = _png(data, "RGBA")
    if rgba[..., ALPHA_CHANNEL].any():
        return rgba
    if len(data) <= _EMPTY_CACHE_MAX_BYTES and len(_EMPTY_PNGS) < _EMPTY_CACHE_SIZE:
        _EMPTY_PNGS[bytes(data)] = rgba.shape[:2]
    return rgba.shape[:2]


def _resize(x: torch.Tensor, resolution: int, mode: str = "bilinear") -> torch.Tensor:
    """Centre-crop to square, then resize ``[..., C, H, W]`` to ``resolution``²."""
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    if side == resolution:
        return x
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    if mode == "nearest":
        out = F.interpolate(flat, size=(resolution, resolution), mode="nearest")
    else:
        out = F.interpolate(
            flat, size=(resolution, resolution), mode=mode, antialias=True, align_corners=False
        )
    return out.reshape(*lead, *out.shape[-3:])


# Salt of the per-sample seed of the simulated monocular depth (``cobl.depth.simulate_monocular``).
MONOCULAR_DEPTH_SALT = 0xDE9


def decode_sample(
    sample: dict[str, Any],
    num_objects: int,
    resolution: int,
    ids: bool = True,
    depth: bool = True,
    depth_source: str = "rendered",
) -> Sample:
    """One WebDataset sample (member name -> bytes) -> a ``Sample`` (``photo [3,H,W]``, ``layers [K,4,H,W]``
    with K = ``num_objects``, ``background [3,H,W]``, ``ids [H,W]`` long, ``depth [1,H,W]``, the scene's own
    object count, key and scene.json), floats in [0, 1].

    ``ids=False`` skips ``ids.png`` (only evaluation needs it; ``ids`` is then None). ``depth`` is the
    relative disparity of ``depth.npy`` (``cobl.depth``); ``depth=False`` skips it (``depth`` is then None).
    ``depth_source="monocular"`` degrades it at the decoded resolution like a monocular estimate, seeded by
    the sample key alone (``cobl.depth.simulate_monocular``), so training and evaluation see the same.
    Raises ``TooManyObjects`` for scenes with more than K non-empty layers, ``SkipSample`` for corrupt ones.

    Why it is shaped like this: PNG inflate is the floor of the cost, so everything else is done once per
    sample — empty layer slots are recognised by their bytes (``_layer_png``), and photo, background and
    layers are converted uint8 -> float straight into one preallocated buffer (no per-image tensor copies;
    one shared-memory block per sample when a DataLoader worker sends it). The result is bit-identical to
    decoding every member and converting each with ``float() / 255``.
    """
    key = str(sample.get("__key__", "?"))
    try:
        photo_u8 = _png(sample[schema.RGB], "RGB")
        background_u8 = _png(sample[schema.BACKGROUND], "RGB")
        ids_u8 = _png(sample[schema.IDS], "L") if ids else None
        depth_t = depth_from_npy_bytes(sample[schema.DEPTH])[None] if depth else None
        scene_raw = sample.get(schema.SCENE)
        scene = json.loads(scene_raw) if scene_raw is not None else {}
        layer_members = sorted(
            (idx, name) for name in sample if (idx := schema.layer_index(name)) is not None
        )
        layers_u8 = [
            rgba for _, name in layer_members if isinstance(rgba := _layer_png(sample[name]), np.ndarray)
        ]
    except (KeyError, OSError, ValueError, SyntaxError) as err:
        raise SkipSample(f"sample {key}: {type(err).__name__}: {err}") from err
    if (why := layer_record_mismatch(scene, [i for i, _ in layer_members], len(layers_u8))) is not None:
        raise SkipSample(f"sample {key}: {why}")  # e.g. a lost layer member: not a scene with fewer objects
    shapes = {tuple(a.shape[:2]) for a in [photo_u8, background_u8, *layers_u8]}
    if ids_u8 is not None:
        shapes.add(tuple(ids_u8.shape))
    if depth_t is not None:
        shapes.add(tuple(depth_t.shape[-2:]))
    if len(shapes) != 1:
        raise SkipSample(f"sample {key}: members have different sizes {sorted(shapes)}")
    n = len(layers_u8)
    if n > num_objects:
        raise TooManyObjects(f"sample {key}: {n} objects > K={num_objects} (num_objects)")

    h, w = photo_u8.shape[:2]
    hw = h * w
    # One block for every tensor of the sample: a DataLoader worker then sends one shared-memory segment
    # (one file descriptor) per sample instead of one per tensor, which is most of the per-sample IPC cost.
    nfloat = (6 + 4 * num_objects) * hw
    block = torch.empty(nfloat * 4 + (hw * 8 if ids_u8 is not None else 0), dtype=torch.uint8)
    flat = block[: nfloat * 4].view(torch.float32)
    buf = flat.numpy()
    photo_np = buf[: 3 * hw].reshape(3, h, w)
    background_np = buf[3 * hw : 6 * hw].reshape(3, h, w)
    stack_np = buf[6 * hw :].reshape(num_objects, 4, h, w)
    # Same arithmetic as ``uint8_tensor.float() / 255`` (IEEE float32 division), hence bit-identical.
    np.divide(photo_u8.transpose(2, 0, 1), 255, out=photo_np, dtype=np.float32)
    np.divide(background_u8.transpose(2, 0, 1), 255, out=background_np, dtype=np.float32)
    empty_rgb = np.asarray(EMPTY_RGB, np.float32)[:, None, None]
    for i, rgba in enumerate(layers_u8):
        np.divide(rgba.transpose(2, 0, 1), 255, out=stack_np[i], dtype=np.float32)
        # Transparent pixels carry the neutral colour, so the model never has to guess hidden RGB there.
        np.copyto(stack_np[i, :3], empty_rgb, where=rgba[None, :, :, 3] == 0)
    stack_np[n:, :3] = empty_rgb
    stack_np[n:, 3] = 0.0
    photo = flat[: 3 * hw].view(3, h, w)
    background = flat[3 * hw : 6 * hw].view(3, h, w)
    stack = flat[6 * hw :].view(num_objects, 4, h, w)
    ids_t = None
    if ids_u8 is not None:
        ids_t = block[nfloat * 4 :].view(torch.int64).view(h, w)
        np.copyto(ids_t.numpy(), ids_u8)
    if (h, w) != (resolution, resolution):
        empty = torch.from_numpy(empty_rgb)
        # Resample premultiplied colour so edges do not pick up the neutral colour, then un-premultiply.
        alpha = _resize(stack[:, ALPHA_CHANNEL : ALPHA_CHANNEL + 1], resolution)
        premult = _resize(stack[:, :3] * stack[:, ALPHA_CHANNEL : ALPHA_CHANNEL + 1], resolution)
        rgb = torch.where(alpha > 1e-4, premult / alpha.clamp_min(1e-4), empty[None])
        stack = torch.cat([rgb.clamp(0, 1), alpha.clamp(0, 1)], dim=1).contiguous()
        photo = _resize(photo, resolution).clamp(0, 1).contiguous()
        background = _resize(background, resolution).clamp(0, 1).contiguous()
        if ids_t is not None:
            ids_t = _resize(ids_t[None, None].float(), resolution, mode="nearest")[0, 0].long().contiguous()
        if depth_t is not None:
            depth_t = _resize(depth_t, resolution).clamp(0, 1).contiguous()
    if depth_t is not None and depth_source == "monocular":
        depth_t = simulate_monocular(depth_t, sample_seed(key, MONOCULAR_DEPTH_SALT))
    return Sample(
        photo=photo,
        layers=stack,
        background=background,
        ids=ids_t,
        depth=depth_t,
        num_objects=n,
        key=key,
        scene=scene,
    )


def decode_or_count(sample: dict[str, Any], ledger: SkipLedger, *args: Any, **kwargs: Any) -> Sample | None:
    """``decode_sample``, counted in ``ledger`` (``cobl.sample_check``): None for a sample the pipeline drops
    (warned about once per reason), ``LoaderStopped`` when the stream has gone bad."""
    try:
        out = decode_sample(sample, *args, **kwargs)
    except SkipSample as err:
        ledger.skipped(err.reason, str(err))
        return None
    ledger.decoded()
    return out


# --------------------------------------------------------------------------- pipeline
class LayerDataset(torch.utils.data.IterableDataset):
    """Endless, seeded, resumable stream of decoded samples (see the module docstring)."""

    def __init__(
        self,
        urls: list[str],
        num_objects: int,
        resolution: int,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 256,
        skip: dict[int, int] | None = None,
        epochs: int | None = None,
        ids: bool = True,
        depth: bool = True,
        depth_source: str = "rendered",
    ):
        super().__init__()
        self.urls = list(urls)
        self.num_objects = num_objects  # K: the slots every sample is padded to
        self.resolution = resolution
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.skip = dict(skip or {})  # global worker -> number of raw samples already consumed
        self.epochs = epochs  # None = endless
        self.ids = ids  # decode ids.png (evaluation); training does not need it
        self.depth = depth  # decode depth.npy (only depth-conditioned models need it)
        self.depth_source = depth_source  # "rendered" or "monocular" (cobl.depth.DEPTH_SOURCES)
        self.counts = {"corrupt": 0, "too_many_objects": 0}

    def _shard_stream(self) -> Iterator[dict[str, str]]:
        epochs = itertools.count() if self.epochs is None else range(self.epochs)
        for epoch in epochs:
            urls = list(self.urls)
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(urls)  # same order on every rank
            for url in urls:
                yield {"url": url}

    def _raw_samples(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        def warn_and_count(exn: Exception) -> bool:
            self._ledger.skipped("corrupt", f"unreadable shard data: {exn}")
            return True

        pipeline = wds.DataPipeline(
            self._shard_stream,
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=warn_and_count),
        )
        return iter(pipeline)

    def global_worker(self) -> int:
        import webdataset as wds

        rank, _, worker, num_workers = wds.utils.pytorch_worker_info()
        return rank * num_workers + worker

    def __iter__(self) -> Iterator[Sample]:
        gw = self.global_worker()
        # counts skips, warns once per reason, stops a stream that has gone bad (cobl.sample_check)
        self._ledger = ledger = SkipLedger(self.counts, self.num_objects, depth=self.depth)
        raw: Iterator[dict[str, Any]] = self._raw_samples()
        if self.shuffle:
            rng = random.Random(self.seed * 7919 + gw)
            raw = _buffer_shuffle(raw, self.shuffle_buffer, rng)
        start = self.skip.get(gw, 0)
        for position, sample in enumerate(raw):
            if position < start:
                continue
            out = decode_or_count(
                sample, ledger, self.num_objects, self.resolution, ids=self.ids, depth=self.depth,
                depth_source=self.depth_source,
            )
            if out is None:
                continue
            out.worker = gw
            out.position = position
            out.skipped = dict(self.counts)
            yield out


def _buffer_shuffle(src: Iterator, bufsize: int, rng: random.Random) -> Iterator:
    """Seeded shuffle buffer (the same algorithm as ``wds.shuffle``, with our own RNG for resumability)."""
    import webdataset as wds

    return wds.filters._shuffle(src, bufsize=bufsize, initial=min(bufsize, 64), rng=rng)


def make_dataset(
    urls: str | list[str],
    num_objects: int,
    resolution: int,
    shuffle: bool = True,
    seed: int = 0,
    shuffle_buffer: int = 256,
    skip: dict[int, int] | None = None,
    epochs: int | None = None,
    ids: bool = True,
    depth: bool = True,
    depth_source: str = "rendered",
) -> LayerDataset:
    """The streaming dataset over ``urls`` (a brace pattern, a glob, or a list of shard paths).

    ``ids=False``/``depth=False`` skip decoding ``ids.png``/``depth.npy`` (samples then carry None): a
    training loader's saving. ``depth_source``: the renderer's exact depth or its simulated monocular
    estimate (``decode_sample``)."""
    if depth_source not in DEPTH_SOURCES:
        raise UserError(
            f"expected one of {', '.join(DEPTH_SOURCES)}, got {depth_source!r}", option="depth_source"
        )
    if isinstance(urls, str) or any(("{" in u or glob.has_magic(u)) for u in urls):
        urls = expand_urls(urls)
    return LayerDataset(
        urls, num_objects, resolution, shuffle, seed, shuffle_buffer, skip, epochs, ids, depth, depth_source
    )


def collate(samples: list[Sample]) -> Batch:
    """Stack the tensors (``ids``/``depth`` None when any sample lacks them); keys, scenes and stream
    positions stay lists."""

    def stacked(name: str) -> torch.Tensor | None:
        values = [getattr(s, name) for s in samples]
        return None if any(v is None for v in values) else torch.stack(values)

    return Batch(
        photo=stacked("photo"),
        layers=stacked("layers"),
        background=stacked("background"),
        ids=stacked("ids"),
        depth=stacked("depth"),
        num_objects=torch.tensor([s.num_objects for s in samples]),
        keys=[s.key for s in samples],
        scenes=[s.scene for s in samples],
        workers=[s.worker for s in samples],
        positions=[s.position for s in samples],
        skipped=[s.skipped for s in samples],
    )


def batches(loader_iter: Iterator[Sample], batch_size: int) -> Iterator[Batch]:
    """Group a stream of single samples into collated batches (in the main process, so the global sample
    order does not depend on how samples are split over ranks and workers)."""
    while True:
        chunk = list(itertools.islice(loader_iter, batch_size))
        if not chunk:
            return
        yield collate(chunk)


def _as_is(sample: Sample) -> Sample:
    return sample


def make_loader(
    dataset: LayerDataset, num_workers: int = 0, prefetch: int = 4
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding single decoded samples (``batch_size=None``); batch with ``batches``.

    Samples pass through as they are: the default ``collate_fn`` (``default_convert``) would walk every
    sample's ``scene`` dict recursively, which cost a third of the loader's time and converts nothing."""
    kwargs: dict[str, Any] = {"batch_size": None, "num_workers": num_workers, "collate_fn": _as_is}
    if num_workers:
        kwargs.update(prefetch_factor=prefetch, persistent_workers=False)
    return torch.utils.data.DataLoader(dataset, **kwargs)


def sample_seed(key: str, *salt: int) -> int:
    """A stable seed from a sample key and integers (noise that depends on the sample, not the batch)."""
    return zlib.crc32(key.encode()) * 1_000_003 + zlib.crc32(repr(salt).encode())
