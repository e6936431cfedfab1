"""Safety: no pickled code runs when weights or models load, names and listed paths cannot leave the dataset root,
and reports carry no secrets. (That the Prefect server and the Dask cluster listen on 127.0.0.1 only is checked
on their real sockets in tests/flows/test_runtime.py.)"""

from __future__ import annotations

import dataclasses
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from generalad.apps.model_io import MODEL_WEIGHTS, ModelFileError, load_model, save_model
from generalad.apps.train_job import resolve_preset
from generalad.backbone import load_backbone, weights_identity
from generalad.data import get_dataset
from generalad.data.mvtec import MVTecADDataset
from generalad.errors import DatasetError, WeightsError
from generalad.method.discriminator import Discriminator
from storage.feature_store import FeatureStore
from storage.fingerprint import fingerprint_for
from storage.report_rows import RunContext, failed_rows
from storage.reports import ReportStore
from tests.fixtures.industrial_datasets import make_mvtec
from tests.fixtures.semantic_datasets import make_aircraft, make_cars
from tests.fixtures.stores import TINY_CLASS, TINY_SPEC, extract, published


class _OpensAFile:
    """Unpickling this creates the file `path`: proof that pickled code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _payload_ran_under_plain_torch_load(path: Path, sentinel: Path) -> bool:
    """The control: an unrestricted `torch.load` of `path` does run the payload, so a missing sentinel before
    it proves that nothing was unpickled (not that the payload was inert). Loaded from a `.pth` copy: torch
    hands a `.safetensors` name to the safetensors reader."""
    control = sentinel.with_name("control.pth")
    shutil.copyfile(path, control)
    for opened in torch.load(control, weights_only=False).values():
        opened.close()
    return sentinel.exists()


def test_a_malicious_pth_backbone_file_runs_no_code_and_publishes_nothing(tiny_adapter, tmp_path) -> None:
    sentinel = tmp_path / "pwned"
    weights = tmp_path / "evil.pth"
    torch.save({"pos_embed": _OpensAFile(sentinel)}, weights)
    spec = dataclasses.replace(TINY_SPEC, weights=str(weights))
    assert weights_identity(spec).startswith("file:sha256:")  # identity hashes bytes, never loads them
    with pytest.raises(WeightsError, match="evil.pth"):
        load_backbone(spec)
    with pytest.raises(WeightsError, match="evil.pth"):
        extract(tiny_adapter, tmp_path / "stores", spec=spec)
    assert not sentinel.exists() and not published(tmp_path / "stores")
    assert _payload_ran_under_plain_torch_load(weights, sentinel)


def test_load_model_never_unpickles(tmp_path, monkeypatch) -> None:
    model = Discriminator(4, 8, num_heads=2, mlp_dim=16).eval()
    folder = save_model(model, tmp_path / "model", {"seed": 3})

    def forbidden(*args, **kwargs):
        raise AssertionError("load_model unpickled something")

    with monkeypatch.context() as patch:
        for name in ("load", "loads", "Unpickler"):
            patch.setattr(pickle, name, forbidden)
        patch.setattr(torch, "load", forbidden)
        loaded, config = load_model(folder)
    assert config["seed"] == 3
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("content", ["pickle", "garbage"])
def test_model_weights_that_are_not_safetensors_run_no_code_and_name_the_file(tmp_path, content) -> None:
    folder = save_model(Discriminator(4, 8, num_heads=2, mlp_dim=16), tmp_path / "model")
    sentinel = tmp_path / "pwned"
    if content == "pickle":
        torch.save({"w": _OpensAFile(sentinel)}, folder / MODEL_WEIGHTS)
    else:
        (folder / MODEL_WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match=MODEL_WEIGHTS):
        load_model(folder)
    assert not sentinel.exists()
    if content == "pickle":
        assert _payload_ran_under_plain_torch_load(folder / MODEL_WEIGHTS, sentinel)


@pytest.mark.parametrize("category", ["..", "../bottle", "/etc", "a/b"])
def test_a_category_cannot_escape_the_root_even_without_get_dataset(tmp_path, category: str) -> None:
    make_mvtec(tmp_path / "mvtec")
    with pytest.raises(DatasetError, match="category"):
        MVTecADDataset(tmp_path / "mvtec", category)
    manifest = get_dataset("mvtec_ad", tmp_path / "mvtec", "bottle").manifest()
    with pytest.raises(DatasetError, match="category"):  # nor can it name a folder outside the store root
        fingerprint_for(
            dataset="mvtec_ad", category=category, spec=TINY_SPEC, dtype="float16", manifest=manifest
        )


def test_an_aircraft_listing_cannot_point_outside_the_root(tmp_path) -> None:
    fx = make_aircraft(tmp_path / "root" / "aircraft")
    data = fx.root / "fgvc-aircraft-2013b" / "data"
    outside = tmp_path / "secret.jpg"
    outside.write_bytes((data / "images" / "1000000.jpg").read_bytes())  # a real image, outside the root
    listing = data / "images_variant_train.txt"
    variant = listing.read_text().splitlines()[0].split(" ", 1)[1]
    escape = "../../../../secret"
    listing.write_text(listing.read_text() + f"{escape} {variant}\n")
    with pytest.raises(DatasetError, match="secret.*outside the dataset root"):
        get_dataset("aircraft", fx.root).manifest()


def test_a_cars_annotation_cannot_point_outside_the_root(tmp_path) -> None:
    from tests.fixtures.semantic_datasets import annotations_struct

    fx = make_cars(tmp_path / "root" / "cars")
    (tmp_path / "root" / "outside.jpg").write_bytes((fx.root / "cars_train" / "00001.jpg").read_bytes())
    annos = fx.root / "devkit" / "cars_train_annos.mat"
    scipy.io.savemat(annos, {"annotations": annotations_struct([("../../outside.jpg", 1)], 16)})
    with pytest.raises(DatasetError, match="outside.jpg.*outside the dataset root"):
        get_dataset("cars", fx.root).manifest()


SECRETS = {
    "HF_TOKEN": "hf_fakeTokenValue123456",
    "AWS_SECRET_ACCESS_KEY": "wJalrFakeSecretKey987654",
    "AZURE_STORAGE_CONNECTION_STRING": "AccountName=x;AccountKey=fakeAzureKey42",
    "GENERALAD_DB_PASSWORD": "hunter2-but-longer",
}


def test_a_failed_task_row_carries_no_secret(tiny_adapter, tmp_path, monkeypatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(
        "GENERALAD_HOME_MARKER", "marker-value-abc"
    )  # in no error: the environment is not copied
    opened = FeatureStore(extract(tiny_adapter, tmp_path / "stores").url)
    error = (
        "OSError: cannot reach s3://AKIAFAKEUSER:signedpart@bucket/x and "
        "https://h.example/obj?X-Amz-Credential=AKIAFAKE2&X-Amz-Signature=deadbeefcafe with "
        + " ".join(SECRETS.values())
    )
    rows = failed_rows(
        RunContext.of_store(opened, run_id="r-secret"),
        resolve_preset(opened, None, {"epochs": 1}),
        class_name=TINY_CLASS,
        seed=0,
        shots=None,
        error=error,
        num_patches=opened.num_patches,
    )
    reports = ReportStore(str(tmp_path / "reports"))
    reports.write_run("r-secret", rows)
    files = [p for p in (tmp_path / "reports").rglob("*") if p.is_file()]
    assert files
    blob = b"".join(p.read_bytes() for p in files) + "".join(str(p) for p in files).encode()
    for secret in [
        *SECRETS.values(),
        "AKIAFAKEUSER",
        "signedpart",
        "AKIAFAKE2",
        "deadbeefcafe",
        "marker-value-abc",
    ]:
        assert secret.encode() not in blob, secret
    frame = reports.read_metrics(run_id="r-secret")
    assert (frame["status"] == "failed").all() and frame["error"].str.contains("cannot reach").all()
    assert frame["error"].str.contains(r"\*\*\*").all()  # the secrets were masked, not the message dropped
    assert not np.isfinite(frame["value"].astype(float)).any()
