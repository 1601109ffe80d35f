"""Tiny builders shared by the pipeline tests: tokenizers, conditioners, pipelines, seeds. Nothing downloads.

Every builder seeds torch itself, so a test gets the same random components each time it builds them.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from diffusers.utils import dynamic_modules_utils

from mmgen.conditioning import ByteTextConditioner, ByteTextConditionerConfig, ClassConditioner, ClassConditionerConfig
from mmgen.generation import teacher_hidden
from tokenizers_visual import (
    FlexImageTokenizer,
    FlexImageTokenizerConfig,
    KLConfig,
    KLImageTokenizer,
    MultiScaleVQConfig,
    MultiScaleVQTokenizer,
    VQConfig,
    VQImageTokenizer,
)

IMAGE_SIZE = 16
DIM = 32
GPT_SIZE = {"dim": DIM, "n_layers": 1, "n_heads": 2}
NUM_CLASSES = 5
TEXT_MAX_LEN = 16


# ---- tokenizers (16x16 images) -----------------------------------------------------------------
def vq_tokenizer(*, codebook_size: int = 32, codebook_dim: int = 4) -> VQImageTokenizer:
    """A 4x4 grid of ids."""
    torch.manual_seed(0)
    return VQImageTokenizer(VQConfig(image_size=IMAGE_SIZE, downsample=4, channels=8, channel_mult=[1, 1, 1],
                                     z_channels=8, codebook_size=codebook_size, codebook_dim=codebook_dim)).eval()


def flex_tokenizer(*, num_tokens: int = 8, fsq_levels: tuple[int, ...] = (4, 4)) -> FlexImageTokenizer:
    """A prefix-decodable 1D sequence of ``num_tokens`` ids (codebook ``prod(fsq_levels)``)."""
    torch.manual_seed(0)
    return FlexImageTokenizer(FlexImageTokenizerConfig(
        image_size=IMAGE_SIZE, patch_size=4, num_tokens=num_tokens, fsq_levels=list(fsq_levels),
        enc_dim=16, enc_layers=1, enc_heads=2, dec_dim=16, dec_layers=1, dec_heads=2, mlp_ratio=2.0,
    )).eval()


def multiscale_tokenizer(*, patch_nums: tuple[int, ...] = (1, 2, 4), codebook_size: int = 32,
                         codebook_dim: int = 4) -> MultiScaleVQTokenizer:
    """A VAR pyramid of ``pn x pn`` id maps."""
    torch.manual_seed(0)
    return MultiScaleVQTokenizer(MultiScaleVQConfig(
        image_size=IMAGE_SIZE, channels=8, channel_mult=(1, 1, 1), codebook_size=codebook_size,
        codebook_dim=codebook_dim, patch_nums=patch_nums, share_quant_resi=0,
    )).eval()


def kl_tokenizer(*, latent_dim: int = 4) -> KLImageTokenizer:
    """A 4x4 grid of continuous latents."""
    torch.manual_seed(0)
    return KLImageTokenizer(KLConfig(image_size=IMAGE_SIZE, downsample=4, channels=8, channel_mult=[1, 1, 1],
                                     latent_dim=latent_dim)).eval()


# ---- conditioners ------------------------------------------------------------------------------
def _unit_scale(table: torch.nn.Embedding | None) -> None:
    """Condition tables at unit scale: as after training, the condition visibly steers samples."""
    if table is not None:
        torch.nn.init.normal_(table.weight, std=1.0)


def class_conditioner(*, num_classes: int = NUM_CLASSES, adaln_dim: int = 0, prefix: bool = True) -> ClassConditioner:
    torch.manual_seed(2)
    conditioner = ClassConditioner(ClassConditionerConfig(dim=DIM, num_classes=num_classes, adaln_dim=adaln_dim, prefix=prefix))
    _unit_scale(conditioner.embedding)
    _unit_scale(conditioner.adaln_embedding)
    return conditioner


def text_conditioner(*, max_len: int = TEXT_MAX_LEN, adaln_dim: int = 0) -> ByteTextConditioner:
    torch.manual_seed(2)
    conditioner = ByteTextConditioner(ByteTextConditionerConfig(dim=DIM, max_len=max_len, adaln_dim=adaln_dim))
    _unit_scale(conditioner.embedding)
    return conditioner


# ---- pipelines ---------------------------------------------------------------------------------
def build(pipeline_class: type, tokenizer: Any, conditioner: Any = None, *, gpt: dict[str, Any] | None = None,
          head: Any = None, **config: Any) -> Any:
    """A fresh, quiet ``pipeline_class.from_tokenizer`` pipeline with a one-layer GPT (class-conditional by default)."""
    conditioner = class_conditioner() if conditioner is None else conditioner
    torch.manual_seed(1)
    pipe = pipeline_class.from_tokenizer(tokenizer, conditioner=conditioner, gpt={**GPT_SIZE, **(gpt or {})}, head=head, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trainable_parameters(pipe: Any) -> Iterator[torch.nn.Parameter]:
    """What a trainer optimises: GPT, head and conditioner (the tokenizer is frozen)."""
    return itertools.chain(pipe.gpt.parameters(), pipe.head.parameters(), pipe.conditioner.parameters())


def sequence_of(pipe: Any, tokens: Any) -> torch.Tensor:
    """A call's native output ``tokens`` as the GPT's sequence (what ``pipe.tokenize`` gives for data)."""
    return pipe.to_sequence(pipe.tokenizer.to_positions(tokens))


def teacher_forced_hidden(pipe: Any, seq: torch.Tensor, **condition: Any) -> torch.Tensor:
    """Hidden states ``[B, L, dim]`` of one uncached forward over ``[prefix | inputs of seq]`` (training's forward)."""
    program = pipe.program()
    cond = pipe.conditioner.training_condition(batch_size=seq.shape[0], cond_drop_prob=0.0, **condition)
    teacher = program.teacher(seq)
    return teacher_hidden(pipe.gpt, cond, teacher.inputs_BLD, teacher.layout)


def count_gpt_forwards(pipe: Any) -> list[int]:
    """Wrap the GPT trunk; the returned list gets each call's sequence length."""
    lengths: list[int] = []
    trunk = pipe.gpt.hidden_states

    def counted(x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        lengths.append(x.shape[1])
        return trunk(x, **kwargs)

    pipe.gpt.hidden_states = counted
    return lengths


# ---- data and seeds ----------------------------------------------------------------------------
def images(batch_size: int = 4, *, seed: int = 3) -> torch.Tensor:
    """Random images ``[B, 3, 16, 16]`` in [-1, 1]."""
    return torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gens(*seeds: int) -> list[torch.Generator]:
    return [gen(s) for s in seeds]


@pytest.fixture
def modules_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Send diffusers' dynamic-module copies (``trust_remote_code``) to tmp_path.

    diffusers reads HF_MODULES_CACHE from the environment once, at import, into
    ``dynamic_modules_utils``; setting the variable now would change nothing, so patch that constant
    (and sys.path, which the loader appends the cache folder to).
    """
    cache = tmp_path / "hf_modules"
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return cache
