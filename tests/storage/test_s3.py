"""The feature store and the report store on an S3 API: moto's server on 127.0.0.1, addressed as `s3://...` with
the endpoint from the environment only (AWS_ENDPOINT_URL), as a real deployment would give it.

S3 has no atomic rename, so these tests kill writers where a rename-based design would leave something
half-visible: an extraction between a shard's bytes and its marker, a report between its score and metric files.
Each time nothing incomplete is readable and a rerun completes the work, equal to the same work done on a local
disk.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from generalad.data import get_dataset
from generalad.errors import StoreError
from storage import urls
from storage.feature_store import FeatureStore
from storage.metric_row import MetricRow
from storage.reports import ReportStore
from storage.score_rows import scores_from_arrays
from tests.fixtures.rows import row_config
from tests.fixtures.services import forget_s3_clients, moto_s3, project_env, s3_env
from tests.fixtures.stores import SHARD, TINY_CLASS, extract, tiny_mvtec_adapter

pytestmark = pytest.mark.slow

BUCKET = "generalad-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The S3 server's endpoint, this process and its children pointed at it, and an empty bucket."""
    logs = tmp_path_factory.mktemp("s3-logs")
    with moto_s3(logs) as endpoint, pytest.MonkeyPatch.context() as patch:
        for key, value in s3_env(endpoint).items():
            patch.setenv(key, value)
        forget_s3_clients()  # no client bound to another test's endpoint
        try:
            fs, _ = urls.filesystem(f"s3://{BUCKET}")
            fs.mkdir(BUCKET)
            yield endpoint
        finally:
            forget_s3_clients()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The root of the tiny MVTec-AD category (tests/fixtures/stores.py): 8 images, 4 shards of `SHARD`."""
    return tiny_mvtec_adapter(tmp_path_factory.mktemp("mvtec")).root


def _objects(prefix: str) -> list[str]:
    fs, path = urls.filesystem(prefix)
    fs.invalidate_cache()
    return sorted(fs.find(path))


_EXTRACT = """
import json, os, signal, sys
from generalad.data import get_dataset
from storage import feature_store
from tests.fixtures.stores import TINY_CLASS, extract

root, store_root, kill_marker = sys.argv[1], sys.argv[2], sys.argv[3]
put = feature_store.urls.write_bytes_atomic

def put_or_die(url, data):
    if kill_marker and url.endswith(f"/_shards/{kill_marker}.json"):
        os.kill(os.getpid(), signal.SIGKILL)  # the shard's arrays are written, its marker never will be
    put(url, data)

feature_store.urls.write_bytes_atomic = put_or_die
adapter = get_dataset("mvtec_ad", root, category=TINY_CLASS)
result = extract(adapter, store_root)  # the tiny backbone, shards of SHARD images
print(json.dumps({"url": result.url, "written": result.shards_written, "skipped": result.shards_skipped}))
"""


def _extract_in_child(root: Path, store_root: str, kill_marker: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _EXTRACT, str(root), store_root, kill_marker],
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_extraction_killed_mid_shard_on_s3_then_resumed(s3, data_root, tmp_path):
    store_root = f"s3://{BUCKET}/stores"
    killed = _extract_in_child(data_root, store_root, kill_marker="00002")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    [url] = {o.rsplit(".zarr/", 1)[0] + ".zarr" for o in _objects(store_root) if ".zarr/" in o}
    url = f"s3://{url}"
    objects = _objects(url)
    names = [o[len(url) - len("s3://") + 1 :] for o in objects]
    # shard 2's bytes are on the server (one object per array shard) but not its marker: shards 0 and 1 count
    assert "tokens/c/2/0/0" in names and "cls_attn/c/2/0/0" in names
    assert sorted(n for n in names if n.startswith("_shards/")) == [
        "_shards/00000.json",
        "_shards/00001.json",
    ]
    assert "COMPLETE.json" not in names
    assert not [n for n in names if ".tmp" in n or n.endswith(".partial")]  # no temporaries on S3
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore(url)
    fs, path = urls.filesystem(url)
    # now this process holds a cached listing with two markers (s3fs caches listings)
    fs.ls(f"{path}/_shards")

    again = _extract_in_child(data_root, store_root)
    assert again.returncode == 0, again.stderr[-2000:]
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result == {"url": url, "written": 2, "skipped": 2}  # shards 2 and 3 rewritten, 0 and 1 kept
    # what another process wrote since is seen here: listings and existence checks ask the server
    assert urls.list_names(f"{url}/_shards") == [f"{i:05d}.json" for i in range(4)]

    # the resumed S3 store equals one extracted in a single go on a local disk, bit for bit
    remote = FeatureStore(url)
    local = FeatureStore(extract(get_dataset("mvtec_ad", data_root, category=TINY_CLASS), tmp_path).url)
    rows = np.arange(local.num_images)
    assert remote.key == local.key and remote.num_images == 4 * SHARD
    for ours, theirs in zip(remote.read(rows), local.read(rows), strict=True):
        assert np.array_equal(ours.numpy(), theirs.numpy())
    assert remote.manifest.equals(local.manifest)
    assert remote.split(TINY_CLASS).train_rows.tolist() == local.split(TINY_CLASS).train_rows.tolist()


# ------------------------------------------------------------------------------------------------ reports


def _metric_rows(run_id: str, dataset: str) -> list[MetricRow]:
    return [
        MetricRow(
            **row_config(),
            run_id=run_id,
            dataset=dataset,
            backbone="vit_small_patch14_dinov2",
            weights="random:0",
            views="clean",
            epochs=1,
            top_k=4,
            class_name=f"c{i}",
            metric="image_auroc",
            value=0.5 + i / 10,
            selection="last",
            epoch=0,
            n_test=10,
            n_anomalous=5,
        )
        for i in range(3)
    ]


def _scores(run_id: str):
    return scores_from_arrays(
        run_id=run_id,
        dataset="quickstart",
        backbone="vit_small_patch14_dinov2",
        class_name="c0",
        image_ids=[f"img{i}" for i in range(10)],
        scores=np.linspace(0, 1, 10),
        labels=[0] * 5 + [1] * 5,
    )


_REPORT = """
import os, signal, sys
from storage.reports import ReportStore
sys.path.insert(0, os.path.dirname(sys.argv[2]))
from test_s3 import _metric_rows, _scores

store = ReportStore(sys.argv[1])
puts = []
pipe = store.fs.pipe_file

def pipe_or_die(path, data, **kw):
    if len(puts) == 1:  # the score file is placed; the metric files never will be
        os.kill(os.getpid(), signal.SIGKILL)
    puts.append(path)
    return pipe(path, data, **kw)

store.fs.pipe_file = pipe_or_die
store.write_run("r1", _metric_rows("r1", "quickstart") + _metric_rows("r1", "mvtec_ad"), _scores("r1"))
"""


def test_report_writer_killed_mid_run_on_s3_then_rerun(s3):
    url = f"s3://{BUCKET}/reports"
    store = ReportStore(url)
    store.write_run("r0", _metric_rows("r0", "quickstart"), _scores("r0"))
    child = subprocess.run(
        [sys.executable, "-c", _REPORT, url, __file__],
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    files = _objects(url)
    assert not [f for f in files if ".tmp" in f]  # one PUT per file: no temporaries, nothing to clean up
    # the killed run shows no metric rows (its scores file, placed first, is whole and unread by any table)
    assert store.read_metrics(run_id="r1").empty
    assert len(store.read_scores(run_id="r1")) == 10
    assert len(store.read_metrics(run_id="r0")) == 3

    store.write_run("r1", _metric_rows("r1", "quickstart") + _metric_rows("r1", "mvtec_ad"), _scores("r1"))
    frame = store.read_metrics()
    assert frame.groupby("run_id").size().to_dict() == {"r0": 3, "r1": 6}
    assert store.read_scores().groupby("run_id").size().to_dict() == {"r0": 10, "r1": 10}

    # DuckDB reads the same rows straight from the S3 API, through the same fsspec filesystem
    con = duckdb.connect()
    con.register_filesystem(store.fs)
    counts = con.sql(
        f"select run_id, dataset, count(*) as n, sum(value) as total from read_parquet("
        f"'{url}/metrics/**/*.parquet', hive_partitioning=true) group by all order by all"
    ).df()
    assert counts[["run_id", "dataset", "n"]].values.tolist() == [
        ["r0", "quickstart", 3],
        ["r1", "mvtec_ad", 3],
        ["r1", "quickstart", 3],
    ]
    assert counts["total"].tolist() == pytest.approx([1.8, 1.8, 1.8])
