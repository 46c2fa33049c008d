"""The dataset parts of a LoRA file's `ss_*` metadata, in the JSON shapes kohya writes (reference §3.1).

The networks code serializes these with `json.dumps`; tools that read kohya LoRAs (A1111's extra
networks tab, civitai) show tag frequencies and buckets from them.
"""

from loracraft.data.plan import DatasetPlan


def bucket_info(plan: DatasetPlan) -> dict:
    """`ss_bucket_info`: samples (with repeats) per bucket and the mean |aspect-ratio error| per image."""
    buckets = {
        i: {"resolution": list(bucket), "count": len(samples)}
        for i, (bucket, samples) in enumerate(zip(plan.buckets, plan.bucket_samples, strict=True))
    }
    return {"buckets": buckets, "mean_img_ar_error": plan.mean_img_ar_error}


def dataset_dirs(plan: DatasetPlan, *, is_reg: bool) -> dict[str, dict[str, int]]:
    """`ss_dataset_dirs` (or `ss_reg_dataset_dirs` with `is_reg`): folder repeats and image count per folder."""
    return {
        subset.name: {"n_repeats": subset.num_repeats, "img_count": len(subset.records)}
        for subset in plan.subsets
        if subset.is_reg == is_reg
    }


def tag_frequency(plan: DatasetPlan) -> dict[str, dict[str, int]]:
    """`ss_tag_frequency`: per folder, how many captions hold each comma-separated tag (lowercased, like kohya)."""
    frequency: dict[str, dict[str, int]] = {}
    for subset in plan.subsets:
        counts = frequency.setdefault(subset.name, {})
        for record in subset.records:
            for tag in record.caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
    return frequency
