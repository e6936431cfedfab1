"""Layout variants of each adapter and the bad inputs that must raise errors naming the file."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generalad.data import FolderDataset, get_dataset
from generalad.data.cifar import CIFAR100_FINE_TO_COARSE, CIFAR100_SUPERCLASSES
from generalad.data.pickles import load_restricted_pickle
from generalad.errors import DatasetError, ImageError
from tests.fixtures.industrial_datasets import (
    make_folder,
    make_folder_dirs,
    make_mvtec,
    make_mvtec_loco,
    make_visa,
)
from tests.fixtures.semantic_datasets import (
    make_aircraft,
    make_cars,
    make_cifar10_batches,
    make_cifar10_folders,
    make_cifar100_batches,
    make_cifar100_folders,
    make_fmnist,
    make_view,
)


def _ids(ds) -> list[str]:
    return ds.manifest()["image_id"].tolist()


# --------------------------------------------------------------------------------------------- CIFAR
def test_cifar_root_may_be_the_batch_folder_itself(tmp_path: Path) -> None:
    fx = make_cifar10_batches(tmp_path, nested=False)
    ds = get_dataset("cifar10", tmp_path)
    assert sorted(_ids(ds)) == fx.ids() and _ids(ds)[0].startswith("test_batch#")
    nested = make_cifar10_batches(tmp_path / "outer")
    ds_outer = get_dataset("cifar10", tmp_path / "outer")
    assert _ids(ds_outer)[0] == "cifar-10-batches-py/test_batch#00000"
    assert ds_outer.source == "batches" and len(nested.images) == 60
    inner = get_dataset("cifar10", tmp_path / "outer" / "cifar-10-batches-py")
    assert len(_ids(inner)) == 60


def test_cifar_batch_decoding_is_cached_per_file(tmp_path: Path, monkeypatch) -> None:
    make_cifar10_batches(tmp_path)
    ds = get_dataset("cifar10", tmp_path)
    records = ds.records()
    calls = []
    import generalad.data.cifar as cifar

    real = cifar.load_restricted_pickle
    monkeypatch.setattr(cifar, "load_restricted_pickle", lambda p: calls.append(p) or real(p))
    for record in records:
        ds.load_image(record)
    assert calls == []  # records() already decoded each batch once
    fresh = get_dataset("cifar10", tmp_path)
    for record in records:
        fresh.load_image(record)
    assert len(calls) == 6  # five data batches and the test batch, once each


def test_cifar_missing_batch_files_are_named(tmp_path: Path) -> None:
    make_cifar10_batches(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DatasetError, match="lacks: data_batch_3, batches.meta"):
        get_dataset("cifar10", tmp_path).records()


def test_cifar_root_without_data_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar-10-batches-py.*data_batch_1.*train/<class>"):
        get_dataset("cifar10", tmp_path).records()


def test_restricted_unpickler_refuses_arbitrary_globals(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(
        DatasetError, match=r"refusing to load .*data_batch_1.*(posix|os)\.system is not allowed"
    ):
        load_restricted_pickle(path)
    assert not (tmp_path / "pwned").exists()
    pickle.loads(path.read_bytes())  # the control: a plain unpickling does run the payload
    assert (tmp_path / "pwned").exists()
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_restricted_pickle(path)


def test_restricted_unpickler_reads_numpy2_protocol5(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tmp_path / "p5").write_bytes(pickle.dumps({b"data": arr, "labels": [1, 2, 3]}, protocol=5))
    loaded = load_restricted_pickle(tmp_path / "p5")
    np.testing.assert_array_equal(loaded["data"], arr)
    assert loaded["labels"] == [1, 2, 3]


def test_cifar_folders(tmp_path: Path) -> None:
    fx = make_cifar10_folders(tmp_path)
    ds = get_dataset("cifar10", tmp_path)
    assert ds.source == "folders" and sorted(_ids(ds)) == fx.ids()
    (tmp_path / "train" / "llama").mkdir()
    with pytest.raises(DatasetError, match="llama is not a cifar10 class"):
        ds.records()


def test_cifar100_superclass_table() -> None:
    assert len(CIFAR100_FINE_TO_COARSE) == 100 and len(CIFAR100_SUPERCLASSES) == 20
    assert CIFAR100_FINE_TO_COARSE["beaver"] == "aquatic_mammals"
    assert CIFAR100_FINE_TO_COARSE["maple_tree"] == "trees"
    assert CIFAR100_FINE_TO_COARSE["tractor"] == "vehicles_2"
    assert CIFAR100_FINE_TO_COARSE["pickup_truck"] == "vehicles_1"
    assert CIFAR100_SUPERCLASSES[9] == "large_man-made_outdoor_things"


@pytest.mark.parametrize("folder_names", ["fine", "coarse"])
def test_cifar100_folders_fine_or_superclass_names(tmp_path: Path, folder_names: str) -> None:
    fx = make_cifar100_folders(tmp_path, folder_names=folder_names)
    manifest = get_dataset("cifar100", tmp_path).manifest()
    assert sorted(manifest["image_id"]) == fx.ids()
    assert set(manifest["class_name"]) == set(CIFAR100_SUPERCLASSES)
    if folder_names == "fine":
        dolphins = manifest[manifest["rel_path"].str.contains("/dolphin/")]
        assert len(dolphins) and set(dolphins["class_name"]) == {"aquatic_mammals"}


def test_cifar100_folders_missing_superclass_is_named(tmp_path: Path) -> None:
    make_cifar100_folders(tmp_path, folder_names="coarse")
    shutil.rmtree(tmp_path / "test" / "people")
    with pytest.raises(DatasetError, match="test folder .* has no class folder for: people"):
        get_dataset("cifar100", tmp_path).records()


def test_cifar100_batches_not_nested(tmp_path: Path) -> None:
    fx = make_cifar100_batches(tmp_path, nested=False)
    assert sorted(_ids(get_dataset("cifar100", tmp_path))) == fx.ids()


# --------------------------------------------------------------------------------------------- Fashion-MNIST
def test_fmnist_gz_and_plain_give_the_same_ids(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "gz", gz=True)
    make_fmnist(tmp_path / "plain", gz=False)
    gz = get_dataset("fmnist", tmp_path / "gz").manifest()
    plain = get_dataset("fmnist", tmp_path / "plain").manifest()
    assert gz["image_id"].tolist() == plain["image_id"].tolist()
    assert gz["rel_path"].iloc[0].endswith(".gz") and not plain["rel_path"].iloc[0].endswith(".gz")


def test_fmnist_bad_files_are_named(tmp_path: Path) -> None:
    make_fmnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(
        DatasetError, match=r"t10k-labels-idx1-ubyte \(or t10k-labels-idx1-ubyte.gz\) is missing"
    ):
        get_dataset("fmnist", tmp_path).records()
    make_fmnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte: header declares"):
        get_dataset("fmnist", tmp_path).records()
    path.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte is not an IDX file"):
        get_dataset("fmnist", tmp_path).records()
    (tmp_path / "bad").mkdir()
    make_fmnist(tmp_path / "bad", gz=True)
    (tmp_path / "bad" / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    )
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz"):
        get_dataset("fmnist", tmp_path / "bad").records()


# --------------------------------------------------------------------------------------------- View
def test_view_kaggle_layout(tmp_path: Path) -> None:
    fx = make_view(tmp_path, kaggle=True)
    (tmp_path / "seg_pred" / "seg_pred").mkdir(parents=True)  # unlabelled, unused
    ds = get_dataset("view", tmp_path)
    assert sorted(_ids(ds)) == fx.ids()
    assert _ids(ds)[0].startswith("seg_test/seg_test/buildings/")


def test_class_folder_hygiene(tmp_path: Path) -> None:
    make_view(tmp_path)
    forest = tmp_path / "train" / "forest"
    (forest / ".DS_Store").write_bytes(b"\x00junk")
    (forest / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "train" / ".hidden_folder").mkdir()
    before = len(get_dataset("view", tmp_path).records())
    assert before == 12
    (forest / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"non-image file .*forest/notes\.txt"):
        get_dataset("view", tmp_path).records()
    (forest / "notes.txt").unlink()
    for f in (tmp_path / "test" / "sea").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"image folder .*test/sea is empty"):
        get_dataset("view", tmp_path).records()


def test_records_do_not_decode_images(tmp_path: Path) -> None:
    make_view(tmp_path)
    broken = tmp_path / "train" / "forest" / "0000.jpg"
    broken.write_bytes(b"")  # undecodable, but listing must not notice: the extractor reports it
    ds = get_dataset("view", tmp_path)
    record = next(r for r in ds.records() if r.rel_path == "train/forest/0000.jpg")
    with pytest.raises(ImageError, match=r"0000\.jpg is empty"):
        ds.load_image(record)


# --------------------------------------------------------------------------------------------- FGVC-Aircraft
def test_aircraft_listed_variants_only_and_root_forms(tmp_path: Path) -> None:
    fx = make_aircraft(tmp_path / "outer")
    ds = get_dataset("aircraft", tmp_path / "outer")
    manifest = ds.manifest()
    assert sorted(manifest["image_id"]) == fx.ids()
    assert ds.normal_classes()[0] == "Variant 91 Mk" and len(ds.normal_classes()) == 10
    assert "F-16A/B" not in set(manifest["class_name"])  # an unlisted variant with images
    inner = get_dataset("aircraft", tmp_path / "outer" / "fgvc-aircraft-2013b")
    assert len(inner.manifest()) == len(manifest)
    assert ds.protocol == "aircraft_listed_variants"


def test_aircraft_missing_pieces_are_named(tmp_path: Path) -> None:
    make_aircraft(tmp_path, nested=False)
    listed = (tmp_path / "data" / "images_variant_test.txt").read_text().splitlines()[0].split()[0]
    (tmp_path / "data" / "images" / f"{listed}.jpg").unlink()
    with pytest.raises(DatasetError, match=rf"{listed}\.jpg listed in images_variant_test.txt.*is missing"):
        get_dataset("aircraft", tmp_path).records()
    (tmp_path / "data" / "images_variant_train.txt").unlink()
    with pytest.raises(DatasetError, match="images_variant_train.txt is missing"):
        get_dataset("aircraft", tmp_path).records()
    with pytest.raises(DatasetError, match="folder data/ is missing"):
        get_dataset("aircraft", tmp_path / "data" / "images").records()


# --------------------------------------------------------------------------------------------- Stanford-Cars
def test_cars_test_labels_in_root_and_class_titles(tmp_path: Path) -> None:
    fx = make_cars(tmp_path, test_labels_in="root")
    ds = get_dataset("cars", tmp_path)
    manifest = ds.manifest()
    assert sorted(manifest["image_id"]) == fx.ids()
    assert set(manifest.loc[manifest["split"] == "train", "class_name"]) == {str(i) for i in range(1, 21)}
    assert {"21", "196"} <= set(manifest.loc[manifest["split"] == "test", "class_name"])
    assert ds.normal_classes() == [str(i) for i in range(1, 21)]
    assert ds.class_title("1") == "Maker 1 Model 2001"


def test_cars_missing_annotations_are_named(tmp_path: Path) -> None:
    make_cars(tmp_path)
    (tmp_path / "devkit" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(
        DatasetError,
        match="test labels.*devkit/cars_test_annos_withlabels.mat.*cars_test_annos_withlabels.mat",
    ):
        get_dataset("cars", tmp_path).records()
    (tmp_path / "devkit" / "cars_meta.mat").write_text("not matlab")
    with pytest.raises(DatasetError, match="cars_meta.mat"):
        get_dataset("cars", tmp_path).records()


# --------------------------------------------------------------------------------------------- MVTec family
def test_mvtec_missing_mask_names_image_and_expected_path(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    (tmp_path / "bottle" / "ground_truth" / "contamination" / "000_mask.png").unlink()
    with pytest.raises(DatasetError) as info:
        get_dataset("mvtec_ad", tmp_path, "bottle").records()
    message = str(info.value)
    assert "test/contamination/000.png" in message and "ground_truth/contamination/000_mask.png" in message


def test_mvtec_missing_train_folder_is_named(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    shutil.rmtree(tmp_path / "bottle" / "train")
    with pytest.raises(DatasetError, match=r"bottle/train/good is missing"):
        get_dataset("mvtec_ad", tmp_path, "bottle").records()


def test_loco_unites_every_mask_file(tmp_path: Path) -> None:
    fx = make_mvtec_loco(tmp_path, masks_per_image=3)
    ds = get_dataset("mvtec_loco", tmp_path, "juice_bottle")
    anomalous = [r for r in ds.records() if r.label == 1]
    assert anomalous and all(len(r.mask_paths) == 3 for r in anomalous)
    record = anomalous[0]
    first_only = np.asarray(Image.open(tmp_path / record.mask_paths[0])) > 0
    united = np.asarray(ds.load_mask(record, ds.load_image(record).size)) > 0
    np.testing.assert_array_equal(united, fx.by_id()[record.image_id].mask)
    assert united.sum() >= first_only.sum()
    assert not any("validation" in r.rel_path for r in ds.records())


def test_loco_missing_mask_folder_is_named(tmp_path: Path) -> None:
    make_mvtec_loco(tmp_path)
    shutil.rmtree(tmp_path / "juice_bottle" / "ground_truth" / "logical_anomalies" / "001")
    with pytest.raises(
        DatasetError, match=r"logical_anomalies/001\.png has no mask.*mask folder .*logical_anomalies/001"
    ):
        get_dataset("mvtec_loco", tmp_path, "juice_bottle").records()


# --------------------------------------------------------------------------------------------- VisA
def test_visa_protocols(tmp_path: Path) -> None:
    fx = make_visa(tmp_path, n_normal=6)
    official = get_dataset("visa", tmp_path, "candle")
    assert official.protocol == "visa_1cls_csv"
    manifest = official.manifest()
    by_id = fx.by_id()
    assert all(by_id[row.image_id].split == row.split for row in manifest.itertuples())
    listing = get_dataset("visa", tmp_path, "candle", split="listing_80_20")
    assert listing.protocol == "visa_listing_80_20"
    frame = listing.manifest()
    train = frame.loc[frame["split"] == "train", "image_id"].tolist()
    normals = sorted(i for i in fx.ids() if by_id[i].label == 0)
    assert train == normals[:4]  # int(0.8 * 6) = 4, sorted listing order
    test = frame.loc[frame["split"] == "test", "image_id"].tolist()
    assert sorted(test) == sorted(normals[4:] + [i for i in fx.ids() if by_id[i].label == 1])


def test_visa_missing_csv_points_to_the_labelled_option(tmp_path: Path) -> None:
    make_visa(tmp_path, with_csv=False)
    with pytest.raises(DatasetError, match=r"split_csv/1cls\.csv is missing.*listing_80_20"):
        get_dataset("visa", tmp_path, "candle").records()
    assert len(get_dataset("visa", tmp_path, "candle", split="listing_80_20").records()) == 8


def test_visa_missing_mask_and_image_are_named(tmp_path: Path) -> None:
    make_visa(tmp_path)
    (tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(
        DatasetError, match=r"Anomaly/001\.JPG has no mask: expected .*Masks/Anomaly/001\.png"
    ):
        get_dataset("visa", tmp_path, "candle").records()
    (tmp_path / "candle" / "Data" / "Images" / "Normal" / "0002.JPG").unlink()
    with pytest.raises(DatasetError, match=r"Normal/0002\.JPG listed in .*1cls\.csv line \d+ is missing"):
        get_dataset("visa", tmp_path, "candle").records()


# --------------------------------------------------------------------------------------------- folder
def test_folder_from_dirs(tmp_path: Path) -> None:
    fx = make_folder_dirs(tmp_path)
    ds = FolderDataset.from_dirs(**fx.options)
    assert ds.root == tmp_path.resolve() and ds.has_masks
    manifest = ds.manifest()
    assert sorted(manifest["image_id"]) == fx.ids()
    by_id = fx.by_id()
    for record in ds.records():
        np.testing.assert_array_equal(np.asarray(ds.load_image(record)), by_id[record.image_id].pixels)
        if record.label:
            assert record.defect_type == "dent"
            mask = np.asarray(ds.load_mask(record, ds.load_image(record).size)) > 0
            np.testing.assert_array_equal(mask, by_id[record.image_id].mask)
    split = ds.one_class_split(manifest, "good")
    assert split.test_labels.tolist() == [
        by_id[i].label for i in manifest["image_id"].to_numpy()[split.test_rows]
    ]


def test_folder_from_dirs_without_masks_or_test_normals(tmp_path: Path) -> None:
    fx = make_folder_dirs(tmp_path)
    ds = FolderDataset.from_dirs(fx.options["normal"], test_anomalous=fx.options["test_anomalous"][0])
    assert not ds.has_masks
    assert all(not r.mask_paths for r in ds.records())
    with pytest.raises(DatasetError, match="given twice"):
        FolderDataset.from_dirs(fx.options["normal"], test_normal=fx.options["normal"])
    with pytest.raises(DatasetError, match="missing"):
        FolderDataset.from_dirs(tmp_path / "nope")


def test_folder_masks_are_all_or_nothing(tmp_path: Path) -> None:
    fx = make_folder(tmp_path)
    anomalous = next(i for i in fx.images if i.label == 1)
    image = tmp_path / anomalous.image_id
    (tmp_path / "ground_truth" / anomalous.defect_type / f"{image.stem}.png").unlink()
    with pytest.raises(DatasetError, match=rf"{image.name} has no mask: expected a file named {image.name}"):
        get_dataset("folder", tmp_path).records()


def test_folder_without_masks(tmp_path: Path) -> None:
    fx = make_folder(tmp_path, masks=False)
    ds = get_dataset("folder", tmp_path)
    assert not ds.has_masks and len(ds.records()) == len(fx.images)
    with pytest.raises(DatasetError, match="no categories"):
        get_dataset("folder", tmp_path, "good")
