"""View: the Intel Image Classification scenes (buildings, forest, glacier, mountain, sea, street).

Layouts: `{train,test}/<class>/*.jpg`, or the official Kaggle archive's `seg_train/seg_train/<class>/*.jpg` and
`seg_test/seg_test/<class>/*.jpg` (`seg_pred/`, unlabelled, is not used). Protocol: one-vs-rest, test images of
the normal class normal, the other five classes anomalous.
"""

from __future__ import annotations

from pathlib import Path

from generalad.data.base import Record
from generalad.data.layout import class_folder_records
from generalad.data.oneclass import FileImagesMixin, SemanticAdapter
from generalad.data.registry import register
from generalad.errors import DatasetError

__all__ = ["ViewDataset", "VIEW_CLASSES"]

VIEW_CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")


@register
class ViewDataset(FileImagesMixin, SemanticAdapter):
    """Intel Image Classification ("View"): 6 scene classes of 150x150 photographs."""

    name = "view"
    how_to_get = "Kaggle dataset puneet6060/intel-image-classification (archive.zip: seg_train, seg_test)"
    layout = "{train,test}/<class>/*.jpg or seg_train/seg_train/<class>, seg_test/seg_test/<class>"
    class_names = VIEW_CLASSES

    def split_dirs(self) -> dict[str, Path]:
        """The folders holding the train and test class folders (plain or Kaggle layout)."""
        kaggle = self.root / "seg_train" / "seg_train"
        if kaggle.is_dir() and not (self.root / "train").is_dir():
            return {"train": kaggle, "test": self.root / "seg_test" / "seg_test"}
        return {"train": self.root / "train", "test": self.root / "test"}

    def records(self) -> list[Record]:
        return class_folder_records(self.root, self.split_dirs(), self._folder_class, VIEW_CLASSES)

    def _folder_class(self, folder_name: str, folder: Path) -> str:
        if folder_name in VIEW_CLASSES:
            return folder_name
        raise DatasetError(
            f"class folder {folder} is not a View class; expected one of: {', '.join(VIEW_CLASSES)}"
        )
