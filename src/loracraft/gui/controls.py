"""Gradio controls for the schema's fields (form_fields.py says which control and what value).

Every control's `elem_id` is `field-NAME`, so a browser test or a user script finds a flag's control by
kohya's name.
"""

from __future__ import annotations

import gradio as gr

from loracraft.gui.form_fields import (
    CHECKBOX,
    DROPDOWN,
    INTEGER,
    LIST,
    NOT_SET,
    NUMBER,
    OPEN_DROPDOWN,
    FormField,
)

# What a list's text box says about its format, as the command line reads it.
_LIST_HINTS = {
    str: "values separated by spaces, quoted when they hold one",
    float: "numbers separated by spaces",
}


def control_id(name: str) -> str:
    return f"field-{name}"


def field_label(field: FormField) -> str:
    """The readable title and kohya's flag name, which users know from guides and search for."""
    return f"{field.title} ({field.name})"


def make_control(
    field: FormField, visible: bool = True, info: str | None = None, render: bool = True
) -> gr.components.Component:
    """The control of `field`, showing its starting value, with `info` (else its description) as the
    tooltip."""
    common = {
        "label": field_label(field),
        "info": field.description if info is None else info,
        "value": field.initial,
        "elem_id": control_id(field.name),
        "visible": visible,
        "render": render,
    }
    if field.kind == CHECKBOX:
        return gr.Checkbox(**common)
    if field.kind == DROPDOWN:
        unset = [("(not set)", NOT_SET)] if field.optional else []
        return gr.Dropdown(choices=unset + [(str(choice), str(choice)) for choice in field.choices], **common)
    if field.kind == OPEN_DROPDOWN:
        return gr.Dropdown(choices=list(field.choices), allow_custom_value=True, **common)
    if field.kind == INTEGER:
        return gr.Number(precision=0, **common)
    if field.kind == NUMBER:
        return gr.Number(**common)
    if field.kind == LIST:
        return gr.Textbox(placeholder=_LIST_HINTS.get(field.item_type, ""), **common)
    return gr.Textbox(**common)
