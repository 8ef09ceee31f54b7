"""seqba: Batch Augmentation (Hoffer et al., CVPR 2020) for sequence and image models.

The BA core needs only torch and numpy::

    from seqba import (FixedSizeBatchSampler, RepeatBatchSampler, TokenBudgetBatchSampler, repeat_batch,
                       repeat_streams)
"""
from seqba.repeat import repeat_streams
from seqba.repeat import RepeatBatchSampler, repeat_batch
from seqba.samplers import FixedSizeBatchSampler, TokenBudgetBatchSampler

__all__ = ["FixedSizeBatchSampler", "RepeatBatchSampler", "TokenBudgetBatchSampler", "repeat_batch", "repeat_streams"]
__version__ = "0.1.0"
