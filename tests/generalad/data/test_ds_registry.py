"""The dataset registry: names, safe names and categories, missing roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from generalad.data import DatasetAdapter, get_dataset, get_dataset_class, list_datasets, register
from generalad.data.mvtec import MVTecADDataset
from generalad.errors import ConfigError, DatasetError
from tests.fixtures.industrial_datasets import make_mvtec, make_visa

EXPECTED = ["aircraft", "cars", "cifar10", "cifar100", "fmnist", "folder", "mpdd", "mvtec_ad", "mvtec_loco"]
EXPECTED += ["quickstart", "view", "visa"]


def test_list_datasets() -> None:
    assert list_datasets() == sorted(EXPECTED)
    assert get_dataset_class("mvtec_ad") is MVTecADDataset


def test_unknown_dataset_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'.*cifar10.*mvtec_ad"):
        get_dataset("imagenet", tmp_path)


@pytest.mark.parametrize("bad", ["..", "../mvtec_ad", "a/b", "a\\b", "/etc", "C:\\x", "", " "])
def test_names_that_could_escape_the_root_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(DatasetError, match="dataset name"):
        get_dataset(bad, tmp_path)
    make_mvtec(tmp_path)
    with pytest.raises(DatasetError, match="category"):
        get_dataset("mvtec_ad", tmp_path, bad)


@pytest.mark.parametrize("name", EXPECTED)
def test_missing_root_says_what_is_expected_and_how_to_get_it(tmp_path: Path, name: str) -> None:
    cls = get_dataset_class(name)
    with pytest.raises(DatasetError) as info:
        get_dataset(name, tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    assert cls.layout in message and cls.how_to_get in message


def test_category_required_unknown_or_absent(tmp_path: Path) -> None:
    make_mvtec(tmp_path, category="bottle")
    make_mvtec(tmp_path, category="grid")
    with pytest.raises(DatasetError, match="needs a category.*available: bottle, grid"):
        get_dataset("mvtec_ad", tmp_path)
    with pytest.raises(DatasetError, match="'cable' of mvtec_ad not found.*available: bottle, grid"):
        get_dataset("mvtec_ad", tmp_path, "cable")
    with pytest.raises(DatasetError, match="'bottles' of mvtec_ad not found"):
        get_dataset("mvtec_ad", tmp_path, "bottles")
    assert get_dataset("mvtec_ad", tmp_path, "grid").categories() == ["bottle", "grid"]


def test_category_on_a_dataset_without_categories(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar10 has no categories"):
        get_dataset("cifar10", tmp_path, "cat")


def test_adapter_constructed_directly_still_requires_a_category(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    with pytest.raises(DatasetError, match="needs a category.*bottle"):
        MVTecADDataset(tmp_path).records()
    with pytest.raises(DatasetError, match="'woods' is not a mvtec_ad category"):
        MVTecADDataset(tmp_path, "woods").records()
    with pytest.raises(DatasetError, match="category 'wood'.*available: bottle.*wood is missing"):
        MVTecADDataset(tmp_path, "wood").records()


def test_options_are_checked(tmp_path: Path) -> None:
    make_visa(tmp_path)
    with pytest.raises(ConfigError, match="split 'random'"):
        get_dataset("visa", tmp_path, "candle", split="random")
    with pytest.raises(ConfigError, match="unknown option.*shuffle for dataset visa; accepted: split"):
        get_dataset("visa", tmp_path, "candle", shuffle=True)
    with pytest.raises(ConfigError, match="unknown option.*split for dataset cifar10; accepted: none"):
        get_dataset("cifar10", tmp_path, split="x")
    with pytest.raises(ConfigError, match="accepted: normal, test_normal, test_anomalous, masks"):
        get_dataset("folder", tmp_path, normals=tmp_path)


def test_register_refuses_a_second_class_under_a_taken_name() -> None:
    class Impostor(MVTecADDataset):
        name = "mvtec_ad"

    with pytest.raises(DatasetError, match="already registered"):
        register(Impostor)

    class BadName(DatasetAdapter):
        name = "../up"

    with pytest.raises(DatasetError, match="not a plain name"):
        register(BadName)  # type: ignore[type-abstract]
