"""The kohya dataset: folder scanning, buckets, the epoch plan, image ops, the latent cache and batches.

Call order for a run: `scan.scan_dreambooth_dir` (or `scan.scan_subset_dir` per dataset-config subset)
-> `plan.build_epoch_plan` -> `summary.format_plan` (printed) -> `latent_cache.cache_latents_in_memory`
or `latent_cache.cache_latents_to_disk` when caching -> `dataset.BucketBatchDataset` ->
`dataset.batch_loader`. `metadata` turns the plan into the `ss_*` JSON values of the LoRA file.
"""
