"""BA in other people's training loops: Accelerate, Hugging Face ``transformers.Trainer``, timm-style loaders.

Each submodule imports its framework on import, so import the one you need; ``import seqba`` stays torch + numpy.

* :mod:`seqba.integrations.accelerate` -- ``prepare_data_loader``: device placement without a second sharding of
  seqba's rank-aware batch samplers.
* :mod:`seqba.integrations.transformers` -- ``BATrainer`` / ``BatchAugmentationMixin`` for ``transformers.Trainer``
  (``pip install seqba[hf]``).

Image loaders in the style of timm / DeiT need no integration module: ``FixedSizeBatchSampler`` +
``RepeatBatchSampler`` from ``seqba`` (see the README's "Integrations" section).
"""
