"""Loader throughput (decoded tensors, batched) vs raw tar reading, in samples/s. Target ratio >= 0.5.

    python bench/bench_loader.py [--data 'DIR/shards/train-*.tar'] [--k 6] [--resolution 64] [--workers 2]

Without --data it writes synthetic shards (tests/shardmaker.py) at --size into a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--size", type=int, default=64, help="synthetic scene size when --data is not given")
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()

    import torch
    import webdataset as wds

    from cobl.data import batches, expand_urls, make_dataset, make_loader

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
                max_objects=min(args.k, 4),
                max_layers=args.k,
                seed=i,
            )
        args.data = str(Path(tmp.name) / "train-{000000..000003}.tar")
    urls = expand_urls(args.data)

    start = time.perf_counter()
    raw = 0
    nbytes = 0
    for sample in wds.WebDataset(urls, shardshuffle=False):
        raw += 1
        nbytes += sum(len(v) for k, v in sample.items() if isinstance(v, bytes))
    raw_rate = raw / (time.perf_counter() - start)

    ds = make_dataset(urls, args.k, args.resolution, shuffle=True, seed=0, epochs=1)
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stream = batches(iter(make_loader(ds, num_workers=args.workers)), args.batch_size)
        next(stream)  # steady state: worker start-up is a one-off cost, not throughput
        start = time.perf_counter()
        for batch in stream:
            n += batch["photo"].shape[0]
    rate = n / (time.perf_counter() - start)
    print(f"raw tar reading : {raw_rate:8.1f} samples/s ({raw} samples, {nbytes / 2**20:.1f} MiB)")
    print(
        f"CObL loader     : {rate:8.1f} samples/s ({n} decoded, {args.workers} workers, "
        f"K={args.k}, {args.resolution}²)"
    )
    print(f"ratio loader/raw: {rate / raw_rate:.2f} (target >= 0.5)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
