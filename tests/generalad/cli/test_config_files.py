"""`--config FILE.toml` (generalad.cli.config_file) and TOML suites (flows.suite_file.load_suite_file): values reach
the same parser, flags override the file, errors name the file's key, and the examples in examples/ are valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.suite_file import load_suite_file
from flows.suites import SuiteEntry, get_suite
from generalad.cli import build_parser, main
from generalad.cli.config_file import expand_config
from generalad.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"


def _parse(argv):
    parser = build_parser()
    return parser.parse_args(expand_config(argv, parser))


def test_train_table_fills_the_options_and_flags_override_it(tmp_path) -> None:
    file = tmp_path / "run.toml"
    file.write_text(
        '[train]\nstore = "s.zarr"\nclass = "grid"\nepochs = 7\neval_every_epoch = true\nout = "o"\n'
    )
    args = _parse(["train", "--config", str(file)])
    assert (args.store, args.normal_class, args.epochs, args.eval_every_epoch, args.out) == (
        "s.zarr",
        "grid",
        7,
        True,
        "o",
    )
    args = _parse(["train", "--config", str(file), "--epochs", "2", "--out", "other"])
    assert (args.epochs, args.out) == (2, "other")


def test_list_options_from_the_command_line_replace_the_files(tmp_path) -> None:
    file = tmp_path / "fit.toml"
    file.write_text('[fit-folder]\nnormal = "n"\nout = "o"\ntest-anomalous = ["a", "b"]\nlayers = [-1, -2]\n'
                    'set = { sigma = 0.5, views = ["clean", "noise_all"] }\n')  # fmt: skip
    args = _parse(["fit-folder", "--config", str(file)])
    assert args.test_anomalous == ["a", "b"] and args.layers == [-1, -2]
    assert args.overrides == ["sigma=0.5", 'views=["clean", "noise_all"]']
    assert _parse(["fit-folder", "--config", str(file), "--test-anomalous", "c"]).test_anomalous == ["c"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[train]\nepoch = 3\n", r"\[train\] epoch: unknown option"),
        ("[train]\nepochs = 'many'\n", r"\[train\] epochs: invalid value 'many'"),
        ("[train]\nmethod = 'svm'\n", r"\[train\] method: 'svm' is not one of generalad, patchcore_knn"),
        ("[train]\neval-every-epoch = 1\n", r"eval-every-epoch: must be true or false"),
        ("[trian]\n", r"unknown table\(s\) \['trian'\]"),
        ("[fit-folder]\nout = 'x'\n", r"has no \[train\] table"),
    ],
)
def test_bad_files_are_errors_naming_the_key(tmp_path, capsys, table, message) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(table)
    with pytest.raises(ConfigError, match=message):
        _parse(["train", "--config", str(file)])
    assert main(["train", "--config", str(file)]) == 2 and "error:" in capsys.readouterr().err


def test_reproduce_config_stays_the_dataset_roots_file_and_may_add_options(tmp_path) -> None:
    roots = tmp_path / "generalad.toml"
    roots.write_text('[datasets]\nmvtec_ad = "/data"\n')
    assert _parse(["reproduce", "--config", str(roots)]).config == str(roots)
    roots.write_text('[datasets]\nmvtec_ad = "/data"\n[reproduce]\nsuite = "smoke"\nworkers = 2\n')
    args = _parse(["reproduce", "--config", str(roots), "--workers", "1"])
    assert (args.suite, args.workers, args.config) == ("smoke", 1, str(roots))


def test_example_config_files_are_valid() -> None:
    args = _parse(["train", "--config", str(EXAMPLES / "train.toml")])
    assert args.normal_class == "grid" and args.eval_every_epoch
    args = _parse(["fit-folder", "--config", str(EXAMPLES / "fit_folder.toml")])
    assert args.test_anomalous == ["shots/scratch", "shots/dent"] and args.image_size == 518
    args = _parse(["reproduce", "--config", str(EXAMPLES / "reproduce.toml")])
    assert args.suite_file == "examples/my_suite.toml" and args.workers == 2
    suite = load_suite_file(EXAMPLES / "my_suite.toml")
    assert suite.name == "my_suite" and suite.entries[0].methods == ("generalad", "patchcore_knn")
    assert suite.entries[1].shots == (1, 4, None) and suite.entries[1].seeds == (0, 10)


def test_a_suite_file_gives_the_same_entries_as_the_built_in_suite(tmp_path) -> None:
    file = tmp_path / "smoke.toml"
    file.write_text(
        'name = "smoke"\ndescription = "x"\n[[entries]]\ndataset = "quickstart"\ncategories = ["brick"]\n'
        'image_size = 56\nepochs = 1\nweights = "random"\npixel_metrics = true\n'
    )
    assert load_suite_file(file).entries == get_suite("smoke").entries


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[entries]]\ndataset = "quickstart"\nsigmaa = 0.5\n', r"entries\[0\]\.sigmaa: unknown key"),
        ('[[entries]]\ndataset = "quickstart"\n[[entries]]\ndataset = "cifar10"\nepochs = "5"\n',
         r"entries\[1\]\.epochs: expected int, got '5'"),
        ('[[entries]]\ndataset = "quickstart"\nseeds = [-1]\n', r"entries\[0\]: suite entry quickstart: seeds"),
        ('[[entries]]\ndataset = "quickstart"\nmethods = ["knn"]\n', r"entries\[0\]: .*methods must be"),
        ('[[entries]]\ncategories = ["a"]\n', r"entries\[0\]: the key dataset is required"),
        ('name = "x"\n', "needs at least one"),
        ('nmae = "x"\n[[entries]]\ndataset = "quickstart"\n', r"unknown key\(s\) \['nmae'\]"),
    ],
)  # fmt: skip
def test_suite_file_errors_name_the_offending_key(tmp_path, body, message) -> None:
    file = tmp_path / "s.toml"
    file.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_suite_file(file)


def test_suite_entry_methods_are_validated() -> None:
    assert SuiteEntry("quickstart").methods == ("generalad",)
    with pytest.raises(ConfigError, match="coreset_ratio"):
        SuiteEntry("quickstart", methods=("patchcore_knn",), coreset_ratio=1.5)
    assert set(get_suite("table1").entries[0].methods) == {"generalad", "patchcore_knn"}
    assert get_suite("table2").entries[0].methods == ("generalad",)
