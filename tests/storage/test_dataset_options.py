"""Dataset options (VisA's `split="listing_80_20"`) reach the adapter from `generalad extract`, enter the store
key, and appear in the store's protocol and in every report row's `split_protocol`."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest

from generalad.data import get_dataset
from storage.extraction import plan_store
from storage.feature_store import FeatureStore
from storage.fingerprint import protocol_label
from tests.fixtures.industrial_datasets import make_visa
from tests.fixtures.stores import TINY_SPEC

# the CLI test leaves out --image-size to check the patch-16 default (224): it needs a patch-16 ViT, the tiny one
PATCH16 = "tiny_vit_base_patch16_in21k_test"


@pytest.fixture(scope="module")
def visa(tmp_path_factory):
    return make_visa(tmp_path_factory.mktemp("visa"), n_normal=10, n_anomaly=3, side=24)


def test_options_enter_the_key_and_the_default_split_keeps_its_key(visa, tmp_path):
    official = get_dataset("visa", visa.root, visa.category)
    listing = get_dataset("visa", visa.root, visa.category, split="listing_80_20")
    url_official, fp_official = plan_store(official, TINY_SPEC, str(tmp_path))
    url_listing, fp_listing = plan_store(listing, TINY_SPEC, str(tmp_path))
    assert fp_official.key != fp_listing.key and url_official != url_listing
    assert "dataset_options" not in fp_official.as_dict()  # no options: the key of stores made before options
    assert fp_listing.as_dict()["dataset_options"] == {"split": "listing_80_20"}
    assert protocol_label(listing.protocol, listing.options) == "visa_listing_80_20[split=listing_80_20]"
    assert protocol_label(official.protocol, official.options) == "visa_1cls_csv"


def test_extract_cli_option_reaches_the_store_and_the_rows(visa, tmp_path):
    from generalad.apps.train_job import train_from_store
    from generalad.cli import main
    from generalad.method.presets import preset_for
    from storage.report_rows import RunContext, metric_rows_of

    out = io.StringIO()
    argv = ["extract", "--dataset", "visa", "--root", str(visa.root), "--category", visa.category, "--store",
            str(tmp_path / "s"), "--backbone", PATCH16, "--weights", "random", "--no-progress",
            "--dataset-option", "split=listing_80_20"]  # fmt: skip
    with redirect_stdout(out):
        assert main(argv) == 0  # no --image-size: the patch-16 default, 224
    store = FeatureStore.open(out.getvalue().strip().splitlines()[-1])
    assert store.attrs["protocol"] == "visa_listing_80_20[split=listing_80_20]"
    assert store.image_size == 224 and store.num_patches == 14 * 14
    # the listing split: train = the first 80 % of the sorted normal listing (int(0.8 * 10) = 8 images)
    split = store.split(visa.category)
    assert len(split.train_rows) == 8
    run = train_from_store(
        store, visa.category, preset=preset_for("visa").with_overrides(epochs=1), progress=False
    )
    rows = metric_rows_of(run, RunContext.of_store(store, run_id="r"), num_patches=store.num_patches)
    assert {r.split_protocol for r in rows} == {"visa_listing_80_20[split=listing_80_20]"}


def test_malformed_option_is_refused(visa, tmp_path):
    from generalad.cli import main

    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["extract", "--dataset", "visa", "--root", str(visa.root), "--category", visa.category,
              "--store", str(tmp_path), "--dataset-option", "listing"])  # fmt: skip
