"""Small text encoders built in code for a closed vocabulary (the built-in captions): nothing downloads.

A :class:`~mmgen.conditioning.TextEncoderConditioner` usually wraps a pretrained encoder (T5, CLIP,
BERT) from a folder or the hub. For the built-in data, whose captions use a few dozen words, a
randomly initialised BERT over exactly those words — trained together with the generator — is the
offline stand-in: :func:`write_word_level_bert` writes one to a folder that ``from_encoder`` loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from .data import NUM_CLASSES, caption
from .tokens import _check_positive

__all__ = ["SPECIAL_TOKENS", "caption_words", "write_word_level_bert"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def caption_words() -> list[str]:
    """The distinct words of all shapes captions, sorted."""
    return sorted({word for c in range(NUM_CLASSES) for word in caption(c).split()})


def write_word_level_bert(folder: str | Path, *, words: Iterable[str] | None = None, hidden_size: int = 32, num_layers: int = 1,
                          num_heads: int = 2, intermediate_size: int | None = None, max_positions: int = 32, seed: int = 0) -> Path:
    """Save a random BERT and its word-level fast tokenizer (``words`` plus BERT's special tokens) into ``folder``.

    ``words`` defaults to the shapes captions' words, so every caption tokenizes without unknown words.
    Returns the folder; ``TextEncoderConditioner.from_encoder(folder, local_files_only=True, ...)`` loads it.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = Path(folder)
    vocab_words = caption_words() if words is None else list(words)
    if isinstance(words, str) or not vocab_words or not all(isinstance(w, str) and len(w.split()) == 1 for w in vocab_words):
        raise ValueError(f"words must be a non-empty list of single words (the tokenizer splits on whitespace), got {words!r}")
    vocab_words = sorted(set(vocab_words))
    for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers), ("num_heads", num_heads),
                        ("max_positions", max_positions), ("intermediate_size", intermediate_size or 2 * hidden_size)):
        _check_positive(name, value)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *vocab_words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
                        intermediate_size=intermediate_size or 2 * hidden_size, max_position_embeddings=max_positions,
                        pad_token_id=vocab["[PAD]"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(folder)
    return folder
