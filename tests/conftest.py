"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Run a test of many tiny tensor ops on one thread: faster, and steady when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
