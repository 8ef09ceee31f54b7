"""seqba: Batch Augmentation (Hoffer et al., CVPR 2020) for sequence and image models.

The BA core needs only torch and numpy::

    from seqba import RepeatBatchSampler, TokenBudgetBatchSampler, repeat_batch
"""
from seqba.samplers import RepeatBatchSampler, TokenBudgetBatchSampler, repeat_batch

__all__ = ["RepeatBatchSampler", "TokenBudgetBatchSampler", "repeat_batch"]
__version__ = "0.1.0"
