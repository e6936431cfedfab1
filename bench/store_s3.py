"""bench/store_io.py ``--s3``: the store and an equally large plain object on a local moto S3 server, read
through s3fs (the plain object whole, the store's two read patterns by byte ranges and through Zarr)."""

from __future__ import annotations

import logging
import os

import numpy as np
from common import interleaved, synthetic_store
from store_reads import read_shards, read_training, shard_ranges

__all__ = ["s3_reads"]


def s3_reads(n_images: int, grid: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of each read on a local moto S3 server (127.0.0.1, stopped afterwards), interleaved."""
    import fsspec
    from moto.server import ThreadedMotoServer

    from storage.feature_store import FeatureStore

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = fsspec.config.conf.get("s3")
    try:
        host, port = server.get_host_and_port()
        fsspec.config.conf["s3"] = {
            "key": "bench",
            "secret": "bench",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
        }
        os.environ.setdefault(
            "AWS_DEFAULT_REGION", "us-east-1"
        )  # a region name would become a bucket constraint
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("bench-store-io")
        url = "s3://bench-store-io/store.zarr"
        synthetic_store(
            url, classes=("a", "b"), n_train=n_images // 4, n_test_per_class=n_images // 4, grid=grid
        )
        nbytes = sum(fs.du(f"bench-store-io/store.zarr/{name}") for name in ("tokens", "cls_attn"))
        fs.pipe_file("bench-store-io/plain.bin", bytes(nbytes))
        new, old = FeatureStore(url), FeatureStore(url, reads="zarr")
        shards = shard_ranges(new)
        rng = np.random.default_rng(0)
        variants = {
            "plain": lambda: fs.cat_file("bench-store-io/plain.bin"),
            "store_sequential": lambda: read_shards(new, shards),
            "store_training": lambda: read_training(new, rng),
            "zarr_sequential": lambda: read_shards(old, shards),
            "zarr_training": lambda: read_training(old, rng),
        }
        times = interleaved(variants, rounds=rounds, warmup=1)
        return {"times": times, "mb": nbytes / 1e6}
    finally:
        if saved is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved
        server.stop()
