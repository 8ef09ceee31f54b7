"""The Hugging Face causal-LM route (seqba.models.hf_causal_lm) on a tiny GPT-2 config written to tmp_path: built
offline, its loss is the native model's per-token quantity, saved weights load back, bad input is a ConfigError.
"""
import json
import socket
import sys

import pytest
import torch
import torch.nn.functional as F

from seqba.errors import ConfigError
from seqba.models.fork import Fork
from seqba.models.hf_causal_lm import build_hf_causal_lm
from seqba.models.transformer_lm import TransformerLM

transformers = pytest.importorskip("transformers")

V, T = 50, 12
GPT2 = dict(model_type="gpt2", vocab_size=V, n_positions=32, n_embd=16, n_layer=2, n_head=2, n_inner=64,
            activation_function="gelu", bos_token_id=0, eos_token_id=0, layer_norm_epsilon=1e-5)


@pytest.fixture
def offline(monkeypatch):
    """Any network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _write_config(folder, **overrides) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**GPT2, **overrides}))


def _tokens(b: int = 3) -> torch.Tensor:
    return torch.randint(0, V, (b, T), generator=torch.Generator().manual_seed(0))


def test_builds_offline_from_a_folder_or_a_file(tmp_path, offline):
    _write_config(tmp_path / "cfg")
    (tmp_path / "gpt2_tiny.json").write_text(json.dumps(GPT2))
    for path in (tmp_path / "cfg", tmp_path / "cfg" / "config.json", tmp_path / "gpt2_tiny.json"):
        torch.manual_seed(0)
        model = build_hf_causal_lm(path)
        assert model.training and (model.num_layers, model.vocab_size, model.max_positions) == (2, V, 32)
        logits = model(_tokens())
        assert logits.shape == (3, T, V) and logits.dtype == torch.float32
    with pytest.raises(ValueError, match="fork"):
        model(_tokens(), Fork(1, 2))


def test_loss_is_the_per_token_mean_hf_computes(tmp_path):
    """Mean over the B·(T-1) next-token predictions of -log softmax(logits)[target]: the hand computation, HF's
    ``labels=`` loss (which shifts labels left by one inside the model) and the same formula on the logits agree."""
    _write_config(tmp_path)
    model = build_hf_causal_lm(tmp_path).eval()
    tokens = _tokens()
    logits = model(tokens)
    hand = -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1).mean()
    hf = model.model(input_ids=tokens, labels=tokens).loss
    torch.testing.assert_close(hand, hf)
    torch.testing.assert_close(F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1)), hf)


def _gpt2_state_dict(native: TransformerLM) -> dict:
    """The native model's weights under GPT-2's names (Conv1D weights are (in, out): transposed)."""
    sd = {"transformer.wte.weight": native.embed.weight, "transformer.wpe.weight": native.pos_embed.weight,
          "transformer.ln_f.weight": native.norm.weight, "transformer.ln_f.bias": native.norm.bias}
    for i, b in enumerate(native.blocks):
        names = {"ln_1": b.attn_norm, "ln_2": b.mlp_norm, "attn.c_attn": b.attn.qkv_proj,
                 "attn.c_proj": b.attn.out_proj, "mlp.c_fc": b.fc1, "mlp.c_proj": b.fc2}
        for name, module in names.items():
            conv = isinstance(module, torch.nn.Linear)
            sd[f"transformer.h.{i}.{name}.weight"] = module.weight.T if conv else module.weight
            sd[f"transformer.h.{i}.{name}.bias"] = module.bias
    return {k: v.detach().clone() for k, v in sd.items()}


def test_native_model_is_gpt2_with_the_same_weights(tmp_path):
    """``model.arch: transformer`` (learned positions, bias, exact GELU) and GPT-2 through ``model.arch: hf`` compute
    the same logits from the same weights, so their losses are one quantity."""
    _write_config(tmp_path)
    hf = build_hf_causal_lm(tmp_path).eval()
    native = TransformerLM(V, d_model=16, num_layers=2, num_heads=2, ffn_dim=64, max_positions=32).eval()
    result = hf.model.load_state_dict(_gpt2_state_dict(native), strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}  # tied to wte
    tokens = _tokens()
    torch.testing.assert_close(hf(tokens), native(tokens), rtol=1e-5, atol=1e-5)


def test_pretrained_weights_load_back(tmp_path, offline):
    _write_config(tmp_path / "cfg", resid_pdrop=0.0)
    torch.manual_seed(0)
    trained = build_hf_causal_lm(tmp_path / "cfg")
    with torch.no_grad():
        trained.model.transformer.h[0].mlp.c_fc.bias.add_(0.5)  # not the init: the weights must come from disk
    trained.model.save_pretrained(tmp_path / "weights")
    torch.manual_seed(1)
    loaded = build_hf_causal_lm(tmp_path / "cfg", tmp_path / "weights")
    assert loaded.training
    torch.testing.assert_close(loaded.eval()(_tokens()), trained.eval()(_tokens()), rtol=0, atol=0)
    assert loaded.model.config.resid_pdrop == 0.0  # the hf_config's fields, the saved weights

    _write_config(tmp_path / "deeper", n_layer=3)
    with pytest.raises(ConfigError, match="do not fit") as info:
        build_hf_causal_lm(tmp_path / "deeper", tmp_path / "weights")
    assert "missing keys" in str(info.value) and "\n" not in str(info.value)


def test_bad_paths_are_config_errors(tmp_path):
    _write_config(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "unknown.json").write_text(json.dumps({"model_type": "no_such_model"}))
    (tmp_path / "t5.json").write_text(json.dumps({"model_type": "t5", "vocab_size": V, "d_model": 8}))
    cases = {tmp_path / "missing": "no such file", tmp_path / "empty": "no config.json",
             tmp_path / "broken.json": "broken.json", tmp_path / "unknown.json": "unknown.json",
             tmp_path / "t5.json": "t5.json"}
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            build_hf_causal_lm(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="hf_pretrained"):
        build_hf_causal_lm(tmp_path / "good", tmp_path / "no_weights")
    with pytest.raises(ConfigError, match="hf_pretrained"):
        build_hf_causal_lm(tmp_path / "good", tmp_path / "empty")


def test_without_transformers_one_line_says_how_to_install(tmp_path, monkeypatch):
    _write_config(tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ConfigError, match=r"pip install seqba\[hf\]") as info:
        build_hf_causal_lm(tmp_path)
    assert "\n" not in str(info.value)
