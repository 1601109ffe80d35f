"""A tiny random text encoder folder (BERT + word-level fast tokenizer) for tests: nothing downloads."""

from __future__ import annotations

from pathlib import Path

from mmgen.text_encoders import caption_words, write_word_level_bert

__all__ = ["caption_words", "make_tiny_text_encoder"]


def make_tiny_text_encoder(folder: str | Path, *, seed: int = 0) -> Path:
    """Save a 1-layer BERT (hidden 32, 2 heads, intermediate 64) over the shapes caption words into ``folder``."""
    return write_word_level_bert(folder, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=seed)
