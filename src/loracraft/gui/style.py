"""The page's look, offline: system fonts (Gradio's default theme fetches web fonts), and where the
installed Gradio takes the theme (Gradio 5 on gr.Blocks, Gradio 6 on launch)."""

from __future__ import annotations

import inspect
from typing import Any

import gradio as gr

SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif")
SYSTEM_MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")
# A field the validation names gets a red frame next to its message; the job's progress bar sits below
# its label, in the theme's accent colour.
CSS = """
.invalid-field { outline: 2px solid #d33; border-radius: 6px; }
#job-progress progress { width: 100%; height: 1.1em; margin-top: 1.6em; accent-color: var(--color-accent); }
"""


def _style() -> dict[str, Any]:
    return {"theme": gr.themes.Default(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO_FONTS), "css": CSS}


def _blocks_take_theme() -> bool:
    return "theme" in inspect.signature(gr.Blocks.__init__).parameters


def blocks_style() -> dict[str, Any]:
    """gr.Blocks' keyword arguments for the theme (empty where launch takes it)."""
    return _style() if _blocks_take_theme() else {}


def launch_style() -> dict[str, Any]:
    """launch's keyword arguments for the theme (empty where gr.Blocks takes it)."""
    return {} if _blocks_take_theme() else _style()
