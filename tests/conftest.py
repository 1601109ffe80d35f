"""Shared fixtures."""

from pathlib import Path

import pytest
import torch
from training_fixtures import VQ_FIELDS

from tokenizers_visual import VQConfig, VQImageTokenizer


@pytest.fixture
def one_torch_thread():
    """Run a test of many tiny tensor ops on one thread: faster, and steady when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained-tokenizer folder (random weights) for the trainer tests' generator configs to point at."""
    folder = tmp_path_factory.mktemp("tokenizer")
    torch.manual_seed(0)
    VQImageTokenizer(VQConfig(**VQ_FIELDS)).save_pretrained(str(folder))
    return folder
