"""ModelBundle: everything training needs from a base model, in fp32, frozen, in eval mode, on the CPU."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


@dataclass(frozen=True)
class Prediction:
    """What a checkpoint says about its training target; None where it says nothing.

    NoobAI-XL v-pred files carry `v_pred`/`ztsnr` marker tensors, diffusers folders a scheduler config,
    kohya/SAI files `modelspec.prediction_type`, SD2 files may have a `.yaml` config beside them.
    """

    v_parameterization: bool | None = None
    zero_terminal_snr: bool | None = None
    found_in: str = ""
    """Where it was read, for the line the trainer prints (e.g. "its v_pred key")."""


@dataclass
class ModelBundle:
    family: str  # "sd1" | "sd2" | "sdxl"
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    """SD1's CLIP ViT-L, SD2's OpenCLIP ViT-H, SDXL's CLIP ViT-L (kohya's TE1)."""
    tokenizer: CLIPTokenizer
    vae: AutoencoderKL
    scheduler_config: dict[str, Any]  # for DDPMScheduler.from_config (noise) and samplers
    source: Path
    vae_source: Path | None = None  # the --vae that replaced the model's own VAE
    text_encoder_2: CLIPTextModelWithProjection | None = None
    """SDXL's OpenCLIP ViT-bigG with its projection (kohya's TE2); None for SD1/SD2."""
    tokenizer_2: CLIPTokenizer | None = None
    """SDXL's second tokenizer: the same vocabulary, padded with `!` (id 0) instead of EOS."""
    prediction: Prediction = Prediction()

    @property
    def text_encoders(self) -> list[CLIPTextModel]:
        """Every text encoder, in kohya's TE1, TE2 order."""
        return [self.text_encoder] + ([self.text_encoder_2] if self.text_encoder_2 is not None else [])

    @property
    def tokenizers(self) -> list[CLIPTokenizer]:
        return [self.tokenizer] + ([self.tokenizer_2] if self.tokenizer_2 is not None else [])
