"""The kohya dataset: folder scanning, captions, buckets, the epoch plan, images and augmentation, the
latent and text-encoder caches, and batches.

Call order for a run (see training/dataset_setup.py and training/batches.py): `scan.scan_dreambooth_root`
(or `scan.scan_subset_dir` per dataset-config subset) -> `image_check.check_images` (the run refuses or
skips the header and decode failures of every folder together) -> `plan.build_run_plan` ->
`summary.format_plan` (printed) -> `latent_cache.encode_latents_in_memory` or
`latent_cache.cache_latents_to_disk` (and `text_cache.cache_text_states`) when caching ->
`dataset.BucketBatchDataset` -> `dataset.batch_loader`. `metadata` turns the plan into the `ss_*` JSON
values of the LoRA file.
"""
