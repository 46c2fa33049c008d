"""A tiny WD14-style tagger folder built in the tests: `model.onnx` exported from a small torch model and
a `selected_tags.csv` in SmilingWolf's format (tag_id,name,category,count; 9 rating, 0 general,
4 character).

The model's scores are known in advance: each tag has a fixed probability whatever the image, except
`red_theme`, driven by how much redder than blue the image is (its R minus its B channel, averaged), so
it also tells whether the tagger was given BGR channels and a white-padded square. The model takes
NHWC float32 0..255 images of SIZE (not 448), so a tagger that does not read the size from the model fails.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

SIZE = 32
# (name, category, probability whatever the image).
TAGS = [
    ("general", 9, 0.7),
    ("sensitive", 9, 0.2),
    ("questionable", 9, 0.05),
    ("explicit", 9, 0.05),
    ("1girl", 0, 0.9),
    ("solo", 0, 0.6),
    ("long_hair", 0, 0.4),
    ("smile", 0, 0.3),
    ("red_theme", 0, None),
    ("^_^", 0, 0.5),
    ("hatsune_miku", 4, 0.8),
    ("saber_(fate)", 4, 0.36),
]
RED_TAG = "red_theme"
# red_theme's score is sigmoid(RED_GAIN * redness + RED_BIAS), redness = mean(R - B) / 255 in -1..1:
# 0.98 for a red image, 0.018 for a grey one, 0.12 for a red quarter on white.
RED_GAIN, RED_BIAS = 8.0, -4.0


def red_theme_score(redness: float) -> float:
    return 1 / (1 + math.exp(-(RED_GAIN * redness + RED_BIAS)))


class TinyTagger(torch.nn.Module):
    def __init__(self, channels_first: bool = False) -> None:
        super().__init__()
        logits = [0.0 if p is None else math.log(p / (1 - p)) for _, _, p in TAGS]
        gain = [0.0] * len(TAGS)
        red = [name for name, _, _ in TAGS].index(RED_TAG)
        logits[red], gain[red] = RED_BIAS, RED_GAIN
        self.register_buffer("logits", torch.tensor(logits))
        self.register_buffer("gain", torch.tensor(gain))
        self.channels_first = channels_first

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            images = images.permute(0, 2, 3, 1)
        redness = (images[..., 2] - images[..., 0]).mean(dim=(1, 2)) / 255
        return torch.sigmoid(self.logits + self.gain * redness[:, None])


def write_tagger(
    folder: Path,
    *,
    fixed_batch: int | None = None,
    channels_first: bool = False,
    tag_rows: list[tuple[str, int]] | None = None,
) -> Path:
    """`folder` with model.onnx (batch dynamic unless `fixed_batch`) and selected_tags.csv (`tag_rows`,
    default TAGS' names and categories)."""
    folder.mkdir(parents=True, exist_ok=True)
    batch = fixed_batch or 2
    shape = (batch, 3, SIZE, SIZE) if channels_first else (batch, SIZE, SIZE, 3)
    batch_axes = {"input_1:0": {0: "batch"}, "predictions_sigmoid": {0: "batch"}}
    torch.onnx.export(
        TinyTagger(channels_first).eval(),
        (torch.zeros(shape),),
        str(folder / "model.onnx"),
        input_names=["input_1:0"],
        output_names=["predictions_sigmoid"],
        dynamic_axes=None if fixed_batch else batch_axes,
        opset_version=17,
        dynamo=False,
    )
    write_tag_list(folder / "selected_tags.csv", tag_rows or [(name, category) for name, category, _ in TAGS])
    return folder


def write_tag_list(path: Path, rows: list[tuple[str, int]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category) in enumerate(rows):
            writer.writerow([index, name, category, 1000 - index])
