"""Scanning kohya image folders into subsets of image records.

A `--train_data_dir` (or `--reg_data_dir`) holds `N_concept/` folders: N is how often each image is
repeated per epoch, `concept` (everything after the first `_`, underscores kept) is the caption of
images without a caption file. Images are read from the top level of each folder only, in name
order, so the same folder always gives the same dataset. Hidden files (macOS `._a.png`, `.DS_Store`)
and anything without an image extension (caption files, `.npz` caches) are not images. Only headers
are read here, never pixels: `image_check` decodes the images before training. Problems a user can
ignore come back as warning lines for the caller to print; problems that would make the run
meaningless raise `UserError`. Images whose header cannot be read come back as `BadImage`s, so the
run can refuse (or, with `--skip_bad_images`, skip) every bad image of every folder at once, together
with the ones that fail to decode.
"""

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from loracraft.data.cache_names import shared_stem_paths
from loracraft.data.caption_files import (
    FALLBACK_EXTENSION,
    MAX_CAPTION_BYTES,
    CaptionSource,
    FoundCaption,
    find_caption,
)
from loracraft.data.file_errors import describe_os_error
from loracraft.data.image_check import BadImage, bad_images_message
from loracraft.data.images import ImageFileError, open_image, upright_size
from loracraft.data.records import ImageRecord, Subset
from loracraft.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SUBSET_DIR_NAME = re.compile(r"^(\d+)_(.+)$")
_MAX_LISTED = 5
_NOT_A_SUBSET_NAME = "not named N_concept with N = repeats per epoch, a whole number >= 1"
_BROKEN_LINK = "a broken symbolic link; remove it or restore its target"


@dataclass(frozen=True)
class FolderScan:
    """One image folder as scanned: a subset of its readable images, and what else was found."""

    subset: Subset
    # Images whose header cannot be read; left out of `subset`.
    bad: tuple[BadImage, ...]
    # How each readable image got its caption.
    caption_sources: Counter[CaptionSource]
    # Missing, empty and `.txt`-fallback captions, counted (the dataset doctor shows these counts itself).
    caption_warnings: tuple[str, ...]
    # Files kohya would read otherwise: guessed encodings, blank first lines, shared stems.
    notes: tuple[str, ...]

    @property
    def image_count(self) -> int:
        return len(self.subset.records) + len(self.bad)

    @property
    def warnings(self) -> list[str]:
        if not self.image_count:
            return [f"{self.subset.dir} has no images ({' '.join(IMAGE_EXTENSIONS)}); skipped"]
        return [*self.caption_warnings, *self.notes]


@dataclass(frozen=True)
class ScanResult:
    """Several folders scanned: the subsets that have readable images, warnings, and unreadable images."""

    subsets: tuple[Subset, ...] = ()
    warnings: tuple[str, ...] = ()
    bad: tuple[BadImage, ...] = ()

    def __add__(self, other: "ScanResult") -> "ScanResult":
        return ScanResult(self.subsets + other.subsets, self.warnings + other.warnings, self.bad + other.bad)


@dataclass(frozen=True)
class SubsetDirs:
    """The folders of a `--train_data_dir`: `(path, repeats, concept)` of each `N_concept/` folder, the
    folders not named so, the number of images lying in the root itself, and the broken symbolic links
    (which may have been folders). Hidden entries are left out."""

    folders: tuple[tuple[Path, int, str], ...]
    misnamed: tuple[Path, ...]
    loose_images: int
    broken_links: tuple[Path, ...] = ()


def parse_subset_dir_name(name: str) -> tuple[int, str] | None:
    """`"10_sks dog"` -> `(10, "sks dog")`; None when the name is not `N_concept` with N >= 1."""
    match = _SUBSET_DIR_NAME.match(name)
    if match is None or int(match.group(1)) < 1:
        return None
    return int(match.group(1)), match.group(2)


def _is_image_name(name: str) -> bool:
    # Hidden files include macOS `._name.png` resource forks, which carry an image suffix but no image.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_broken_link(entry: os.DirEntry) -> bool:
    """A symbolic link to something that is gone, or back to itself (following it fails with ELOOP)."""
    return entry.is_symlink() and not os.path.exists(entry.path)


def _is_file_entry(entry: os.DirEntry) -> bool:
    """Files, and broken links: an image or caption behind a broken link is named when it is opened (with
    the fix) instead of silently left out."""
    return _is_broken_link(entry) or entry.is_file()


def read_folder(folder: Path, what: str) -> list[os.DirEntry]:
    """The entries of `folder`, or one line naming it (`what`: "image folder", "--train_data_dir") and the fix."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as err:
        problem = describe_os_error(err, folder, "folder")
        raise UserError(f"cannot read {what} {folder} ({problem.reason}); {problem.fix}") from err


def list_folder(folder: Path) -> tuple[list[Path], set[str]]:
    """The folder's images in name order, and the names of all its files (to find captions without a
    `stat` per candidate: one directory read serves the whole folder)."""
    files = [entry.name for entry in read_folder(folder, "image folder") if _is_file_entry(entry)]
    return [folder / name for name in sorted(files) if _is_image_name(name)], set(files)


def list_images(folder: Path) -> list[Path]:
    """The folder's images (top level, not hidden) in name order."""
    return list_folder(folder)[0]


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after EXIF orientation, from the header alone.

    Phone photos stored sideways thus get the bucket of the picture the user sees. An unreadable
    header or an image over `images.MAX_IMAGE_PIXELS` raises `ImageFileError`.
    """
    with open_image(path) as img:
        width, height = upright_size(img)
    if width <= 0 or height <= 0:
        raise ImageFileError(path, f"invalid size {width}x{height}")
    return width, height


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown if len(names) <= _MAX_LISTED else f"{shown} and {len(names) - _MAX_LISTED} more"


def _caption_warnings(
    folder: Path, sources: Counter, total: int, caption_extension: str, class_tokens: str, is_reg: bool
) -> list[str]:
    warnings = []
    if sources[CaptionSource.TXT_FALLBACK]:
        warnings.append(
            f"{folder}: {sources[CaptionSource.TXT_FALLBACK]} of {total} images have no {caption_extension} "
            f"caption, so their {FALLBACK_EXTENSION} file was used (pass --caption_extension "
            f"{FALLBACK_EXTENSION} to make that explicit)"
        )
    if sources[CaptionSource.EMPTY]:
        warnings.append(
            f"{folder}: {sources[CaptionSource.EMPTY]} of {total} caption files are empty; "
            f"those images use the folder caption '{class_tokens}'"
        )
    # Reg images captioned by their folder name are the normal kohya setup; train images are worth a note.
    if sources[CaptionSource.MISSING] and not is_reg:
        warnings.append(
            f"{folder}: {sources[CaptionSource.MISSING]} of {total} images have no {caption_extension} "
            f"caption file; they use the folder caption '{class_tokens}'"
        )
    return warnings


@dataclass
class _CaptionFindings:
    """Caption files worth a warning, gathered while a folder is scanned."""

    guessed: list[tuple[Path, str]] = field(default_factory=list)
    blank_first: list[Path] = field(default_factory=list)
    truncated: list[Path] = field(default_factory=list)

    def add(self, found: FoundCaption) -> None:
        if found.guessed_encoding:
            self.guessed.append((found.path, found.guessed_encoding))
        if found.blank_first_line:
            self.blank_first.append(found.path)
        if found.truncated:
            self.truncated.append(found.path)


def _truncation_warnings(truncated: list[Path]) -> list[str]:
    # Named one by one: such a file is a mistake (a log saved as a caption), and each should be looked at.
    return [
        f"caption file {path} is over {MAX_CAPTION_BYTES // 1024} KiB; only its first "
        f"{MAX_CAPTION_BYTES // 1024} KiB were read (far more than a caption's 225 tokens): check that it "
        "is a caption"
        for path in truncated
    ]


def _folder_notes(folder: Path, paths: list[Path], findings: _CaptionFindings) -> list[str]:
    """Warnings about caption files cut short, and names and encodings that kohya would mishandle and we
    handle."""
    guessed, blank_first = findings.guessed, findings.blank_first
    warnings = _truncation_warnings(findings.truncated)
    if guessed:
        names = [f"{path.name} ({encoding})" for path, encoding in guessed]
        warnings.append(
            f"{folder}: {len(guessed)} caption file(s) are not UTF-8 and were read with a guessed encoding: "
            f"{_listed(names)}; if their words look wrong in the tag list, re-save them as UTF-8"
        )
    if blank_first:
        warnings.append(
            f"{folder}: {len(blank_first)} caption file(s) start with an empty line: "
            f"{_listed([path.name for path in blank_first])}; they train on their first non-empty line, where "
            "kohya (without --enable_wildcard) would train on an empty caption; delete the empty line"
        )
    shared = sorted(path.name for path in shared_stem_paths(paths))
    if shared:
        warnings.append(
            f"{folder}: images {_listed(shared)} share a name apart from the extension; all of them train, "
            "with the same caption file, and their cache files keep the extension to stay apart"
        )
    return warnings


def scan_subset_dir(
    image_dir: Path, *, num_repeats: int, class_tokens: str, is_reg: bool, caption_extension: str
) -> FolderScan:
    """Read one image folder's headers and captions; images whose header is unreadable are returned
    apart, for the caller to refuse or skip with every other bad image of the run."""
    if not image_dir.is_dir():
        raise UserError(f"image folder {image_dir} does not exist; fix the path or create it")
    records, bad, findings, sources = [], [], _CaptionFindings(), Counter()
    paths, file_names = list_folder(image_dir)
    for path in paths:
        try:
            width, height = read_image_size(path)
        except ImageFileError as err:
            bad.append(BadImage(path, err.reason, err.fix))
            continue
        found = find_caption(path, caption_extension, file_names)
        sources[found.source] += 1
        findings.add(found)
        records.append(
            ImageRecord(path, found.text or class_tokens, width, height, is_reg=is_reg, subset=image_dir.name)
        )
    subset = Subset(image_dir, class_tokens, num_repeats, is_reg, tuple(records))
    caption_warnings = _caption_warnings(
        image_dir, sources, len(records), caption_extension, class_tokens, is_reg
    )
    notes = _folder_notes(image_dir, [record.path for record in records], findings)
    return FolderScan(subset, tuple(bad), sources, tuple(caption_warnings), tuple(notes))


def find_subset_dirs(root: Path, what: str = "image folder") -> SubsetDirs:
    """Sort the entries of an existing `--train_data_dir` (or `--reg_data_dir`) folder, in name order;
    `what` names the folder if it cannot be read."""
    folders, misnamed, loose_images, broken = [], [], 0, []
    for entry in sorted(read_folder(root, what), key=lambda entry: entry.name):
        path = root / entry.name
        if entry.name.startswith("."):
            continue
        if _is_broken_link(entry):
            broken.append(path)
        elif not entry.is_dir():
            loose_images += _is_image_name(entry.name) and entry.is_file()
        elif (parsed := parse_subset_dir_name(entry.name)) is None:
            misnamed.append(path)
        else:
            folders.append((path, *parsed))
    return SubsetDirs(tuple(folders), tuple(misnamed), loose_images, tuple(broken))


def _quoted(paths: tuple[Path, ...]) -> str:
    return _listed([f"'{path.name}'" for path in paths])


def _layout_warnings(flag: str, root: Path, dirs: SubsetDirs) -> list[str]:
    warnings = [
        f"{flag} {root}: skipped folder '{path.name}': {_NOT_A_SUBSET_NAME} (e.g. 10_mychar)"
        for path in dirs.misnamed
    ]
    warnings += [f"{flag} {root}: skipped {path.name}: {_BROKEN_LINK}" for path in dirs.broken_links]
    if dirs.loose_images:
        warnings.append(
            f"{flag} {root}: ignored {dirs.loose_images} image(s) lying directly in it; images go in N_concept/ "
            "subfolders"
        )
    return warnings


def _no_images_message(flag: str, root: Path, dirs: SubsetDirs) -> str:
    """The error for a root without a usable folder, naming the folders skipped and why."""
    parts = [f"{flag} {root} has no images in N_concept/ subfolders"]
    if dirs.misnamed:
        parts.append(
            f"skipped folder(s) {_quoted(dirs.misnamed)}: {_NOT_A_SUBSET_NAME}; rename them like {root / '10_mychar'}"
        )
    if dirs.broken_links:
        parts.append(f"skipped {_quoted(dirs.broken_links)}: {_BROKEN_LINK}")
    if len(parts) == 1:
        parts.append(f"expected e.g. {root / '10_mychar' / 'image.png'} (+ image.txt), N = repeats per epoch")
    return "; ".join(parts)


def scan_dreambooth_root(root: Path, *, is_reg: bool, caption_extension: str) -> ScanResult:
    """All `N_concept/` subsets under `--train_data_dir` (or `--reg_data_dir` when `is_reg`), with the
    warnings and the images whose header cannot be read."""
    flag = "--reg_data_dir" if is_reg else "--train_data_dir"
    if not root.is_dir():
        raise UserError(f"{flag} {root} does not exist or is not a folder")
    dirs = find_subset_dirs(root, flag)
    result = ScanResult()
    for folder, num_repeats, class_tokens in dirs.folders:
        scan = scan_subset_dir(
            folder,
            num_repeats=num_repeats,
            class_tokens=class_tokens,
            is_reg=is_reg,
            caption_extension=caption_extension,
        )
        kept = (scan.subset,) if scan.subset.records else ()
        result += ScanResult(kept, tuple(scan.warnings), scan.bad)
    # Unreadable images are reported by the caller, which lists them all; "no images" would mislead then.
    if not result.subsets and not result.bad:
        raise UserError(_no_images_message(flag, root, dirs))
    return result + ScanResult(warnings=tuple(_layout_warnings(flag, root, dirs)))


def scan_dreambooth_dir(
    root: Path, *, is_reg: bool, caption_extension: str
) -> tuple[list[Subset], list[str]]:
    """`scan_dreambooth_root` for a caller that checks nothing else: an unreadable image stops it here.
    A run instead refuses every bad image of all its folders at once (`training.dataset_setup`)."""
    result = scan_dreambooth_root(root, is_reg=is_reg, caption_extension=caption_extension)
    if result.bad:
        raise UserError(bad_images_message(result.bad))
    return list(result.subsets), list(result.warnings)
