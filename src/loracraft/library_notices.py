"""Notices from libraries that say nothing to a loracraft user, filtered out of the console.

transformers >= 5 warns, at the first import of diffusers' SD pipeline, that its CLIP and SigLIP image
processors fall back to Pillow without torchvision. loracraft never uses an image processor (SD1's safety
checker is not loaded), so the two lines would only open every demo and preview with a false alarm.
"""

import logging

_TRANSFORMERS_IMPORTS = "transformers.utils.import_utils"


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


def filter_library_notices() -> None:
    """Install the filters; safe to call more than once and before the libraries are imported."""
    logger = logging.getLogger(_TRANSFORMERS_IMPORTS)
    if not any(isinstance(f, _DropTorchvisionFallback) for f in logger.filters):
        logger.addFilter(_DropTorchvisionFallback())
