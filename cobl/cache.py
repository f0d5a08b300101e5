"""Every training scene prepared once (``cobl.examples``): held in memory when small, on disk when large.

Why: the loop used to decode every scene's PNGs and encode its layers through the codec at every step (at
512², 14 VAE encodes per scene), and the model step was the smaller part of the step. A prepared example is a
pure function of the shard file, the codec's weights, K, the resolution and the depth input, so it is
computed once per shard and read back by index from then on.

One record layout (``_rows``), one fill (``fill``), one reader (``ExampleStore``), two tiers:
  * ``memory``: the rows of every shard in RAM (the demo's 456 training scenes at 64²: ~150 MB), filled at
    every start (a resumed run fills again: seconds at that size);
  * ``disk``: per image shard, chunk files ``{stem}-{hash}-{c}.safetensors`` of at most ``CHUNK_ROWS`` rows
    and an index ``{stem}-{hash}.json`` written last (an interrupted fill redoes only unfinished shards;
    ranks fill disjoint shards), read back memory-mapped (safetensors ``safe_open``), row by row;
  * ``auto``: memory when the estimate (first shard's sample count x shards x bytes per row) is at most
    ``MEMORY_LIMIT_BYTES``, else disk; remote shards (URLs) are streamed (``off``), as they cannot be
    fingerprinted by size and modification time.

Staleness: ``hash`` is a digest of ``fingerprint``: the cache format, the codec (kind, factor, or the VAE's
config and a digest of its weights), K, the resolution, the depth input and its source, and the shard file's
resolved path, size and modification time. The index repeats the whole fingerprint and a shard is reused only
when it is equal, so a change of any of them is a new name and a stale file is never read.

Augmentation: there is none today, and the monocular depth degradation is seeded by the sample key alone
(``cobl.data.decode_sample``), so a prepared example equals what the streaming path computes every step. A
random augmentation added later (a flip) would have to happen before encoding (a VAE latent of a flipped
image is not the flipped latent; space-to-depth also reorders channels within each block): it would be a
fingerprinted option, and the cache would hold a fixed number of variants per scene, picked by
(seed, epoch, key).

Stored per row: the latents (float32), the photo as uint8 (exact: a decoded photo is ``u8 / 255``; a photo
resized to ``--resolution`` is rounded to 8 bits, as a shard rendered at that size would be), the depth
(float32), the loss's alpha maps at the latent grid (float32), the slot relations (bool), the object count.
Encoding runs in float32 (no autocast), once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tarfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cobl.data import _as_is, collate, decode_or_count
from cobl.examples import Examples, prepare_examples
from cobl.sample_check import SkipLedger
from core.errors import UserError

CACHE_FORMAT = 1  # bump when decode_sample, prepare_examples or the stored layout change what a row holds
MEMORY_LIMIT_BYTES = 2 * 2**30  # auto: above this estimate per process, the disk tier
CHUNK_ROWS = 256  # rows per disk chunk: bounds what the fill holds per shard before writing
TIERS = ("auto", "memory", "disk", "off")
_EPOCH_SALT = 0xCAC4E


@dataclass(frozen=True)
class CacheSpec:
    """What a prepared example depends on besides the shard and the codec."""

    num_objects: int
    resolution: int
    depth: bool
    depth_source: str


# --------------------------------------------------------------------------- fingerprints
def codec_identity(codec: Any) -> dict[str, Any]:
    """What of the codec shapes its latents: kind and factor, or the VAE's config and weights."""
    ident: dict[str, Any] = {"kind": codec.kind}
    if hasattr(codec, "factor"):
        ident["factor"] = codec.factor
    vae = getattr(codec, "vae", None)
    if vae is not None:
        h = hashlib.sha256()
        for name, tensor in sorted(vae.state_dict().items()):
            h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        ident.update(
            weights=h.hexdigest(),
            config=json.loads(vae.to_json_string()),
            sample=bool(codec.sample),
            scaling_factor=codec.scaling_factor,
            shift_factor=codec.shift_factor,
        )
    return ident


def fingerprint(spec: CacheSpec, codec_id: dict[str, Any], url: str) -> dict[str, Any]:
    stat = os.stat(url)
    return {
        "format": CACHE_FORMAT,
        "codec": codec_id,
        **spec.__dict__,
        "shard": {"path": str(Path(url).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
    }


def cache_name(url: str, fp: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    return f"{Path(url).name.removesuffix('.tar')}-{digest}"


# --------------------------------------------------------------------------- rows
def _rows(examples: Examples) -> dict[str, torch.Tensor]:
    """The stored form of prepared examples (CPU tensors with a leading row dimension)."""
    rows = {
        "latents": examples.latents.float(),
        "photo": (examples.photo.float() * 255).round().clamp(0, 255).to(torch.uint8),
        "object_area": examples.object_area.float(),
        "hidden_area": examples.hidden_area.float(),
        "occupied": examples.occupied.bool(),
        "overlap": examples.overlap.bool(),
        "num_objects": examples.num_objects.long(),
    }
    if examples.depth is not None:
        rows["depth"] = examples.depth.float()
    return {k: v.cpu().contiguous() for k, v in rows.items()}


def _examples(rows: dict[str, torch.Tensor], keys: list[str]) -> Examples:
    return Examples(
        latents=rows["latents"],
        photo=rows["photo"].float() / 255,  # the same IEEE division as decoding: bit-identical
        depth=rows.get("depth"),
        object_area=rows["object_area"],
        hidden_area=rows["hidden_area"],
        occupied=rows["occupied"],
        overlap=rows["overlap"],
        num_objects=rows["num_objects"],
        keys=keys,
    )


class _Chunk:
    """Rows in RAM, or a safetensors chunk file read row by row through its memory map."""

    def __init__(self, keys: list[str], tensors: dict[str, torch.Tensor] | None = None, path=None):
        from safetensors import safe_open

        self.keys = keys
        self.tensors = tensors
        self.file = safe_open(str(path), framework="pt") if path is not None else None

    def rows(self, index: list[int]) -> dict[str, torch.Tensor]:
        if self.tensors is not None:
            at = torch.tensor(index, dtype=torch.long)
            return {k: v.index_select(0, at) for k, v in self.tensors.items()}
        return {
            name: torch.cat([self.file.get_slice(name)[i : i + 1] for i in index])
            for name in self.file.keys()
        }


class ExampleStore:
    """Prepared examples of a list of shards, indexed 0..N-1 in shard order, then in-shard order."""

    def __init__(self, chunks: list[_Chunk], skipped: dict[str, int], tier: str, filled: int, reused: int):
        self.chunks = chunks
        self.starts = list(itertools.accumulate((len(c.keys) for c in chunks), initial=0))
        self.skipped = skipped  # samples dropped while filling (corrupt, too many objects), by reason
        self.tier = tier
        self.filled, self.reused = filled, reused  # shards encoded now / read from earlier fills

    def __len__(self) -> int:
        return self.starts[-1]

    def gather(self, indices: list[int]) -> Examples:
        """The examples at ``indices`` (in that order), on the CPU."""
        if len(self.chunks) == 1:
            chunk = self.chunks[0]
            return _examples(chunk.rows(indices), [chunk.keys[i] for i in indices])
        import bisect

        parts, keys = [], []
        for i in indices:
            c = bisect.bisect_right(self.starts, i) - 1
            parts.append(self.chunks[c].rows([i - self.starts[c]]))
            keys.append(self.chunks[c].keys[i - self.starts[c]])
        return _examples({k: torch.cat([p[k] for p in parts]) for k in parts[0]}, keys)


# --------------------------------------------------------------------------- filling
class _ShardScenes(torch.utils.data.IterableDataset):
    """Decoded scenes of whole shards, each DataLoader worker taking every n-th shard, with an end marker
    ``(url, skip counts)`` after each shard's last scene."""

    def __init__(self, urls: list[str], spec: CacheSpec):
        super().__init__()
        self.urls, self.spec = urls, spec

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        import webdataset as wds

        info = torch.utils.data.get_worker_info()
        mine = self.urls[info.id :: info.num_workers] if info is not None else self.urls
        for url in mine:
            counts: dict[str, int] = {}

            def unreadable(exn: Exception, counts=counts) -> bool:
                counts["corrupt"] = counts.get("corrupt", 0) + 1
                warnings.warn(f"skipping unreadable shard data: {exn}", stacklevel=2)
                return True

            s = self.spec
            ledger = SkipLedger(counts, s.num_objects, depth=s.depth)  # bounds a shard that has gone bad
            for raw in wds.tarfile_samples([{"url": url}], handler=unreadable):
                sample = decode_or_count(
                    raw, ledger, s.num_objects, s.resolution, ids=False, depth=s.depth,
                    depth_source=s.depth_source,
                )
                if sample is not None:
                    yield url, sample
            yield url, counts


def fill(
    urls: list[str],
    spec: CacheSpec,
    codec: Any,
    device: torch.device | str,
    on_chunk: Callable[[str, int, dict[str, torch.Tensor], list[str]], None],
    on_shard: Callable[[str, dict[str, int], int], None],
    num_workers: int = 0,
    encode_batch: int = 8,
    progress: bool = False,
) -> None:
    """Decode (``num_workers`` DataLoader workers) and encode (``device``, batches of ``encode_batch``) every
    scene of ``urls``; hand each shard's rows to ``on_chunk(url, index, rows, keys)`` in chunks of at most
    ``CHUNK_ROWS``, then ``on_shard(url, skip counts, chunks)`` once the shard is done."""
    from tqdm.auto import tqdm

    if not urls:
        return
    loader = torch.utils.data.DataLoader(
        _ShardScenes(urls, spec),
        batch_size=None,
        num_workers=min(num_workers, len(urls)),
        collate_fn=_as_is,
    )
    pending: list[tuple[str, Any]] = []
    held: dict[str, tuple[list[dict[str, torch.Tensor]], list[str]]] = {}
    chunks_done: dict[str, int] = {}
    bar = tqdm(total=estimate_rows(urls), desc="encode", unit="scene", disable=not progress)

    def emit(url: str, final: bool) -> None:
        parts, keys = held.get(url, ([], []))
        while len(keys) >= CHUNK_ROWS or (final and keys):
            take = min(CHUNK_ROWS, len(keys))
            rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            on_chunk(url, chunks_done.get(url, 0), {k: v[:take] for k, v in rows.items()}, keys[:take])
            chunks_done[url] = chunks_done.get(url, 0) + 1
            parts, keys = [{k: v[take:] for k, v in rows.items()}], keys[take:]
        held[url] = (parts if keys else [], keys)

    def encode() -> None:
        if not pending:
            return
        batch = collate([s for _, s in pending]).to(device)
        rows = _rows(prepare_examples(codec, batch))
        for i, (url, sample) in enumerate(pending):
            parts, keys = held.setdefault(url, ([], []))
            parts.append({k: v[i : i + 1] for k, v in rows.items()})
            keys.append(sample.key)
        for url in {u for u, _ in pending}:
            emit(url, final=False)
        bar.update(len(pending))
        pending.clear()

    for url, item in loader:
        if isinstance(item, dict):  # the end of a shard
            encode()
            emit(url, final=True)
            on_shard(url, item, chunks_done.get(url, 0))
            continue
        pending.append((url, item))
        if len(pending) >= encode_batch:
            encode()
    bar.close()


def _local(urls: list[str]) -> bool:
    return all(os.path.isfile(u) for u in urls)


def estimate_rows(urls: list[str]) -> int | None:
    """The first shard's scene count times the number of shards (tar headers only); None for remote shards."""
    if not _local(urls[:1]):
        return None
    with tarfile.open(urls[0]) as tar:
        keys = {m.name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()}
    return len(keys) * len(urls)


def row_bytes(spec: CacheSpec, codec: Any) -> int:
    """Bytes of one stored row (``_rows``)."""
    side = spec.resolution // codec.downsample
    k, r2 = spec.num_objects, spec.resolution**2
    latents = (k + 1) * codec.latent_channels * side**2 * 4
    return latents + 3 * r2 + (4 * r2 if spec.depth else 0) + 2 * side**2 * 4 + k + k * k + 8


def choose_tier(tier: str, urls: list[str], spec: CacheSpec, codec: Any) -> str:
    if tier not in TIERS:
        raise UserError(f"expected one of {', '.join(TIERS)}, got {tier!r}", option="cache")
    if tier == "disk" and not _local(urls):
        raise UserError("the disk tier fingerprints local shard files; these are remote (or give --cache "
                        "memory / off)", option="cache")
    if tier != "auto":
        return tier
    if not _local(urls):  # remote shards: no size to fingerprint, no cheap count: stream them
        return "off"
    return "memory" if estimate_rows(urls) * row_bytes(spec, codec) <= MEMORY_LIMIT_BYTES else "disk"


# --------------------------------------------------------------------------- the two tiers
def memory_store(
    urls: list[str], spec: CacheSpec, codec: Any, device: Any, num_workers: int = 0,
    encode_batch: int = 8, progress: bool = False,
) -> ExampleStore:
    """Fill every shard into RAM (one concatenated chunk: a batch is one ``index_select`` per field)."""
    urls = [str(u) for u in urls]
    parts: dict[str, list[tuple[dict[str, torch.Tensor], list[str]]]] = {u: [] for u in urls}
    skipped: dict[str, int] = {}

    def on_chunk(url, index, rows, keys):
        parts[url].append((rows, keys))

    def on_shard(url, counts, chunks):
        for k, v in counts.items():
            skipped[k] = skipped.get(k, 0) + v

    fill(urls, spec, codec, device, on_chunk, on_shard, num_workers, encode_batch, progress)
    ordered = [p for u in urls for p in parts[u]]
    chunks = []
    if ordered:
        tensors = {k: torch.cat([rows[k] for rows, _ in ordered]) for k in ordered[0][0]}
        chunks = [_Chunk([key for _, keys in ordered for key in keys], tensors)]
    return ExampleStore(chunks, skipped, "memory", filled=len(urls), reused=0)


def disk_store(
    urls: list[str], spec: CacheSpec, codec: Any, device: Any, cache_dir: str | Path,
    rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None, num_workers: int = 0,
    encode_batch: int = 8, progress: bool = False,
) -> ExampleStore:
    """Fill the shards of this rank (every ``world``-th) that have no complete, equal-fingerprint entry in
    ``cache_dir``; wait for every rank (``barrier``); open every shard's chunks."""
    from safetensors.torch import save_file

    from core.atomic import atomic_path, write_text_atomic

    urls = [str(u) for u in urls]
    cache_dir = Path(cache_dir)
    codec_id = codec_identity(codec)
    prints = {u: fingerprint(spec, codec_id, u) for u in urls}
    names = {u: cache_name(u, prints[u]) for u in urls}

    def index_of(url: str) -> dict[str, Any] | None:
        path = cache_dir / f"{names[url]}.json"
        if not path.is_file():
            return None
        index = json.loads(path.read_text())
        return index if index.get("fingerprint") == prints[url] else None

    todo = [u for i, u in enumerate(urls) if i % world == rank and index_of(u) is None]
    keys_of: dict[str, list[list[str]]] = {u: [] for u in todo}

    def on_chunk(url, index, rows, keys):
        with atomic_path(cache_dir / f"{names[url]}-{index:04d}.safetensors") as tmp:
            save_file(rows, str(tmp))
        keys_of[url].append(keys)

    def on_shard(url, counts, chunks):
        index = {"fingerprint": prints[url], "keys": keys_of[url], "skipped": counts}
        write_text_atomic(cache_dir / f"{names[url]}.json", json.dumps(index))

    cache_dir.mkdir(parents=True, exist_ok=True)
    fill(todo, spec, codec, device, on_chunk, on_shard, num_workers, encode_batch, progress)
    barrier()
    chunks, skipped = [], {}
    for url in urls:
        index = index_of(url)
        if index is None:
            message = f"{url}: no complete cache entry in {cache_dir} after filling"
            raise UserError(message, option="cache_dir")
        for k, v in index["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
        for c, keys in enumerate(index["keys"]):
            chunks.append(_Chunk(keys, path=cache_dir / f"{names[url]}-{c:04d}.safetensors"))
    return ExampleStore(chunks, skipped, "disk", filled=len(todo), reused=len(urls) - len(todo))


# --------------------------------------------------------------------------- the order of training
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + _EPOCH_SALT)
    return torch.randperm(n, generator=g)


def cached_batches(
    store: ExampleStore, batch_size: int, seed: int, rank: int = 0, world: int = 1, offset: int = 0
) -> Iterator[Examples]:
    """Micro-batches of ``store`` for one rank: a seeded permutation per epoch, concatenated into one global
    stream of which ``offset`` items were already seen; the i-th micro-batch of rank r takes the items from
    ``offset + (i * world + r) * batch_size`` on. A function of (seed, offset) alone, so a resumed run
    continues the same stream, and ``world`` ranks of batch B see what one process of batch ``world * B``
    sees."""
    n = len(store)
    orders: dict[int, torch.Tensor] = {}
    for i in itertools.count():
        begin = offset + (i * world + rank) * batch_size
        index = []
        for p in range(begin, begin + batch_size):
            epoch = p // n
            if epoch not in orders:
                orders = {e: v for e, v in orders.items() if e >= epoch - 1}
                orders[epoch] = epoch_order(n, seed, epoch)
            index.append(int(orders[epoch][p % n]))
        yield store.gather(index)
