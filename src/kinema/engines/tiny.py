"""Tiny random-weight LTX models in the real repos' layouts, built from the real configs, in code.

Each component starts from its generation's real config (kinema/engines/ltx_configs, taken from the repos or
derived from diffusers' scripts/convert_ltx2_to_diffusers.py) and only layer counts and widths are scaled
down: every flag that changes behaviour (gated attention, cross-attention modulation, the BWE vocoder at
48 kHz, the scheduler's shifting, 32x/8x VAE compression, 128 latent channels) stays as shipped. The repo is
laid out like the real one: transformer_full/ and the root distilled LoRA for LTX-2.5, the dev transformer
plus a root distilled LoRA for LTX-2, latent_upsampler/ for all. The output is noise by design.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from kinema.engines.loading import save_model_dir

TINY_VOCAB_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")


def build_tiny_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens plus specials), so any prompt encodes without a hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(TINY_VOCAB_SPECIALS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        model_max_length=1024,
        padding_side="left",
    )


TEXT_HIDDEN, TEXT_LAYERS = 32, 2
VIDEO_HEADS, VIDEO_HEAD_DIM = 2, 8  # inner width 16
AUDIO_HEADS, AUDIO_HEAD_DIM = 2, 4  # inner width 8

# The root files each real repo ships (names from the repos / diffusers docs).
LORA_NAMES = {
    "2.0": "ltx-2-19b-distilled-lora-384.safetensors",
    "2.3": "ltx-2.3-22b-distilled-lora-384.safetensors",
    "2.5": "ltx-2.5-22b-distilled-lora-450-bf16.safetensors",
}


def real_config(generation: str, component: str) -> dict[str, Any]:
    """A component's config as the real repo of that generation ships it (keys starting with _ dropped)."""
    text = (
        resources.files("kinema.engines").joinpath(f"ltx_configs/{generation}/{component}.json").read_text()
    )
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _shrunk(config: dict[str, Any], **sizes: Any) -> dict[str, Any]:
    """The config with only the given (size) keys replaced, where the real config has them."""
    out = dict(config)
    for key, value in sizes.items():
        if (key in out and out[key] is not None) or key in ("caption_channels", "text_proj_in_factor"):
            out[key] = value
    return out


def _text_encoder(generation: str, vocab: int) -> Any:
    text = {
        "vocab_size": vocab,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 1024,
        "sliding_window": 64,
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    if generation == "2.5":  # Gemma 4 ("gemma4_unified"), as LTX-2.5's text encoder
        from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration

        config = Gemma4UnifiedConfig(
            text_config={**text, "global_head_dim": 16}, vision_config=None, audio_config=None
        )
        return Gemma4UnifiedForConditionalGeneration(config)
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration(
        Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    )


def build_tiny_components(generation: str = "2.5", seed: int = 0, num_layers: int = 2) -> dict[str, Any]:
    """Every LTX2Pipeline component of a generation, tiny, from that generation's real configs."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    video_inner, audio_inner = VIDEO_HEADS * VIDEO_HEAD_DIM, AUDIO_HEADS * AUDIO_HEAD_DIM
    transformer = LTX2VideoTransformer3DModel.from_config(
        _shrunk(
            real_config(generation, "transformer"),
            num_layers=num_layers,
            num_attention_heads=VIDEO_HEADS,
            attention_head_dim=VIDEO_HEAD_DIM,
            cross_attention_dim=video_inner,
            audio_num_attention_heads=AUDIO_HEADS,
            audio_attention_head_dim=AUDIO_HEAD_DIM,
            audio_cross_attention_dim=audio_inner,
            caption_channels=TEXT_HIDDEN,
        )
    )
    real_connectors = real_config(generation, "connectors")
    # LTX-2 connectors work at the text encoder's width (the transformer projects captions); from 2.3 on
    # they project per modality to the transformer's video and audio widths.
    per_modality = bool(real_connectors.get("per_modality_projections"))
    video_width = video_inner if per_modality else TEXT_HIDDEN
    audio_width = audio_inner if per_modality else TEXT_HIDDEN
    connectors_config = _shrunk(
        real_connectors,
        caption_channels=TEXT_HIDDEN,
        text_proj_in_factor=TEXT_LAYERS + 1,
        video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=video_width // 2,
        video_connector_num_layers=1,
        video_connector_num_learnable_registers=8,
        audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=audio_width // 2,
        audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=8,
        video_hidden_dim=video_inner,
        audio_hidden_dim=audio_inner,
    )
    connectors = LTX2TextConnectors.from_config(connectors_config)
    vae_config = real_config(generation, "vae")
    vae = AutoencoderKLLTX2Video.from_config(
        _shrunk(
            vae_config,
            # 1/16 of every width keeps the real ratios between blocks (the upsamplers depend on them).
            block_out_channels=[c // 16 for c in vae_config["block_out_channels"]],
            decoder_block_out_channels=[c // 16 for c in vae_config["decoder_block_out_channels"]],
            layers_per_block=[1] * len(vae_config["layers_per_block"]),
            decoder_layers_per_block=[1] * len(vae_config["decoder_layers_per_block"]),
        )
    )
    audio_vae = AutoencoderKLLTX2Audio.from_config(
        _shrunk(real_config(generation, "audio_vae"), num_res_blocks=1)
    )
    vocoder_config = real_config(generation, "vocoder")
    vocoder_cls = LTX2VocoderWithBWE if vocoder_config.get("bwe_hidden_channels") else LTX2Vocoder
    vocoder = vocoder_cls.from_config(_shrunk(vocoder_config, hidden_channels=64, bwe_hidden_channels=32))
    components: dict[str, Any] = {
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(real_config(generation, "scheduler")),
        "vae": vae,
        "audio_vae": audio_vae,
        "text_encoder": _text_encoder(generation, len(tokenizer)),
        "tokenizer": tokenizer,
        "connectors": connectors,
        "transformer": transformer,
        "vocoder": vocoder,
    }
    return components


def build_tiny_upsampler(generation: str) -> Any:
    """The x2 latent upsampler of a generation, tiny."""
    from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

    return LTX2LatentUpsamplerModel.from_config(
        _shrunk(real_config(generation, "latent_upsampler"), mid_channels=32, num_blocks_per_stage=1)
    )


def _save_lora(transformer: Any, path: Path, seed: int) -> None:
    """A rank-4 LoRA over the transformer's attention projections, in diffusers' LoRA format."""
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    model = type(transformer).from_config(transformer.config)
    torch.manual_seed(seed)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    state = {f"transformer.{k}": v.contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, str(path))


def save_tiny_repo(generation: str, target: Path, seed: int = 0, num_layers: int = 2) -> Path:
    """Write a tiny model of a generation in its real repo's layout (atomically), loadable like real weights.

    LTX-2.5 (Lightricks/LTX-2.5-Diffusers): distilled transformer/, transformer_full/, latent_upsampler/,
    duration_head/ and the distilled LoRA at the root. LTX-2.3 and LTX-2 (full repos): the full or dev
    transformer/, latent_upsampler/ and the distilled LoRA at the root.
    """
    from diffusers import LTX2Pipeline

    def write(staging: Path) -> None:
        components = build_tiny_components(generation, seed, num_layers)
        if generation == "2.5":
            from diffusers.pipelines.ltx2.duration_head import LTX2DurationHead

            components["duration_head"] = LTX2DurationHead.from_config(
                _shrunk(
                    real_config(generation, "duration_head"),
                    video_cross_attention_dim=VIDEO_HEADS * VIDEO_HEAD_DIM,
                    audio_cross_attention_dim=AUDIO_HEADS * AUDIO_HEAD_DIM,
                    pooler_hidden_dim=16,
                    mlp_hidden_dim=16,
                )
            )
        pipeline: Any = LTX2Pipeline(**components)
        pipeline.save_pretrained(staging)
        transformer = components["transformer"]
        if generation == "2.5":
            torch.manual_seed(seed + 1)
            full = type(transformer).from_config(transformer.config)
            full.save_pretrained(staging / "transformer_full")
            # The shipped scheduler is the distilled one ([D] "LTX-2.5").
        build_tiny_upsampler(generation).save_pretrained(staging / "latent_upsampler")
        _save_lora(transformer, staging / LORA_NAMES[generation], seed + 2)

    return save_model_dir(target, write)


def save_tiny_model(target: Path, seed: int = 0) -> Path:
    """The built-in kinema/tiny model: a tiny LTX-2.5 repo."""
    return save_tiny_repo("2.5", target, seed)
