"""Captioning a dataset folder: taggers, captioners and bulk caption edits.

`loracraft caption DIR` (tools/caption.py) finds the images (`images.py`), asks one captioner for their
text and writes kohya-style caption files beside them (`writing.py`, `run.py`). The captioners share one
small interface (`backend.py`):

  wd14.py                   WD14-family ONNX taggers (onnxruntime) and their selected_tags.csv;
                            tag_rules.py turns a tagger's scores into kohya's tag line
  transformers_captioner.py BLIP, BLIP-2, GIT and Florence-2 through transformers
  endpoint.py               any vision-language model behind an OpenAI-compatible chat endpoint

`model_source.py` finds a `--model` (a folder, or a hub id downloaded once and cached). `loracraft caption
edit DIR` (tools/caption_edit.py) edits many caption files at once with `tag_edits.py`'s pure functions,
which the web UI's caption editor uses too.
"""
