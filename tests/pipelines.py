"""Tiny random diffusers pipelines in the real on-disk layout (`save_pretrained`), built offline:
PixArt-Σ (T5 encoder, a sentencepiece tokenizer trained here), Stable Diffusion (CLIP text model, a
BPE tokenizer trained here) and an unconditional DDIM UNet. Weights are scaled so that the prompt,
not only the seed, shapes each image."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

WORDS = [
    "a",
    "an",
    "the",
    "photo",
    "painting",
    "watercolor",
    "portrait",
    "of",
    "red",
    "blue",
    "green",
    "yellow",
    "cat",
    "dog",
    "house",
    "tree",
    "car",
    "boat",
    "bird",
    "sunset",
    "night",
    "morning",
    "over",
    "under",
    "near",
    "sea",
    "mountain",
    "city",
    "forest",
    "river",
    "sky",
]
# Each prompt's words in the training corpus, so the tokenizers know every one of them.
CORPUS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(9)) for i in range(300)]


def t5_tokenizer():
    """A T5 (unigram) tokenizer from a sentencepiece model trained on CORPUS, as transformers loads one."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=proto, vocab_size=80, hard_vocab_limit=False,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", minloglevel=2,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def clip_tokenizer(max_length: int = 20):
    """A CLIP (byte-level BPE, `</w>` word ends) tokenizer trained on CORPUS with `tokenizers`."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    bpe.train_from_iterator(CORPUS, trainer)
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    return CLIPTokenizer(vocab=spec["vocab"], merges=merges, model_max_length=max_length)


def tiny_vae(levels: int, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8,) * levels, layers_per_block=1, norm_num_groups=4, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
    ).eval()  # fmt: skip


def _scale(module: torch.nn.Module, factor: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(factor)


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
    _scale(encoder.shared, 8.0)  # T5's init keeps token embeddings near 0: make words differ
    transformer = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=32, sample_size=32, patch_size=2, caption_channels=32, norm_num_groups=8,
    ).eval()  # fmt: skip
    for block in transformer.transformer_blocks:
        _scale(block.attn2, 5.0)  # the cross-attention carries the prompt
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
    _scale(text_encoder.get_input_embeddings(), 20.0)
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            _scale(module, 4.0)  # the cross-attention carries the prompt
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


def reference_images(model: Path, rows: list[dict], settings: dict) -> list:
    """The contract's oracle: the diffusers pipeline class from model_index.json, loaded with
    from_pretrained, called once per row with that row's own CPU generator. float [H, W, 3] each."""
    import diffusers

    index = json.loads((model / "model_index.json").read_text())
    pipe = getattr(diffusers, index["_class_name"]).from_pretrained(model)
    if settings.get("sampler"):
        names = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm-solver": "DPMSolverMultistepScheduler",
                 "euler": "EulerDiscreteScheduler"}  # fmt: skip
        pipe.scheduler = getattr(diffusers, names[settings["sampler"]]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = []
    for row in rows:
        kwargs = {
            "generator": torch.Generator("cpu").manual_seed(row["seed"]),
            "num_inference_steps": settings["steps"],
            "output_type": "np",
        }
        if "eta" in settings:
            kwargs["eta"] = settings["eta"]
        if "prompt" in row:
            kwargs |= {"prompt": row["prompt"], "guidance_scale": settings["cfg_scale"]}
            kwargs |= {k: settings[k] for k in ("height", "width", "max_sequence_length") if k in settings}
            if row.get("negative_prompt") is not None:
                kwargs["negative_prompt"] = row["negative_prompt"]
        out.append(pipe(**kwargs).images[0])
    return out
