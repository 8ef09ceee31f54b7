"""The language-modelling task's ``model:`` section: one dataclass for every architecture (``model.arch``).

``model.arch`` picks the network; the other keys are the fields of that architecture's own config dataclass, which
stays beside its model::

    awd_lstm     seqba.models.awd_lstm.AWDLSTMConfig          (the default: recipes without ``arch`` are AWD-LSTMs)
    transformer  seqba.models.transformer_lm.TransformerLMConfig   (GPT-style decoder, nanoGPT ``model.py``)
    hf           hf_config (a transformers config.json or its folder), hf_pretrained (optional: weights on disk)

A field of another architecture is refused with one line naming it and the chosen architecture's fields (as an
unknown key is), so ``model.d_model`` in an AWD-LSTM recipe is an error, not a silently ignored key. Every field
defaults to ``None``, meaning "the architecture's default": :class:`LMModelConfig` fills the chosen architecture's
fields from its dataclass at load, so the saved config (``config.yaml``, checkpoints) holds the values the run used,
and the other architectures' fields stay ``None``. Shared names (``num_layers``, ``dropout``) take the default of
the chosen architecture.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from torch import nn

from seqba.errors import ConfigError, FieldError
from seqba.models.awd_lstm import AWDLSTM, AWDLSTMConfig
from seqba.models.transformer_lm import TransformerLM, TransformerLMConfig

__all__ = ["ARCHS", "LMModelConfig", "build_lm_model", "no_decay_groups"]

#: the fields of each ``model.arch`` (besides ``arch``)
ARCHS: dict[str, tuple[str, ...]] = {
    "awd_lstm": tuple(f.name for f in dataclasses.fields(AWDLSTMConfig)),
    "transformer": tuple(f.name for f in dataclasses.fields(TransformerLMConfig)),
    "hf": ("hf_config", "hf_pretrained"),
}
_CONFIGS = {"awd_lstm": AWDLSTMConfig, "transformer": TransformerLMConfig}


@dataclass
class LMModelConfig:
    """``model:`` of a language-modelling recipe: ``arch`` and the fields of that architecture (module docstring).

    Attributes:
        arch: ``awd_lstm`` (:class:`~seqba.models.awd_lstm.AWDLSTMConfig`), ``transformer``
            (:class:`~seqba.models.transformer_lm.TransformerLMConfig`) or ``hf`` (any ``transformers``
            ``AutoModelForCausalLM``: :func:`seqba.models.hf_causal_lm.build_hf_causal_lm`).
        emb_size, hidden_size, dropouth, dropouti, dropoute, wdrop, tie_weights, per_copy_masks: the AWD-LSTM's.
        d_model, num_heads, ffn_dim, attention_dropout, max_positions, positions, rotary_base, bias: the
            Transformer's.
        num_layers, dropout: both (each architecture's meaning and default).
        hf_config: a ``config.json`` (any file name) or a folder holding one, read from local files only;
            relative paths are read from the working directory. Required for ``hf``.
        hf_pretrained: a folder written by ``save_pretrained`` whose weights initialise the model (never the hub);
            None: the architecture's own random init.

    Raises:
        FieldError: a field that is not the chosen architecture's (naming every such field and the valid ones), a
            missing ``hf_config``, or what the architecture's dataclass raises for a bad value.
    """

    arch: Literal["awd_lstm", "transformer", "hf"] = "awd_lstm"
    # AWD-LSTM (seqba.models.awd_lstm.AWDLSTMConfig)
    emb_size: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    dropout: float | None = None
    dropouth: float | None = None
    dropouti: float | None = None
    dropoute: float | None = None
    wdrop: float | None = None
    tie_weights: bool | None = None
    per_copy_masks: bool | None = None
    # Transformer (seqba.models.transformer_lm.TransformerLMConfig); num_layers and dropout above
    d_model: int | None = None
    num_heads: int | None = None
    ffn_dim: int | None = None
    attention_dropout: float | None = None
    max_positions: int | None = None
    positions: Literal["learned", "rotary"] | None = None
    rotary_base: float | None = None
    bias: bool | None = None
    # Hugging Face (seqba.models.hf_causal_lm.build_hf_causal_lm)
    hf_config: str | None = None
    hf_pretrained: str | None = None

    def __post_init__(self) -> None:
        own = ARCHS[self.arch]
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name != "arch" and getattr(self, f.name) is not None}
        foreign = [name for name in given if name not in own]
        if foreign:
            what = "is not a field" if len(foreign) == 1 else "are not fields"
            raise FieldError(foreign[0], f"{', '.join(foreign)} {what} of model.arch {self.arch}; its fields: "
                                         f"arch, {', '.join(own)}")
        if self.arch == "hf":
            if not self.hf_config:
                raise FieldError("hf_config", "model.arch hf needs model.hf_config: a transformers config.json "
                                              "(or a folder holding one)")
            return
        resolved = _CONFIGS[self.arch](**given)  # the architecture's defaults and checks
        for name in own:
            setattr(self, name, getattr(resolved, name))

    def arch_config(self) -> AWDLSTMConfig | TransformerLMConfig | None:
        """The architecture's own config dataclass (None for ``hf``, whose config is its ``hf_config`` file)."""
        if self.arch == "hf":
            return None
        return _CONFIGS[self.arch](**{name: getattr(self, name) for name in ARCHS[self.arch]})

    @property
    def layers(self) -> int | None:
        """Layers a fork counts (``ba.fork_layer``): LSTM layers or decoder blocks; None for ``hf`` (unknown until
        its config is read)."""
        return None if self.arch == "hf" else self.num_layers


def build_lm_model(model_cfg: LMModelConfig, vocab_size: int, pretrained: bool = True) -> nn.Module:
    """The recipe's language model for a vocabulary of ``vocab_size`` words.

    Args:
        model_cfg: the ``model:`` section.
        vocab_size: V, the corpus dictionary's size.
        pretrained: for ``hf``, load ``hf_pretrained`` when set (False: random init, e.g. before loading a
            checkpoint's weights).

    Returns:
        :class:`~seqba.models.awd_lstm.AWDLSTM` (time-major: ``model(x (T, N), hidden)``),
        :class:`~seqba.models.transformer_lm.TransformerLM` or :class:`~seqba.models.hf_causal_lm.HFCausalLM`
        (``model(tokens (B, T)) -> logits (B, T, V)``).

    Raises:
        ConfigError: ``hf`` without transformers installed, a config or weights it cannot read, or a model whose
            vocabulary is smaller than the corpus's.
    """
    if model_cfg.arch == "awd_lstm":
        return AWDLSTM(vocab_size, model_cfg.arch_config())
    if model_cfg.arch == "transformer":
        return TransformerLM(vocab_size, model_cfg.arch_config())
    from seqba.models.hf_causal_lm import build_hf_causal_lm  # imports transformers

    model = build_hf_causal_lm(model_cfg.hf_config, model_cfg.hf_pretrained if pretrained else None)
    if model.vocab_size < vocab_size:
        raise ConfigError(f"model.hf_config {model_cfg.hf_config}: vocab_size {model.vocab_size} is smaller than "
                          f"the corpus dictionary ({vocab_size} words); set it to {vocab_size}")
    return model


def no_decay_groups(model: nn.Module) -> list[dict]:
    """Two optimizer groups, as nanoGPT's ``configure_optimizers``: matrices (embeddings, Linear weights; dim >= 2)
    get ``optim.weight_decay``, vectors (biases, LayerNorm gains) none (``weight_decay: 0.0``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
