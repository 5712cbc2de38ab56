"""Tokenizers of the real kinds (T5 unigram, CLIP byte-level BPE, Gemma BPE), trained offline on a small
corpus: what the tiny random pipelines of `tiny_pipelines` ship, so that no download is needed."""

from __future__ import annotations

import io
import json

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


def gemma_tokenizer(extra_text: list[str]):
    """A Gemma tokenizer (BPE over `▁`-joined words, `<bos>` first, left padding as Gemma ships it)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False)
    bpe.train_from_iterator([*CORPUS, *extra_text], trainer)
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    return GemmaTokenizer(vocab=spec["vocab"], merges=merges, padding_side="left")
