"""Service-level batching: one batcher task per endpoint with ``batch_size > 1``."""

from ._batcher import Batcher as Batcher
from ._batcher import merge_one as merge_one
from ._batcher import split_one as split_one

__all__ = ["Batcher", "merge_one", "split_one"]
