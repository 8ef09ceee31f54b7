"""Any Hugging Face ``transformers`` causal LM behind the native LM's interface (``model.arch: hf``).

:func:`build_hf_causal_lm` reads a ``config.json`` (or a folder holding one) from local files only and builds
``AutoModelForCausalLM.from_config`` (fresh weights, the architecture's own init), or loads weights saved on disk
with ``save_pretrained`` (``from_pretrained(..., local_files_only=True)``). Nothing is fetched from the hub and no
remote code runs (``trust_remote_code`` stays off). :class:`HFCausalLM` wraps the model so that the trainer sees
what :class:`seqba.models.transformer_lm.TransformerLM` gives: ``forward(tokens (B, T)) -> logits (B, T, V)``,
logits[:, t] predicting token t + 1, and ``num_layers``. The model's dropout is its own (``nn.Dropout``), so BA's
copies (made by the task at the input) differ by its masks; a fork inside the model is not offered.

Shape notation: B = rows, T = window length, V = the model's vocabulary. Needs ``pip install seqba[hf]``.

Tiny CPU run::

    model = build_hf_causal_lm("path/to/gpt2_tiny.json")  # a GPT2Config saved as JSON
    logits = model(torch.randint(0, model.vocab_size, (2, 16)))  # (2, 16, V)
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from seqba.errors import ConfigError
from seqba.models.fork import Fork

__all__ = ["HFCausalLM", "build_hf_causal_lm"]


class HFCausalLM(nn.Module):
    """A ``transformers`` causal LM as ``forward(tokens (B, T)) -> logits (B, T, V)``.

    Args:
        model: a ``PreTrainedModel`` from ``AutoModelForCausalLM``, kept as ``self.model``.

    Attributes:
        num_layers: the config's ``num_hidden_layers`` (GPT-2's ``n_layer``).
        vocab_size: V, rows of the output embedding.
        max_positions: the config's ``max_position_embeddings`` (GPT-2's ``n_positions``), or None if it has none
            (rotary models without a limit).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config = model.config.get_text_config()
        self.num_layers = int(config.num_hidden_layers)
        self.vocab_size = int(model.get_output_embeddings().weight.size(0))
        self.max_positions = getattr(config, "max_position_embeddings", None)

    def forward(self, tokens: Tensor, fork: Fork | None = None) -> Tensor:
        """tokens (B, T) int64 -> logits (B, T, V), floating point in the model's (or autocast's) dtype; no KV
        cache is built.

        Raises:
            ValueError: a ``fork`` (copies inside a Hugging Face model are not offered).
        """
        if fork is not None:
            raise ValueError("model.arch hf does not fork copies inside the model: use ba.fork_layer 0 "
                             "(copies at the input)")
        return self.model(input_ids=tokens, use_cache=False).logits


def _config_error(what: str, path: Path, error: Exception) -> ConfigError:
    lines = str(error).strip().splitlines()
    return ConfigError(f"{what} {path}: {lines[0] if lines else type(error).__name__}")


def build_hf_causal_lm(hf_config: str | Path, hf_pretrained: str | Path | None = None) -> HFCausalLM:
    """The causal LM of a local ``transformers`` config, fresh or with weights from disk.

    Args:
        hf_config: a config JSON file (any name, e.g. ``config.json`` or ``gpt2_small.json``), or a folder holding
            ``config.json``; read with ``AutoConfig.from_pretrained(path, local_files_only=True)``.
        hf_pretrained: a folder written by ``save_pretrained`` (``model.safetensors`` beside its config); its
            weights are loaded into the architecture of ``hf_config`` (whose dropout etc. thereby win over the
            saved config's). None: ``AutoModelForCausalLM.from_config`` initialises the weights.

    Returns:
        :class:`HFCausalLM`, in training mode.

    Raises:
        ConfigError: transformers is not installed (the line says how to install it); a path that does not exist,
            a config that transformers cannot read or that has no causal-LM class, weights that cannot be loaded or
            that leave parameters of ``hf_config``'s model missing (or keys unused).
    """
    try:
        import transformers
    except ImportError:
        raise ConfigError("model.arch hf needs Hugging Face transformers: pip install seqba[hf] "
                          "(or pip install transformers)") from None
    config_path = Path(hf_config)
    if not config_path.exists():
        raise ConfigError(f"hf_config {config_path}: no such file or folder")
    if config_path.is_dir() and not (config_path / "config.json").is_file():
        raise ConfigError(f"hf_config {config_path}: the folder holds no config.json")
    try:
        config = transformers.AutoConfig.from_pretrained(str(config_path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:  # bad JSON, unknown model_type, ...
        raise _config_error("hf_config", config_path, error) from error
    if hf_pretrained is None:
        try:
            model = transformers.AutoModelForCausalLM.from_config(config)
        except ValueError as error:  # "Unrecognized configuration class ... for AutoModelForCausalLM"
            raise _config_error("hf_config", config_path, error) from error
    else:
        weights = Path(hf_pretrained)
        if not weights.is_dir():
            raise ConfigError(f"hf_pretrained {weights}: not a folder written by save_pretrained")
        try:
            model, info = transformers.AutoModelForCausalLM.from_pretrained(
                str(weights), config=config, local_files_only=True, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as error:  # missing files, shape mismatch
            raise _config_error("hf_pretrained", weights, error) from error
        misfits = {kind: sorted(info.get(kind) or ()) for kind in ("missing_keys", "unexpected_keys")}
        if any(misfits.values()):  # transformers only warns; a half-random model is not what was asked for
            said = ", ".join(f"{len(keys)} {kind.replace('_', ' ')} (e.g. {keys[0]})"
                             for kind, keys in misfits.items() if keys)
            raise ConfigError(f"hf_pretrained {weights}: its weights do not fit hf_config {config_path}: {said}")
    model.train()
    return HFCausalLM(model)
