"""MVTec LOCO AD: logical and structural anomalies, 5 categories.

Layout per category: `<cat>/train/good/*.png`, `<cat>/validation/good/*.png` (not used), `<cat>/test/<type>/*.png`
with types `good`, `logical_anomalies`, `structural_anomalies`, and one mask FOLDER per anomalous image:
`<cat>/ground_truth/<type>/<stem>/000.png, 001.png, ...` (one file per annotated defect region).

Unlike the reference implementation, which read only the first mask file of each image, the record lists ALL the
mask files of an image and `load_mask` unites them (logical OR), so every annotated region counts.
"""

from __future__ import annotations

from pathlib import Path

from generalad.data.layout import list_image_files, rel_posix
from generalad.data.mvtec import IndustrialDataset
from generalad.data.registry import register
from generalad.errors import DatasetError

__all__ = ["MVTecLocoDataset", "MVTEC_LOCO_CATEGORIES"]

MVTEC_LOCO_CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")


@register
class MVTecLocoDataset(IndustrialDataset):
    """MVTec LOCO AD; masks are the union of every file in `ground_truth/<type>/<stem>/`."""

    name = "mvtec_loco"
    kind = "logical"
    how_to_get = (
        "https://www.mvtec.com/company/research/datasets/mvtec-loco (mvtec_loco_anomaly_detection.tar.xz)"
    )
    layout = "<category>/{train/good,test/<type>,ground_truth/<type>/<stem>/*.png}"
    known_categories = MVTEC_LOCO_CATEGORIES

    def mask_paths(self, category_dir: Path, defect_type: str, image: Path) -> tuple[str, ...]:
        """Every mask file of `ground_truth/<type>/<stem>/`, sorted (united by `load_mask`).

        Raises:
            DatasetError: naming the image and the expected mask folder when it is missing or empty.
        """
        folder = category_dir / "ground_truth" / defect_type / image.stem
        if not folder.is_dir():
            raise DatasetError(f"anomalous test image {image} has no mask: expected mask folder {folder}")
        masks = list_image_files(folder, allow_empty=True)
        if not masks:
            raise DatasetError(f"anomalous test image {image} has no mask: mask folder {folder} is empty")
        return tuple(rel_posix(m, self.root) for m in masks)
