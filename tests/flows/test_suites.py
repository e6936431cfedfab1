"""Suites as data (flows.suites): entries valid against the registries, named suites, dataset roots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import suites
from flows.suites import SUITES, SuiteEntry, dataset_roots, get_suite, missing_datasets
from generalad.errors import ConfigError

ALL_ENTRIES = [(name, entry) for name, suite in SUITES.items() for entry in suite.entries]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(suites.DATA_ENV_PREFIX) or key == suites.CONFIG_ENV:
            monkeypatch.delenv(key)


# ------------------------------------------------------------------ entries against the project's registries


@pytest.mark.parametrize("suite_name, entry", ALL_ENTRIES, ids=[f"{n}-{e.dataset}" for n, e in ALL_ENTRIES])
def test_entry_fits_datasets_presets_and_backbones(suite_name, entry):
    from generalad.backbone import BackboneSpec
    from generalad.data import get_dataset_class, list_datasets
    from generalad.method.presets import preset_for

    assert entry.dataset in list_datasets()
    # a timm ViT with a class token whose patch size divides the entry's image size
    spec = BackboneSpec(name=entry.backbone, weights="random", image_size=entry.image_size)
    assert spec.grid * spec.patch_size == entry.image_size
    preset = preset_for(entry.dataset).with_overrides(
        **entry.overrides()
    )  # validates views, sigma, top_k, epochs
    assert preset.epochs >= 1
    known = getattr(get_dataset_class(entry.dataset), "known_categories", None)
    if entry.categories is not None:
        assert known and set(entry.categories) <= set(known)
    assert entry.dataset in suites.HOW_TO_GET


def test_how_to_get_covers_every_registered_dataset():
    from generalad.data import list_datasets

    assert set(list_datasets()) - {"folder"} <= set(suites.HOW_TO_GET)
    assert all("\n" not in text for text in suites.HOW_TO_GET.values())


def test_module_is_plain_data():
    code = "import sys, flows.suites; assert not {'prefect', 'torch', 'dask'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


# ------------------------------------------------------------------ the named suites


def test_table1():
    suite = get_suite("table1")
    assert suite.datasets() == list(suites.PAPER_DATASETS) and len(suites.PAPER_DATASETS) == 10
    pairs = {(e.dataset, e.backbone) for e in suite.entries}
    assert pairs == {(d, b) for d in suites.PAPER_DATASETS for b in suites.PAPER_BACKBONES}
    assert all(
        e.image_size == 518 and e.overrides() == {} and e.variants() == [(0, None)] for e in suite.entries
    )


def test_table2_and_table3():
    t2 = get_suite("table2")
    assert t2.datasets() == ["mvtec_ad", "visa"] and all(e.pixel_metrics for e in t2.entries)
    assert all(e.select_on_pixel for e in t2.entries)
    assert {e.backbone for e in t2.entries} == set(suites.PAPER_BACKBONES)
    t3 = get_suite("table3")
    assert t3.datasets() == ["mvtec_ad"] and len(t3.entries) == 3
    for entry in t3.entries:
        assert entry.shots == (1, 2, 4, 8) and entry.seeds == (0, 10, 20, 30, 40)
        assert len(entry.variants()) == 20


def test_table4_table5_fig4():
    from generalad.apps import paper

    t4 = get_suite("table4")
    assert t4.datasets() == ["cifar10", "aircraft", "mvtec_ad", "mvtec_loco"]
    assert {e.backbone for e in t4.entries} == {
        "vit_base_patch16_224.augreg_in21k",
        "vit_base_patch16_clip_224.laion2b",
        "vit_base_patch8_224.dino",
        "vit_base_patch14_reg4_dinov2",
        "vit_base_patch14_dinov2",
    }
    # every entry's label finds its stored paper number (docs/method.md section 7)
    assert all(paper.backbone_ablation(e.dataset, e.label) is not None for e in t4.entries)
    assert paper.backbone_ablation("mvtec_loco", "backbone=ViT-B/16-IN21k") == 68.1
    assert {e.image_size for e in t4.entries if "patch14" not in e.backbone} == {224}
    t5 = get_suite("table5")
    assert t5.datasets() == ["cifar10", "aircraft", "mvtec_ad", "mvtec_loco"]
    assert {e.backbone for e in t5.entries} == {
        "vit_large_patch14_dinov2"
    }  # ViT-L (docs/method.md section 2)
    assert all(paper.distortion_ablation(e.dataset, e.label) is not None for e in t5.entries)
    views = {e.views for e in t5.entries}
    assert views == {
        ("clean", "noise_all"),
        ("clean", "noise_all", "noise_random"),
        ("clean", "noise_all", "noise_random", "attention_shuffle"),
    }
    fig4 = get_suite("fig4")
    sigmas = {e.sigma for e in fig4.entries if e.sigma is not None}
    top_ks = {e.top_k for e in fig4.entries if e.top_k is not None}
    assert sigmas == {0.01, 0.05, 0.1, 0.25, 0.5, 1.0} and top_ks == {1, 10, 100, 1369}
    assert len({(e.dataset, e.label) for e in fig4.entries}) == len(fig4.entries)  # labels tell entries apart
    assert all("backbone assumed ViT-B" in e.label for e in fig4.entries) and "assumed" in fig4.description


def test_quickstart_and_smoke():
    (quick,) = get_suite("quickstart").entries
    assert quick.dataset == "quickstart" and quick.categories == ("brick", "grass", "gravel")
    assert quick.backbone == "vit_small_patch14_dinov2" and quick.image_size == 224
    assert quick.epochs is not None and quick.epochs <= 30
    (smoke,) = get_suite("smoke").entries
    assert smoke.dataset == "quickstart" and len(smoke.categories) == 1
    assert smoke.image_size == 56 and smoke.epochs == 1 and smoke.weights == "random"


def test_unknown_suite_lists_the_suites():
    with pytest.raises(ConfigError) as info:
        get_suite("table9")
    for name in SUITES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "kw",
    [
        {"image_size": 500},
        {"image_size": 518, "backbone": "vit_base_patch16_224.augreg_in21k"},
        {"seeds": ()},
        {"seeds": (-1,)},
        {"shots": (0,)},
        {"categories": ()},
        {"sigma": 0.0},
        {"top_k": 0},
        {"dataset": "MVTec AD"},
    ],
)
def test_entry_validation(kw):
    with pytest.raises(ConfigError):
        SuiteEntry(**({"dataset": "mvtec_ad"} | kw))


def test_entry_is_frozen_and_normalises_sequences():
    entry = SuiteEntry(dataset="mvtec_ad", categories=["bottle"], seeds=[0, 1], views=["clean", "noise_all"])
    assert entry.categories == ("bottle",) and entry.seeds == (0, 1) and entry.views == ("clean", "noise_all")
    assert entry.overrides() == {"views": ("clean", "noise_all")}
    with pytest.raises(AttributeError):
        entry.dataset = "visa"  # type: ignore[misc]
    assert hash(entry) == hash(SuiteEntry(dataset="mvtec_ad", categories=("bottle",), seeds=(0, 1),
                                          views=("clean", "noise_all")))  # fmt: skip


# ------------------------------------------------------------------ dataset roots


def test_roots_from_toml_and_env(tmp_path, monkeypatch):
    (tmp_path / "mv").mkdir()
    config = tmp_path / "conf.toml"
    config.write_text('[datasets]\nmvtec_ad = "mv"\nvisa = "/nowhere/visa"\n\n[other]\nx = 1\n')
    roots = dataset_roots(config)
    assert roots == {"mvtec_ad": str(tmp_path / "mv"), "visa": "/nowhere/visa"}  # relative to the file
    monkeypatch.setenv("GENERALAD_DATA_VISA", str(tmp_path))
    monkeypatch.setenv("GENERALAD_DATA_MVTEC_LOCO", "/data/loco")
    roots = dataset_roots(config)
    assert roots["visa"] == str(tmp_path) and roots["mvtec_loco"] == "/data/loco"


def test_config_file_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dataset_roots() == {}
    Path("generalad.toml").write_text('[datasets]\ncifar10 = "/c10"\n')
    assert dataset_roots() == {"cifar10": "/c10"}
    other = tmp_path / "other.toml"
    other.write_text('[datasets]\ncifar10 = "/elsewhere"\n')
    monkeypatch.setenv("GENERALAD_CONFIG", str(other))
    assert dataset_roots() == {"cifar10": "/elsewhere"}
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('[datasets]\ncifar10 = "/explicit"\n')
    assert dataset_roots(explicit) == {"cifar10": "/explicit"}
    monkeypatch.setenv("GENERALAD_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match="GENERALAD_CONFIG"):
        dataset_roots()


@pytest.mark.parametrize(
    "text, match",
    [
        ("[datasets\n", "not valid TOML"),
        ("datasets = 3\n", "must be a table"),
        ("[datasets]\nvisa = 1\n", "visa"),
    ],
)
def test_bad_config_files(tmp_path, text, match):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=match):
        dataset_roots(config)
    with pytest.raises(ConfigError, match="does not exist"):
        dataset_roots(tmp_path / "absent.toml")


def test_missing_datasets(tmp_path):
    (tmp_path / "mvtec").mkdir()
    roots = {"mvtec_ad": str(tmp_path / "mvtec"), "visa": str(tmp_path / "no-visa")}
    missing = missing_datasets("table2", roots)
    assert list(missing) == ["visa"]
    assert "does not exist" in missing["visa"] and suites.HOW_TO_GET["visa"] in missing["visa"]
    missing = missing_datasets(get_suite("table1"), roots)
    assert list(missing) == [d for d in suites.PAPER_DATASETS if d != "mvtec_ad"]
    assert "GENERALAD_DATA_CIFAR10" in missing["cifar10"] and "[datasets]" in missing["cifar10"]
    assert all("\n" not in line and "how to get it: " in line for line in missing.values())
    assert missing_datasets(get_suite("smoke").entries, {"quickstart": str(tmp_path)}) == {}
    assert "generate_quickstart" in missing_datasets("smoke", {})["quickstart"]


def test_dataset_options_are_normalised_and_hashable():
    entry = SuiteEntry(dataset="visa", dataset_options={"split": "listing_80_20"})
    assert entry.dataset_options == (("split", "listing_80_20"),) and entry.options() == {
        "split": "listing_80_20"
    }
    assert hash(entry) == hash(SuiteEntry(dataset="visa", dataset_options=[("split", "listing_80_20")]))
