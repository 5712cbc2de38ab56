"""Two pipelines only the generic path runs (Stable Diffusion + PAG, which batches cleanly; CogView4, which
pads prompts to the longest of the batch without a mask), in the real diffusers layout (`save_pretrained`),
built offline; the families the job runs first-class are in dit_worker.checkpoints.tiny_pipelines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from dit_worker.checkpoints.tiny_pipelines import scale_layers, scale_parameters, tiny_vae
from dit_worker.checkpoints.tiny_tokenizers import CORPUS


def save_sd_pag(sd_dir: Path, path: Path) -> Path:
    """Stable Diffusion's components under StableDiffusionPAGPipeline: a class only the generic path runs."""
    shutil.copytree(sd_dir, path)
    index = json.loads((path / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPAGPipeline"
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def save_cogview4(path: Path, seed: int = 0) -> Path:
    """CogView4: GLM encoder (16 hidden), one-layer transformer, 3-level VAE (4x). Its pipeline pads a
    batch's prompts to the longest one (then to a multiple of 16) with no attention mask."""
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import GlmConfig, GlmModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<unk>", "<sop>"]))
    bpe.post_processor = processors.TemplateProcessing(single="<sop> $A", special_tokens=[("<sop>", 2)])  # never empty
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(seed + 1)
    encoder = GlmModel(
        GlmConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8, pad_token_id=0,
        )
    ).eval()  # fmt: skip
    scale_parameters(encoder.embed_tokens, 20.0)
    torch.manual_seed(seed)
    transformer = CogView4Transformer2DModel(
        patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2, out_channels=4,
        text_embed_dim=16, time_embed_dim=8, condition_dim=4, pos_embed_max_size=32, sample_size=16,
        rope_axes_dim=(4, 4),
    ).eval()  # fmt: skip
    scale_layers(transformer, ("text_proj", "attn1.to_v"), 4.0)
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear"
    )
    pipe = CogView4Pipeline(
        tokenizer=tokenizer,
        text_encoder=encoder,
        vae=tiny_vae(3, seed + 4),
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path
