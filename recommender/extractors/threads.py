"""The intra-op thread count of the extractors' tensor library (torch), for the service's compute
lanes, which must not import torch themselves. Without torch (the lexicon alone) there is nothing to
set."""

from __future__ import annotations

import sys


def intra_op_threads() -> int | None:
    """torch's intra-op thread count of the calling thread (its default honours OMP_NUM_THREADS and
    counts physical cores); None without torch."""
    try:
        import torch
    except ImportError:
        return None
    return int(torch.get_num_threads())


def use_intra_op_threads(n: int) -> None:
    """Run the calling thread's model calls on ``n`` intra-op threads (torch's setting is per thread).
    Nothing to set while torch is not imported: no model that uses it is loaded."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


__all__ = ["intra_op_threads", "use_intra_op_threads"]
