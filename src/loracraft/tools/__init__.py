"""The `loracraft` commands that work on files: the LoRA tools, sampling, the dataset tools, the demo.

TOOLS is the one table of the tool commands a person, a queued job or the web UI can run: each command's
words and the module here whose `make_parser()` and `main(argv)` it runs. A command with actions
(`dataset prepare`) is listed per action.
"""

TOOLS = {
    "inspect": "inspect_lora",
    "resize": "resize_lora",
    "merge": "merge_lora",
    "extract": "extract_lora",
    "grid": "epoch_grid",
    "sample": "sample",
    "dataset prepare": "dataset_prepare",
    "dataset check": "dataset_check",
    "caption": "caption",
    "caption edit": "caption_edit",
}
