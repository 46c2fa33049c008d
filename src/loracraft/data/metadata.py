"""The dataset parts of a LoRA file's `ss_*` metadata, in the JSON shapes kohya writes (reference §3.1).

The networks code serializes these with `json.dumps`; tools that read kohya LoRAs (A1111's extra
networks tab, civitai) show tag frequencies and buckets from them. kohya writes `ss_dataset_dirs`,
`ss_reg_dataset_dirs`, `ss_tag_frequency` and `ss_bucket_info` for plain-folder runs, and for runs with
a dataset config `ss_datasets` (one entry per dataset) plus `merged_dataset_dirs` and `tag_frequency`.
"""

from collections.abc import Sequence

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


def _count_tags(subsets: Sequence[Subset], into: dict[str, dict[str, int]]) -> None:
    for subset in subsets:
        counts = into.setdefault(subset.name, {})
        for record in subset.records:
            for tag in record.caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1


def _dataset_tag_frequency(plan: DatasetPlan, dataset: PlannedDataset) -> dict[str, dict[str, int]]:
    frequency: dict[str, dict[str, int]] = {}
    _count_tags([plan.subsets[i] for i in dataset.subset_indices], frequency)
    return frequency


def tag_frequency(plan: DatasetPlan) -> dict[str, dict[str, int]]:
    """`ss_tag_frequency`: per folder, how many captions hold each comma-separated tag (lowercased, like
    kohya). A folder that several datasets use is counted once, from the first."""
    frequency: dict[str, dict[str, int]] = {}
    for dataset in plan.datasets:
        for name, counts in _dataset_tag_frequency(plan, dataset).items():
            frequency.setdefault(name, counts)
    return frequency


def _subset_metadata(subset: Subset) -> dict:
    captions, augment = subset.captions, subset.augment
    return {
        "img_count": len(subset.records),
        "num_repeats": subset.num_repeats,
        "color_aug": bool(augment.color_aug),
        "flip_aug": bool(augment.flip_aug),
        "random_crop": bool(augment.random_crop),
        "shuffle_caption": captions.shuffle_caption,
        "keep_tokens": captions.keep_tokens,
        "keep_tokens_separator": captions.keep_tokens_separator,
        "secondary_separator": captions.secondary_separator,
        "enable_wildcard": captions.enable_wildcard,
        "caption_prefix": captions.caption_prefix,
        "caption_suffix": captions.caption_suffix,
        "image_dir": subset.name,
        "class_tokens": subset.class_tokens,
        "is_reg": subset.is_reg,
        "alpha_mask": bool(augment.alpha_mask),
    }


def datasets_metadata(plan: DatasetPlan) -> list[dict]:
    """`ss_datasets`: kohya's per-dataset record of a dataset-config run."""
    entries = []
    for dataset in plan.datasets:
        subsets = [plan.subsets[i] for i in dataset.subset_indices]
        settings = dataset.settings
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
