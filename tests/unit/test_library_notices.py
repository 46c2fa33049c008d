"""Library notices that mean nothing to a loracraft user are filtered; every other warning still shows."""

import logging

from loracraft.library_notices import filter_library_notices


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_only_the_torchvision_fallback_notice_is_dropped():
    logger = logging.getLogger("transformers.utils.import_utils")
    collect = Collect()
    logger.addHandler(collect)
    try:
        filter_library_notices()
        filter_library_notices()  # a second call adds no second filter
        logger.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to Pil")
        logger.warning("some other transformers warning")
    finally:
        logger.removeHandler(collect)
    assert collect.messages == ["some other transformers warning"]
    assert len(logger.filters) == 1
