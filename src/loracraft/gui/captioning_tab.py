"""The Captioning tab: `loracraft caption` and `loracraft caption edit` as queued jobs, and the caption
editor for a folder.

The two commands get the Utilities tab's forms (utilities_tab.tool_sections: each generated from the
command's own parser, Run queues a tool job whose console the tab follows and the Queue tab selects;
the job page's bar counts the images captioned). A command whose module does not import here is left
out. Under them, the caption editor (caption_editor_view.py) edits the captions of one folder in the
page, image by image or in bulk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from loracraft.gui.caption_editor_view import NAVIGATION_KEYS_JS, caption_editor
from loracraft.gui.utilities_tab import ToolForm, available_tools, tool_sections

if TYPE_CHECKING:
    from loracraft.jobs.queue import JobQueue

CAPTION_TOOLS = ("caption", "caption edit")


def captioning_tab(queue: JobQueue, queue_selection: gr.Dropdown | None = None) -> list[ToolForm]:
    """The "Captioning" tab, built inside the caller's gr.Blocks; a queued job is also selected in
    `queue_selection` (the Queue tab's job dropdown). Returns the caption commands it shows."""
    forms = available_tools(CAPTION_TOOLS)
    with gr.Tab("Captioning", elem_id="captioning-tab") as tab:
        gr.Markdown(
            "Caption a folder with a WD14 tagger, BLIP, BLIP-2, GIT, Florence-2 or an OpenAI-compatible "
            "endpoint, or edit its captions in bulk: **Run** queues the command as a job (its console shows "
            "below and in the Queue tab). Existing captions are kept unless --overwrite or --append."
        )
        tool_sections(queue, forms, queue_selection, prefix="captioning")
        gr.Markdown("## Caption editor")
        caption_editor()
    tab.select(None, js=NAVIGATION_KEYS_JS)
    return forms
