"""Tiny random captioning models saved as their hub repositories are: BLIP, BLIP-2, GIT and Florence-2.

Each is its real transformers class with widths of 32, one layer per stack and 32-pixel images, saved with
`save_pretrained` beside its processor, so `config.json` names its model_type and `AutoProcessor` and the
model class load the folder as they load a downloaded one. BLIP and GIT read text with a WordPiece
vocabulary (BERT's, as theirs do), BLIP-2's OPT and Florence-2's BART with a byte-level BPE learned here
from a few words. Nothing touches the network. Florence-2 needs transformers 4.56 or newer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from tokenizers import ByteLevelBPETokenizer

from loracraft.caption.model_source import ModelKind

WORDS = (
    "a an the of on in with and shape circle square triangle star red green blue yellow orange purple white "
    "black grey background small large photo picture drawing style sks ohwx zwx"
).split()
IMAGE_SIZE = 32
WIDTH = 32
BLIP2_QUERY_TOKENS = 4
HAS_FLORENCE2 = hasattr(transformers, "Florence2ForConditionalGeneration")
NO_FLORENCE2 = f"Florence-2 is native in transformers 4.56 and newer; this is {transformers.__version__}"
_LAYER = {"hidden_size": WIDTH, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 37}
_VISION = {**_LAYER, "image_size": IMAGE_SIZE, "patch_size": 16}


def write_images(folder: Path, count: int = 3) -> list[Path]:
    """`count` small images of different colours and sizes, named in the order a run takes them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 256, size=(24 + 8 * index, 40, 3), dtype=np.uint8)
        path = folder / f"image{index}.png"
        Image.fromarray(pixels, "RGB").save(path)
        paths.append(path)
    return paths


def wordpiece_tokenizer(folder: Path) -> transformers.PreTrainedTokenizerBase:
    """A BERT tokenizer whose vocabulary is BERT's special tokens and WORDS, one token each."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    )
    return transformers.AutoTokenizer.from_pretrained(folder)


def bpe_tokenizer(folder: Path, **extra) -> transformers.PreTrainedTokenizerBase:
    """A BART tokenizer (byte-level BPE, <s>=0 <pad>=1 </s>=2 <unk>=3 as BART's) learned from WORDS."""
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator([" ".join(WORDS)], vocab_size=400, special_tokens=specials, show_progress=False)
    bpe.save_model(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BartTokenizer"}))
    return transformers.AutoTokenizer.from_pretrained(folder, **extra)


def save_blip(folder: Path) -> Path:
    tokenizer = wordpiece_tokenizer(folder.with_name(folder.name + "-vocab"))
    # BLIP's decoder starts captions with its own [DEC] token.
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    text = {
        **_LAYER,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 320,
        "encoder_hidden_size": WIDTH,
        "bos_token_id": tokenizer.bos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "eos_token_id": tokenizer.sep_token_id,
    }
    config = transformers.BlipConfig(
        text_config=text, vision_config=_VISION, projection_dim=WIDTH, image_text_hidden_size=WIDTH
    )
    images = transformers.BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = transformers.BlipProcessor(images, tokenizer)
    return _save(folder, transformers.BlipForConditionalGeneration(config), processor)


def save_blip2(folder: Path) -> Path:
    tokenizer = bpe_tokenizer(folder.with_name(folder.name + "-vocab"))
    # Newer transformers write one <image> token per query token into the prompt (4.44 ignores it).
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    opt = {
        "model_type": "opt",
        "vocab_size": len(tokenizer),
        "hidden_size": WIDTH,
        "word_embed_proj_dim": WIDTH,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "ffn_dim": 37,
        "max_position_embeddings": 320,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    qformer = {**_LAYER, "vocab_size": len(tokenizer), "encoder_hidden_size": WIDTH}
    config = transformers.Blip2Config(
        vision_config=_VISION,
        qformer_config=qformer,
        text_config=opt,
        num_query_tokens=BLIP2_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    images = transformers.BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = transformers.Blip2Processor(images, tokenizer, num_query_tokens=BLIP2_QUERY_TOKENS)
    return _save(folder, transformers.Blip2ForConditionalGeneration(config), processor)


def save_git(folder: Path) -> Path:
    tokenizer = wordpiece_tokenizer(folder.with_name(folder.name + "-vocab"))
    config = transformers.GitConfig(
        vision_config=_VISION,
        **_LAYER,
        vocab_size=len(tokenizer),
        max_position_embeddings=320,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    images = transformers.CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = transformers.GitProcessor(images, tokenizer)
    return _save(folder, transformers.GitForCausalLM(config), processor)


def save_florence2(folder: Path) -> Path:
    tokenizer = bpe_tokenizer(
        folder.with_name(folder.name + "-vocab"), extra_special_tokens={"image_token": "<image>"}
    )
    bart = {
        "model_type": "bart",
        "vocab_size": len(tokenizer),
        "d_model": WIDTH,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 37,
        "decoder_ffn_dim": 37,
        "max_position_embeddings": 320,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "decoder_start_token_id": tokenizer.eos_token_id,
    }
    vision = {
        "depths": [1],
        "patch_size": [7],
        "patch_stride": [4],
        "patch_padding": [3],
        "patch_prenorm": [False],
        "embed_dim": [WIDTH],
        "num_heads": [2],
        "num_groups": [2],
        "window_size": 4,
        "projection_dim": WIDTH,
        "drop_path_rate": 0.0,
    }
    config = transformers.Florence2Config(
        text_config=bart, vision_config=vision, image_token_id=tokenizer.image_token_id
    )
    model = transformers.Florence2ForConditionalGeneration(config)
    # Florence-2's own generation settings, which a caption run's sampling must override.
    model.generation_config.num_beams = 3
    model.generation_config.no_repeat_ngram_size = 3
    with torch.no_grad():
        features = model.get_image_features(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    # The processor writes one image token per image feature into the prompt (4.56 returns the tensor).
    image_tokens = getattr(features, "pooler_output", features).shape[1]
    images = transformers.CLIPImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False, image_seq_length=image_tokens
    )
    processor = transformers.Florence2Processor(images, tokenizer, post_processor_config={"pure_text": {}})
    return _save(folder, model, processor)


SAVERS = {
    ModelKind.BLIP: save_blip,
    ModelKind.BLIP2: save_blip2,
    ModelKind.GIT: save_git,
    ModelKind.FLORENCE2: save_florence2,
}


def save_caption_model(kind: ModelKind, folder: Path) -> Path:
    """A tiny random `kind` model and its processor saved in `folder` (its weights the same every time)."""
    torch.manual_seed(0)
    return SAVERS[kind](folder)


def _save(folder: Path, model: torch.nn.Module, processor) -> Path:
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
