"""The dataset parts of a LoRA file's `ss_*` metadata, in the JSON shapes kohya writes (reference §3.1).

The networks code serializes these with `json.dumps`; tools that read kohya LoRAs (A1111's extra
networks tab, civitai) show tag frequencies and buckets from them. kohya writes `ss_dataset_dirs`,
`ss_reg_dataset_dirs`, `ss_tag_frequency` and `ss_bucket_info` for plain-folder runs, and for runs with
a dataset config `ss_datasets` (one entry per dataset) plus `merged_dataset_dirs` and `tag_frequency`.
"""

from collections.abc import Sequence

from loracraft.config.fields import flag_infos
from loracraft.config.subset_options import SubsetOptions
from loracraft.data.captions import first_line
from loracraft.data.plan import DatasetPlan, PlannedDataset
from loracraft.data.records import Subset


def _bucket_info(buckets: Sequence[tuple[int, int]], samples: Sequence[Sequence[int]], error: float) -> dict:
    listed = {
        i: {"resolution": list(bucket), "count": len(bucket_samples)}
        for i, (bucket, bucket_samples) in enumerate(zip(buckets, samples, strict=True))
    }
    return {"buckets": listed, "mean_img_ar_error": error}


def bucket_info(plan: DatasetPlan) -> dict:
    """`ss_bucket_info`: samples (with repeats) per bucket and the mean |aspect-ratio error| per image."""
    return _bucket_info(plan.buckets, plan.bucket_samples, plan.mean_img_ar_error)


def dataset_dirs(plan: DatasetPlan, *, is_reg: bool) -> dict[str, dict[str, int]]:
    """`ss_dataset_dirs` (or `ss_reg_dataset_dirs` with `is_reg`): folder repeats and image count per folder."""
    return {
        subset.name: {"n_repeats": subset.num_repeats, "img_count": len(subset.records)}
        for subset in plan.subsets
        if subset.is_reg == is_reg
    }


def merged_dataset_dirs(plan: DatasetPlan) -> dict[str, dict[str, int]]:
    """`ss_dataset_dirs` of a dataset-config run: train folders of every dataset; a folder used again
    gets kohya's " (2)", " (3)" suffix instead of overwriting the first entry."""
    dirs: dict[str, dict[str, int]] = {}
    for subset in plan.subsets:
        if subset.is_reg:
            continue
        name, n = subset.name, 2
        while name in dirs:
            name, n = f"{subset.name} ({n})", n + 1
        dirs[name] = {"n_repeats": subset.num_repeats, "img_count": len(subset.records)}
    return dirs


def caption_tags(caption: str, enable_wildcard: bool = False) -> list[str]:
    """The tags `ss_tag_frequency` counts in an image's caption, with repeats: kohya splits on "," whatever
    `caption_separator` is, strips and lowercases, and drops empty tags. Like kohya, only the first line
    counts unless wildcards are on; then every line does, each on its own (kohya splits the lines joined
    by newlines, so the last tag of one line and the first of the next become one)."""
    lines = caption.splitlines() if enable_wildcard else [first_line(caption)]
    return [tag.strip().lower() for line in lines for tag in line.split(",") if tag.strip()]


def folder_tag_counts(subset: Subset) -> dict[str, int]:
    """How often each tag occurs in the folder's captions, as kohya records it per folder."""
    counts: dict[str, int] = {}
    for record in subset.records:
        for tag in caption_tags(record.caption, subset.options.enable_wildcard):
            counts[tag] = counts.get(tag, 0) + 1
    return counts


def _count_tags(subsets: Sequence[Subset], into: dict[str, dict[str, int]]) -> None:
    for subset in subsets:
        counts = into.setdefault(subset.name, {})
        for tag, count in folder_tag_counts(subset).items():
            counts[tag] = counts.get(tag, 0) + count


def _dataset_tag_frequency(plan: DatasetPlan, dataset: PlannedDataset) -> dict[str, dict[str, int]]:
    frequency: dict[str, dict[str, int]] = {}
    _count_tags([plan.subsets[i] for i in dataset.subset_indices], frequency)
    return frequency


def tag_frequency(plan: DatasetPlan) -> dict[str, dict[str, int]]:
    """`ss_tag_frequency`: per folder, how often each tag occurs in its captions (`caption_tags`). A folder
    that several datasets use is counted once, from the first."""
    frequency: dict[str, dict[str, int]] = {}
    for dataset in plan.datasets:
        for name, counts in _dataset_tag_frequency(plan, dataset).items():
            frequency.setdefault(name, counts)
    return frequency


def _subset_metadata(subset: Subset) -> dict:
    """A subset's record in `ss_datasets`: its counts, and the settings kohya records per subset."""
    recorded = {
        name: getattr(subset.options, name)
        for name, info in flag_infos(SubsetOptions).items()
        if info.in_subset_record
    }
    return {
        "img_count": len(subset.records),
        "num_repeats": subset.num_repeats,
        **recorded,
        "image_dir": subset.name,
        "class_tokens": subset.class_tokens,
        "is_reg": subset.is_reg,
    }


def datasets_metadata(plan: DatasetPlan) -> list[dict]:
    """`ss_datasets`: kohya's per-dataset record of a dataset-config run."""
    entries = []
    for dataset in plan.datasets:
        subsets = [plan.subsets[i] for i in dataset.subset_indices]
        settings = dataset.options
        entries.append({
            "is_dreambooth": True,
            "batch_size_per_device": dataset.batch_size,
            "num_train_images": dataset.num_train_samples,
            "num_reg_images": sum(s.num_repeats * len(s.records) for s in subsets if s.is_reg),
            "resolution": list(dataset.resolution),
            "enable_bucket": dataset.enable_bucket,
            "min_bucket_reso": settings.min_bucket_reso if dataset.enable_bucket else None,
            "max_bucket_reso": settings.max_bucket_reso if dataset.enable_bucket else None,
            "tag_frequency": _dataset_tag_frequency(plan, dataset),
            "bucket_info": _bucket_info(dataset.buckets, dataset.bucket_samples, dataset.mean_img_ar_error),
            "subsets": [_subset_metadata(subset) for subset in subsets],
        })  # fmt: skip
    return entries
