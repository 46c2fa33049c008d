"""Data pipeline speed: scanning and bucketing 10,000 images (cold and warm), the decode check, and
data-loader throughput without latent caching, to compare with the tiny model's step time.

    python bench/data_speed.py [--images 10000] [--batches 150] [--keep DIR]

The images are small and mixed (PNG, JPEG, WebP; sides 64-384 px; two thirds captioned) and written
to a temporary folder. "Cold" is the first scan after writing them, after asking the kernel to drop
its page cache (`/proc/sys/vm/drop_caches`, which needs root and a kernel that allows it; the output
says whether it worked). The loader runs at the tiny model's scale: batch 4 at 64 px, images decoded,
resized and cropped on every step.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from loracraft.config.subset_options import SubsetOptions
from loracraft.data.augment import load_training_image
from loracraft.data.dataset import BucketBatchDataset, batch_loader
from loracraft.data.image_check import check_images
from loracraft.data.plan import DatasetPlan, build_epoch_plan
from loracraft.data.scan import scan_dreambooth_dir

FORMATS = ("png", "jpg", "webp")
BATCH_SIZE = 4


def write_images(folder: Path, count: int, seed: int) -> None:
    """Smooth pictures (a gradient and a block) of random sizes, cycling through the formats."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        width, height = (int(side) for side in rng.integers(64, 385, size=2))
        ys, xs = np.mgrid[0:height, 0:width]
        base = rng.uniform(0, 255, size=3)
        pixels = np.stack([(base[c] + 120 * xs / width + 60 * ys / height) % 256 for c in range(3)], axis=-1)
        pixels[height // 4 : height // 2, width // 3 : width // 2] = rng.uniform(0, 255, size=3)
        path = folder / f"img_{i:05d}.{FORMATS[i % len(FORMATS)]}"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        if i % 3:
            path.with_suffix(".txt").write_text(f"a picture, number {i}, block", encoding="utf-8")


def cached_mib() -> int:
    """The kernel's page cache size ("Cached" in /proc/meminfo), in MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no Cached line in /proc/meminfo")


def drop_page_cache() -> str:
    """Ask the kernel to forget cached file pages; the answer says whether the cache shrank."""
    os.sync()
    before = cached_mib()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as err:
        return (
            f"page cache NOT dropped ({err.strerror}): 'cold' = first scan after writing, files still cached"
        )
    return (
        f"echo 3 > /proc/sys/vm/drop_caches: page cache {before} -> {cached_mib()} MiB "
        "(if it did not shrink, 'cold' = first scan after writing, files still cached)"
    )


def scan_and_plan(train_dir: Path, resolution: int) -> tuple[DatasetPlan, float, float, float]:
    """The plan, the seconds (wall) of scanning and of planning, and the CPU seconds of both."""
    cpu, start = time.process_time(), time.perf_counter()
    subsets, _ = scan_dreambooth_dir(train_dir, is_reg=False, caption_extension=".txt")
    scanned = time.perf_counter()
    plan = build_epoch_plan(
        subsets,
        resolution=(resolution, resolution),
        train_batch_size=BATCH_SIZE,
        seed=0,
        max_train_epochs=1,
        max_train_steps=None,
        enable_bucket=True,
        min_bucket_reso=64,
        max_bucket_reso=max(128, 2 * resolution),
        bucket_reso_steps=64,
    )
    return plan, scanned - start, time.perf_counter() - scanned, time.process_time() - cpu


def loader_rate(plan: DatasetPlan, workers: int, batches: int) -> tuple[float, float]:
    """(images/s in steady state, seconds until the first batch) of the uncached loader."""
    dataset = BucketBatchDataset(plan)
    loader = batch_loader(dataset, num_workers=workers, persistent_workers=True)
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    start, images = time.perf_counter(), 0
    for _, batch in zip(range(batches), iterator, strict=False):
        images += len(batch["pixels"])
    return images / (time.perf_counter() - start), first


def direct_rate(plan: DatasetPlan, options: SubsetOptions, count: int) -> float:
    """Images/s of `load_training_image` alone, in this process."""
    rng = random.Random(0)
    start = time.perf_counter()
    for image in plan.images[:count]:
        load_training_image(image.record.path, image.choice.resized_size, image.choice.bucket, options, rng)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=150, help="batches timed per loader setting")
    parser.add_argument("--keep", type=Path, help="keep the images in this folder (reused when it exists)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        train_dir = root / "img"
        print(f"# {date.today()}  {platform.node()}  {os.cpu_count()} CPUs  load average {os.getloadavg()}")
        if not train_dir.exists():
            start = time.perf_counter()
            write_images(train_dir / "5_picture", args.images, seed=0)
            print(f"wrote {args.images} images in {time.perf_counter() - start:.1f} s")

        print(drop_page_cache())
        plan, scan_s, plan_s, cpu_s = scan_and_plan(train_dir, 512)
        print(
            f"cold scan {scan_s:.2f} s + plan {plan_s:.2f} s, {cpu_s:.2f} s CPU "
            f"({len(plan.images)} images, {len(plan.buckets)} buckets)"
        )
        warm = [scan_and_plan(train_dir, 512)[1:] for _ in range(3)]
        totals = [scan + plan for scan, plan, _ in warm]
        print(
            f"warm scan+plan: best {min(totals):.2f} s, median {statistics.median(totals):.2f} s "
            f"(scan {min(s for s, _, _ in warm):.2f} s, plan {min(p for _, p, _ in warm):.2f} s; "
            f"CPU {min(c for _, _, c in warm):.2f} s)"
        )

        start = time.perf_counter()
        bad = check_images([image.record for image in plan.images], progress=False)
        check_s = time.perf_counter() - start
        print(
            f"decode check ({os.cpu_count()} threads): {check_s:.2f} s = {len(plan.images) / check_s:.0f} images/s "
            f"({len(bad)} bad)"
        )

        tiny = scan_and_plan(train_dir, 64)[0]
        plain = direct_rate(tiny, SubsetOptions(), 600)
        augmented = direct_rate(tiny, SubsetOptions(flip_aug=True, color_aug=True, random_crop=True), 600)
        print(
            f"load_training_image at 64 px: {plain:.0f} images/s plain, {augmented:.0f} with flip+color+random crop"
        )
        for workers in (0, 2):
            rate, first = loader_rate(tiny, workers, args.batches)
            print(
                f"loader, {workers} workers{' (persistent)' if workers else ''}, batch {BATCH_SIZE} at 64 px: "
                f"{rate:.0f} images/s = {1000 * BATCH_SIZE / rate:.1f} ms per batch; first batch after {first:.2f} s"
            )
        print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
