"""Cache file names that stay distinct where kohya's would collide.

kohya names caches after the image stem (`a_0512x0768_sd.npz`, `a_te_outputs.npz`), so `a.png` and
`a.jpg` in one folder would overwrite each other's cache. Such images keep their extension in the
cache name (`a.png_0512x0768_sd.npz`); every other image keeps kohya's name. An image used twice in a
run with different cache contents (two datasets with other resolutions or captions) gets a variant
tag in the name for each use.
"""

import os
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path


def _key(path: str) -> tuple[str, str]:
    folder, name = os.path.split(path)
    # casefold: on Windows and macOS file systems `A_..npz` and `a_..npz` are the same file.
    return folder, os.path.splitext(name)[0].casefold()


def shared_stem_paths(paths: Iterable[Path]) -> set[Path]:
    """The paths whose folder holds another of `paths` with the same stem (a repeated path is one file)."""
    # Strings and os.path: pathlib's parts and hashes would dominate a scan of thousands of images.
    by_name = {str(path): path for path in paths}
    counts = Counter(_key(name) for name in by_name)
    return {path for name, path in by_name.items() if counts[_key(name)] > 1}


def cache_stem(path: Path, shares_stem: bool) -> str:
    """The name a cache file of `path` starts with."""
    return path.name if shares_stem else path.stem


def needs_variant(files: Sequence[Path], contents: Sequence[Hashable]) -> list[bool]:
    """For each entry, whether another entry wants the same cache file with different contents."""
    variants: dict[Path, set[Hashable]] = {}
    for file, content in zip(files, contents, strict=True):
        variants.setdefault(file, set()).add(content)
    return [len(variants[file]) > 1 for file in files]
