"""Forward-mode differentiation, one thread at a time.

PyTorch's forward-mode AD level is process-wide, not per thread: two threads inside
`forward_ad.dual_level()` at once fail with "Nested forward mode AD is not supported". The
service can warm a model in its loading thread while another fits, so every use goes
through `dual_level()` here, which holds one process-wide lock for the level's lifetime.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from torch.autograd import forward_ad

_LOCK = threading.RLock()


@contextmanager
def dual_level() -> Iterator[None]:
    """`torch.autograd.forward_ad.dual_level()` under the process-wide lock."""
    with _LOCK, forward_ad.dual_level():
        yield


__all__ = ["dual_level"]
