"""PatchCore-kNN cost on 2 CPU cores: exact torch nearest distances (generalad.method.patchcore) against faiss
IndexFlatL2 when faiss is importable, and the greedy coreset's time; ratios from interleaved repeats.

    PYTHONPATH=. python bench/knn.py [--images 100] [--patches 1369] [--dim 384] [--queries 16]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from generalad.method.patchcore import greedy_coreset, nearest_distances


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--images", type=int, default=100, help="training images (bank = 10 % of their patches)"
    )
    parser.add_argument("--patches", type=int, default=1369)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=16, help="test images scored per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(args.images * args.patches // 10, args.dim)).astype(np.float32)
    queries = rng.normal(size=(args.queries * args.patches, args.dim)).astype(np.float32)
    bank_t, queries_t = torch.from_numpy(bank), torch.from_numpy(queries)
    try:
        import faiss

        faiss.omp_set_num_threads(2)
        index = faiss.IndexFlatL2(args.dim)
        index.add(bank)
    except ImportError:
        index = None
    torch_s, faiss_s = [], []
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        torch_s.append(_timed(lambda: nearest_distances(queries_t, bank_t)))
        if index is not None:
            faiss_s.append(_timed(lambda: index.search(queries, 1)))
    if index is not None:
        ours = nearest_distances(queries_t, bank_t).numpy()
        theirs = np.sqrt(np.maximum(index.search(queries, 1)[0][:, 0], 0))
        print(f"max |torch - faiss| distance: {np.abs(ours - theirs).max():.2e}")
    print(f"load average {os.getloadavg()[0]:.1f}; bank {bank.shape}, queries {queries.shape}")
    print(f"torch exact: median {np.median(torch_s):.2f} s")
    if faiss_s:
        print(
            f"faiss flat:  median {np.median(faiss_s):.2f} s; torch / faiss = {np.median(torch_s) / np.median(faiss_s):.2f}"
        )
    features = torch.from_numpy(rng.normal(size=(20 * args.patches, args.dim)).astype(np.float32))
    seconds = _timed(lambda: greedy_coreset(features, len(features) // 10, seed=0))
    print(f"greedy coreset of {len(features)} patches to 10 %: {seconds:.2f} s")


if __name__ == "__main__":
    main()
