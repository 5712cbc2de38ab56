"""Tiny random diffusers pipelines of each family the job runs (PixArt-Σ, Stable Diffusion, DDIM, SD3, FLUX,
SDXL, Sana), in the real on-disk layout (`save_pretrained`), built offline with tokenizers trained here
(`tiny_tokenizers`). Weights are scaled so that the prompt, not only the seed, shapes each image: a check
that drops the prompt on the way then misses by far.

    save_flux(Path("/tmp/flux"))  # a FluxPipeline directory, loadable with from_pretrained
    FAMILY_BUILDERS["FluxPipeline"]  # the same builder, by pipeline class
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import torch

from dit_worker.checkpoints.tiny_tokenizers import clip_tokenizer, gemma_tokenizer, t5_tokenizer


def tiny_vae(levels: int, seed: int, latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8,) * levels, layers_per_block=1, norm_num_groups=4, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels, **extra,
    ).eval()  # fmt: skip


def scale_parameters(module: torch.nn.Module, factor: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(factor)


def _clip(tokenizer, hidden: int, with_projection: bool, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()
    scale_parameters(model.get_input_embeddings(), 20.0)
    return model


def _t5(tokenizer, d_model: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_ff=2 * d_model, d_kv=16, num_heads=2, num_layers=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )  # fmt: skip
    model = T5EncoderModel(config).eval()
    scale_parameters(model.shared, 8.0)
    return model


def scale_layers(module: torch.nn.Module, names: tuple[str, ...], factor: float) -> None:
    """Scale the layers that mix text into the image, so that the prompt, not only the seed, shapes it."""
    for name, sub in module.named_modules():
        if name.endswith(names):
            scale_parameters(sub, factor)


def save_pixart_sigma(path: Path, seed: int = 0) -> Path:
    """PixArt-Σ: transformer sample_size 32 (its 256-px resolution bins), a 4-level VAE (8x), T5 d_model 32,
    DPM-Solver++ as its scheduler (what PixArt-Σ checkpoints ship)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=16, num_heads=2, num_layers=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )  # fmt: skip
    encoder = T5EncoderModel(config).eval()
    scale_parameters(encoder.shared, 8.0)  # T5's init keeps token embeddings near 0: make words differ
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=32, sample_size=32, patch_size=2, caption_channels=32, norm_num_groups=8,
    ).eval()  # fmt: skip
    for block in transformer.transformer_blocks:
        scale_parameters(block.attn2, 5.0)  # the cross-attention carries the prompt
    pipe = PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=encoder, vae=tiny_vae(4, seed + 1), transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def save_stable_diffusion(path: Path, seed: int = 0) -> Path:
    """Stable Diffusion: a 2-level conditional UNet (8 latents, 16 px), CLIP text model, PNDM scheduler."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()  # fmt: skip
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4,
    ).eval()  # fmt: skip
    scale_parameters(text_encoder.get_input_embeddings(), 20.0)
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            scale_parameters(module, 4.0)  # the cross-attention carries the prompt
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(2, seed + 1), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def save_ddim(path: Path, seed: int = 0) -> Path:
    """Unconditional DDIM on a 2-level UNet2DModel, 16x16 RGB."""
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=3, out_channels=3,
        norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
    ).eval()  # fmt: skip
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(path, safe_serialization=True)
    return path


def save_sd3(path: Path, seed: int = 0, with_t5: bool = True) -> Path:
    """SD3: two CLIP encoders with projection (16 + 16 hidden) and a T5 (32), MMDiT of 2 layers, 3-level VAE
    (4x) with SD3's shift factor, FlowMatch Euler (shift 3); 64x64 by default (sample_size 16)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, tok2, tok3 = clip_tokenizer(77), clip_tokenizer(77), t5_tokenizer()
    te, te2 = _clip(tok, 16, True, seed + 1), _clip(tok2, 16, True, seed + 2)
    te3 = _t5(tok3, 32, seed + 3) if with_t5 else None
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32,
        pos_embed_max_size=32,
    ).eval()  # fmt: skip
    scale_layers(transformer, ("context_embedder", "add_v_proj", "text_embedder"), 4.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(3, seed + 4, shift_factor=0.06, scaling_factor=1.5), text_encoder=te, tokenizer=tok,
        text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=te3, tokenizer_3=tok3 if with_t5 else None,
    )  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def save_flux(path: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """FLUX (dev: guidance embedded; schnell: guidance_embeds False): CLIP (16) + T5 (32), one double and
    one single block, 3-level VAE (4x; latents packed 2x2, so 8 px a token), dynamic-shift FlowMatch Euler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, tok2 = clip_tokenizer(77), t5_tokenizer()
    te, te2 = _clip(tok, 16, False, seed + 1), _t5(tok2, 32, seed + 2)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    ).eval()  # fmt: skip
    scale_layers(transformer, ("context_embedder", "add_v_proj", "text_embedder"), 4.0)
    scale_layers(transformer, ("guidance_embedder",), 6.0)  # the distilled guidance is an input: make it count
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=16, max_image_seq_len=256
    )
    pipe = FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=tiny_vae(3, seed + 4, shift_factor=0.1, scaling_factor=0.4),
        text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2,
    )  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def save_sdxl(path: Path, seed: int = 0) -> Path:
    """SDXL: CLIP (16) + CLIP with projection (16), a 2-level text_time UNet (cross-attention 32), 2-level
    VAE (2x), Euler; force_zeros_for_empty_prompt as SDXL base ships it; 16x16 by default (sample_size 8)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok, tok2 = clip_tokenizer(77), clip_tokenizer(77)
    te, te2 = _clip(tok, 16, False, seed + 1), _clip(tok2, 16, True, seed + 2)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=64,
        cross_attention_dim=32, norm_num_groups=4,
    ).eval()  # fmt: skip
    scale_layers(unet, ("attn2",), 4.0)
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(2, seed + 4), text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2, unet=unet,
        scheduler=EulerDiscreteScheduler(steps_offset=1), force_zeros_for_empty_prompt=True,
    )  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def sana_instruction() -> list[str]:
    """SanaPipeline's default complex_human_instruction, read from its signature (not copied)."""
    from diffusers import SanaPipeline

    return inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default


def save_sana(path: Path, seed: int = 0) -> Path:
    """Sana: Gemma-2 (16 hidden, one layer), linear-attention DiT of 2 layers, a 6-level DC-AE (32x), so its
    512-px resolution bins (transformer sample_size 16) are 16x16 latents; flow DPM-Solver++."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = gemma_tokenizer(sana_instruction())
    torch.manual_seed(seed + 1)
    encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=4096,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()  # fmt: skip
    scale_parameters(encoder.embed_tokens, 2.0)
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
        mlp_ratio=2.5, sample_size=16, patch_size=1, norm_elementwise_affine=False, norm_eps=1e-6,
    ).eval()  # fmt: skip
    scale_layers(transformer, ("attn2",), 8.0)
    torch.manual_seed(seed + 2)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=4, encoder_block_types="ResBlock",
        decoder_block_types="ResBlock", encoder_block_out_channels=(4,) * 6, decoder_block_out_channels=(4,) * 6,
        encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6, encoder_qkv_multiscales=((),) * 6,
        decoder_qkv_multiscales=((),) * 6, upsample_block_type="interpolate", downsample_block_type="Conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41,
    ).eval()  # fmt: skip
    scheduler = DPMSolverMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
    pipe = SanaPipeline(
        tokenizer=tokenizer, text_encoder=encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


# The families `python -m jobs.selfcheck` takes through the job, by pipeline class.
FAMILY_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "PixArtSigmaPipeline": save_pixart_sigma,
    "StableDiffusion3Pipeline": save_sd3,
    "FluxPipeline": save_flux,
    "SanaPipeline": save_sana,
    "StableDiffusionXLPipeline": save_sdxl,
}
