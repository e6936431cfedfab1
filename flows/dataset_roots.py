"""Where the datasets live: `generalad.toml` (or `$GENERALAD_CONFIG`) and `GENERALAD_DATA_<NAME>` variables, and
how to get each dataset when its root is missing. Plain stdlib (split from flows/suites.py)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from generalad.errors import ConfigError

__all__ = ["CONFIG_ENV", "DATA_ENV_PREFIX", "DEFAULT_CONFIG", "HOW_TO_GET", "dataset_roots"]

CONFIG_ENV = "GENERALAD_CONFIG"
DATA_ENV_PREFIX = "GENERALAD_DATA_"
DEFAULT_CONFIG = "generalad.toml"

# one line each: where a dataset comes from, printed when its root is missing
HOW_TO_GET: Mapping[str, str] = MappingProxyType(
    {
        "cifar10": "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it",
        "cifar100": "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it",
        "fmnist": "download the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist "
        "(data/fashion/) into one folder",
        "view": "download the Kaggle dataset puneet6060/intel-image-classification (seg_train, seg_test) and unzip it",
        "aircraft": "download fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ "
        "and extract it as it is",
        "cars": "get the Stanford-Cars release (cars_train, cars_test, devkit, cars_test_annos_withlabels.mat), "
        "e.g. from its Kaggle mirror",
        "mvtec_ad": "download mvtec_anomaly_detection.tar.xz from "
        "https://www.mvtec.com/company/research/datasets/mvtec-ad and extract it",
        "mvtec_loco": "download mvtec_loco_anomaly_detection.tar.xz from "
        "https://www.mvtec.com/company/research/datasets/mvtec-loco and extract it",
        "visa": "download VisA_20220922.tar and split_csv/1cls.csv from https://github.com/amazon-science/spot-diff",
        "mpdd": "download MPDD via the link in https://github.com/stepanje/MPDD's README and extract it",
        "quickstart": 'generate it offline: python -c "from generalad.data import generate_quickstart; '
        "generate_quickstart('PATH')\"",
    }
)


def _config_file(config_path: str | os.PathLike[str] | None) -> Path | None:
    if config_path is not None:
        path = Path(config_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}={env} names no file")
        return path
    default = Path(DEFAULT_CONFIG)
    return default if default.is_file() else None


def dataset_roots(config_path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Dataset name -> root folder, from the config file and the environment.

    The config file is `config_path`, else the file named by `$GENERALAD_CONFIG`, else `./generalad.toml` when
    present. Its `[datasets]` table maps names to paths (relative paths are relative to the file's folder).
    `GENERALAD_DATA_<NAME>` environment variables (e.g. `GENERALAD_DATA_MVTEC_AD`) override it; `<NAME>` is the
    registry name in capitals.

    Raises:
        ConfigError: for a named config file that does not exist, invalid TOML, or a non-string path.
    """
    roots: dict[str, str] = {}
    path = _config_file(config_path)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        table = data.get("datasets", {})
        if not isinstance(table, dict):
            raise ConfigError(f'{path}: [datasets] must be a table of name = "path"')
        for name, value in table.items():
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{path}: datasets.{name} must be a path string, got {value!r}")
            root = Path(value).expanduser()
            if not root.is_absolute():
                root = path.resolve().parent / root
            roots[name] = str(root)
    for key, value in os.environ.items():
        if key.startswith(DATA_ENV_PREFIX) and len(key) > len(DATA_ENV_PREFIX) and value:
            roots[key[len(DATA_ENV_PREFIX) :].lower()] = str(Path(value).expanduser())
    return roots
