"""What scanning finds: one record per image, grouped into subsets (one kohya `N_concept` folder each)."""

from dataclasses import dataclass
from pathlib import Path

from loracraft.config.subset_options import SubsetOptions


@dataclass(frozen=True)
class ImageRecord:
    """One image on disk with its caption and its size after EXIF orientation."""

    path: Path
    caption: str
    width: int
    height: int
    is_reg: bool
    subset: str


@dataclass(frozen=True)
class Subset:
    """One image folder: kohya's `N_concept/` directory or a dataset-config `[[datasets.subsets]]` entry.

    `name` is the folder's base name; kohya keys `ss_dataset_dirs` and `ss_tag_frequency` by it.
    `options` are the folder's caption and augmentation settings: from its dataset-config tables, or
    from the command-line flags for plain folders.
    """

    dir: Path
    class_tokens: str
    num_repeats: int
    is_reg: bool
    records: tuple[ImageRecord, ...]
    options: SubsetOptions = SubsetOptions()

    @property
    def name(self) -> str:
        return self.dir.name
