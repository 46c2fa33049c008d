"""Where the package keeps loracraft-tiny, the built model (scripts/build_tiny_model.py makes it)."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
CHECKPOINT = WEIGHTS_DIR / "loracraft-tiny.safetensors"
TOKENIZER_DIR = WEIGHTS_DIR / "loracraft-tiny-tokenizer"
# The v-prediction, zero-terminal-SNR variant (scripts/build_tiny_vpred.py); it uses the same tokenizer.
VPRED_CHECKPOINT = WEIGHTS_DIR / "loracraft-tiny-vpred.safetensors"
