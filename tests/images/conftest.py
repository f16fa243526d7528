"""Fixtures of the image-side tests."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~100× faster on one thread than on two contended ones (a shared 2-core machine); the
    caller's thread count is restored after each module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
