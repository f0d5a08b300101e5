"""Loader throughput (decoded tensors, batched) vs raw tar reading, in samples/s. Target ratio >= 0.5.

    python bench/bench_loader.py [--data 'DIR/shards/train-*.tar'] [--num-objects 6] [--resolution 64] \
        [--workers 2]

--data takes a shard path, a glob or a brace pattern; without it the bench writes synthetic shards
(tests/shardmaker.py) at --size into a temporary folder. One run: --reps interleaved repetitions of
(raw tar pass, loader pass with ids.png, loader pass without ids.png as a trainer can use it); the medians are
printed. Raw reading is WebDataset's tar iteration in this process (bytes only, nothing decoded).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _raw_rate(urls: list[str]) -> tuple[float, int, int]:
    import webdataset as wds

    start = time.perf_counter()
    raw = nbytes = 0
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        raw += 1
        nbytes += sum(len(v) for v in sample.values() if isinstance(v, bytes))
    return raw / (time.perf_counter() - start), raw, nbytes


def _loader_rate(urls: list[str], args: argparse.Namespace, ids: bool) -> tuple[float, int]:
    from cobl.data import batches, make_dataset, make_loader

    ds = make_dataset(
        urls, args.num_objects, args.resolution, shuffle=True, seed=0, epochs=1, ids=ids, depth=args.depth
    )
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stream = batches(iter(make_loader(ds, num_workers=args.workers)), args.batch_size)
        next(stream)  # steady state: worker start-up is a one-off cost, not throughput
        start = time.perf_counter()
        for batch in stream:
            n += batch.photo.shape[0]
    return n / (time.perf_counter() - start), n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="shard path, glob or brace pattern")
    p.add_argument("--num-objects", type=int, default=6)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--size", type=int, default=64, help="synthetic scene size when --data is not given")
    p.add_argument("--scenes", type=int, default=200, help="synthetic scenes when --data is not given")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-depth", dest="depth", action="store_false",
                   help="skip depth.npy, as the trainer does for a model without the depth condition")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions; medians are printed")
    args = p.parse_args()

    import torch

    from cobl.data import expand_urls

    torch.set_num_threads(1)
    tmp = None
    if args.data is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.shardmaker import write_shard

        tmp = tempfile.TemporaryDirectory()
        for i in range(4):
            write_shard(
                Path(tmp.name) / f"train-{i:06d}.tar",
                args.scenes // 4,
                size=args.size,
                max_objects=min(args.num_objects, 4),
                max_layers=args.num_objects,
                seed=i,
            )
        args.data = str(Path(tmp.name) / "train-{000000..000003}.tar")
    urls = expand_urls(args.data)

    raw_rates, rates, rates_no_ids = [], [], []
    for _ in range(args.reps):
        raw_rate, raw, nbytes = _raw_rate(urls)
        raw_rates.append(raw_rate)
        rate, n = _loader_rate(urls, args, ids=True)
        rates.append(rate)
        rates_no_ids.append(_loader_rate(urls, args, ids=False)[0])
    raw_med, rate_med, rate_no_ids_med = (statistics.median(r) for r in (raw_rates, rates, rates_no_ids))
    ratio = statistics.median(r / q for r, q in zip(rates, raw_rates, strict=True))
    ratio_no_ids = statistics.median(r / q for r, q in zip(rates_no_ids, raw_rates, strict=True))
    print(f"data            : {args.data} ({len(urls)} shards)")
    print(f"raw tar reading : {raw_med:8.1f} samples/s ({raw} samples, {nbytes / 2**20:.1f} MiB)")
    print(
        f"CObL loader     : {rate_med:8.1f} samples/s ({n} decoded, {args.workers} workers, "
        f"K={args.num_objects}, {args.resolution}², with ids.png)"
    )
    print(f"CObL loader     : {rate_no_ids_med:8.1f} samples/s (same, ids=False as for training)")
    print(
        f"ratio loader/raw: {ratio:.2f}, ids=False {ratio_no_ids:.2f} "
        f"(target >= 0.5, median of {args.reps} interleaved runs)"
    )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
