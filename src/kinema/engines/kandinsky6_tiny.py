"""Tiny random-weight Kandinsky 6 models in the real repos' layout, built from the real configs, in code.

Each component starts from the config kinema ships for that repo (kinema/engines/kandinsky6_configs/<repo>,
each file saying where it comes from) and only widths and layer counts are scaled down: every flag that
changes behaviour stays as shipped (the PiFlow scheduler and the n_grid-wide output heads of the distilled
model, the tail-frame image conditioning, cross-modal gates and modulation, RoPE on cross-attention, padded
text tokens, the 8x/4x HunyuanVideo VAE with 16 latent channels, 40 audio latent channels at 44.1 kHz with one
latent frame per 1024 samples, the 512x BigVGAN vocoder, CLIP's legacy eos id). The output is noise by design.

The tokenizers are byte-level (any prompt encodes without a hub): the Qwen2.5-VL one carries Qwen's chat and
vision special tokens, and tokenizer/ holds the image processor config as the real processor folder does; the
text encoders' special token ids point at the tiny vocabularies.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch

from kinema.engines.loading import save_model_dir

Repo = Literal["pro", "pro-distill"]
REPOS: dict[str, Repo] = {"full": "pro", "distilled": "pro-distill"}

TEXT_HIDDEN, CLIP_HIDDEN = 32, 16
QWEN_SPECIALS = (
    "<|im_start|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def real_config(repo: Repo, component: str) -> dict[str, Any]:
    """A component's config as the real repo ships it (keys starting with _ dropped)."""
    text = (
        resources.files("kinema.engines").joinpath(f"kandinsky6_configs/{repo}/{component}.json").read_text()
    )
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def build_qwen_tokenizer() -> Any:
    """A byte-level Qwen2 tokenizer with Qwen2.5-VL's special tokens, padding on the right as the pipeline's
    prompt template crop expects."""
    from transformers import Qwen2Tokenizer

    vocab = {char: i for i, char in enumerate(_byte_alphabet())}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="right",
        model_max_length=131072,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIALS)})
    return tokenizer


def build_clip_tokenizer() -> Any:
    """A byte-level CLIP tokenizer (start/end of text, each byte with and without the word-end mark)."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({char: i + 2 for i, char in enumerate(alphabet)})
    vocab.update({char + "</w>": i + 2 + len(alphabet) for i, char in enumerate(alphabet)})
    return CLIPTokenizer(vocab=vocab, merges=[])


def _text_encoder(repo: Repo, tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    real = real_config(repo, "text_encoder")
    ids = tokenizer.convert_tokens_to_ids
    config = {
        **real,
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        # head_dim 16: mrope sections keep the real 16:24:24 split of head_dim / 2.
        "rope_scaling": {**real["rope_scaling"], "mrope_section": [2, 3, 3]},
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
        "vision_token_id": ids("<|vision_pad|>"),
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_config": {
            **real["vision_config"],
            "depth": 1,
            "fullatt_block_indexes": [0],
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
        },
    }
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(config))


def _text_encoder_2(repo: Repo, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = {
        **real_config(repo, "text_encoder_2"),
        "vocab_size": len(tokenizer),
        "hidden_size": CLIP_HIDDEN,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "projection_dim": CLIP_HIDDEN,
    }
    return CLIPTextModel(CLIPTextConfig.from_dict(config))


def build_tiny_components(repo: Repo, seed: int = 0) -> dict[str, Any]:
    """Every Kandinsky6TI2VAPipeline component of a repo, tiny, from that repo's real configs."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        Kandinsky6Transformer3DModel,
        MMAudioVAE,
        MMAudioVocoder,
        PiflowScheduler,
    )

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = build_qwen_tokenizer(), build_clip_tokenizer()
    transformer = Kandinsky6Transformer3DModel.from_config(
        {
            **real_config(repo, "transformer"),
            # head_dim 16, the real 2:3:3 split of the RoPE axes; audio at half the video width (as shipped).
            "axes_dims": [4, 6, 6],
            "axes_dims_a": [4, 6, 6],
            "model_dim": 32,
            "model_dim_a": 16,
            "ff_dim": 128,
            "ff_dim_a": 56,
            "time_dim": 16,
            "time_dim_a": 16,
            "num_text_blocks": 1,
            "num_visual_blocks": 2,
            "in_text_dim": TEXT_HIDDEN,
            "in_text_dim2": CLIP_HIDDEN,
        }
    )
    vae_config = real_config(repo, "vae")
    vae = AutoencoderKLHunyuanVideo.from_config(
        {
            **vae_config,
            # 1/16 of every width keeps the real ratios between blocks; groups shrink with them.
            "block_out_channels": [c // 16 for c in vae_config["block_out_channels"]],
            "layers_per_block": 1,
            "norm_num_groups": 4,
        }
    )
    audio_vae = MMAudioVAE.from_config(
        {**real_config(repo, "audio_vae"), "mel_bins": 16, "hidden_channels": 16, "layers_per_block": 1}
    )
    vocoder = MMAudioVocoder.from_config(
        {
            **real_config(repo, "vocoder"),
            "num_mels": 16,
            "upsample_initial_channel": 64,  # halves per stage: 1 channel after the sixth
            "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [[1, 3, 5]],
        }
    )
    scheduler_config = real_config(repo, "scheduler")
    scheduler_cls = PiflowScheduler if repo == "pro-distill" else FlowMatchEulerDiscreteScheduler
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": _text_encoder(repo, tokenizer),
        "tokenizer": tokenizer,
        "text_encoder_2": _text_encoder_2(repo, tokenizer_2),
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler_cls.from_config(scheduler_config),
        "audio_vae": audio_vae,
        "vocoder": vocoder,
    }


def save_tiny_repo(repo: Repo, target: Path, seed: int = 0) -> Path:
    """Write a tiny model of a Kandinsky 6 repo in its real layout (atomically), loadable as real weights."""
    from diffusers import Kandinsky6TI2VAPipeline
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    def write(staging: Path) -> None:
        pipeline: Any = Kandinsky6TI2VAPipeline(**build_tiny_components(repo, seed))
        pipeline.save_pretrained(staging)
        # The real tokenizer/ is a Qwen2.5-VL processor folder: tokenizer files plus the image processor's
        # config. Building the processor object itself needs torchvision, so its parts are saved one by one
        # and model_index.json names the processor class as the real repo does.
        Qwen2VLImageProcessorPil().save_pretrained(staging / "tokenizer")
        index = json.loads((staging / "model_index.json").read_text())
        index["tokenizer"] = real_config(repo, "model_index")["tokenizer"]
        (staging / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    return save_model_dir(target, write)


def save_tiny_kandinsky6(target: Path, seed: int = 0) -> Path:
    """The built-in tiny-kandinsky6 model: a tiny Kandinsky-6.0-Pro-distill-5s repo."""
    return save_tiny_repo("pro-distill", target, seed)


def save_tiny_kandinsky6_full(target: Path, seed: int = 0) -> Path:
    """The built-in tiny-kandinsky6-full model: a tiny Kandinsky-6.0-Pro-5s repo."""
    return save_tiny_repo("pro", target, seed)
