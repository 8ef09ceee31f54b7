"""``optim.optimizer``: Adam with coupled L2, AdamW with decoupled decay (Loshchilov & Hutter 2019), against hand
computations; the Transformer LM's groups (nanoGPT's) exempt vectors, norms and biases, from the decay."""
import math
from pathlib import Path

import pytest
import torch

from seqba import config as config_lib
from seqba.config import OptimConfig
from seqba.errors import ConfigError
from seqba.models.transformer_lm import TransformerLM
from seqba.optim import build_optimizer
from seqba.tasks.lm_models import no_decay_groups


def one_step(optimizer: str, p0: float, grad: float, lr=0.1, wd=0.5, eps=1e-8) -> float:
    param = torch.nn.Parameter(torch.tensor([p0], dtype=torch.float64))
    opt = build_optimizer(OptimConfig(optimizer=optimizer, lr=lr, weight_decay=wd, eps=eps), [{"params": [param]}])
    param.grad = torch.tensor([grad], dtype=torch.float64)
    opt.step()
    return param.item()


@pytest.mark.parametrize("p0,grad", [(2.0, 0.3), (-1.0, -4.0), (0.5, 0.0)])
def test_first_step_against_the_papers(p0, grad):
    """After one step the bias-corrected moments are g and g^2, so Adam moves by lr * g/(|g| + eps): AdamW decays
    the weight first (p (1 - lr wd)) with the raw gradient; Adam folds wd p into the gradient."""
    lr, wd, eps = 0.1, 0.5, 1e-8
    adamw = p0 * (1 - lr * wd) - lr * grad / (abs(grad) + eps)
    g = grad + wd * p0
    adam = p0 - lr * g / (abs(g) + eps)
    assert one_step("adamw", p0, grad) == pytest.approx(adamw, rel=1e-12, abs=1e-12)
    assert one_step("adam", p0, grad) == pytest.approx(adam, rel=1e-12, abs=1e-12)


def test_adamw_decays_only_the_groups_that_ask():
    """A zero gradient: AdamW shrinks each decayed matrix by exactly (1 - lr wd) and leaves the exempt parameters
    (LayerNorm gains and biases: no_decay_groups) as they were."""
    torch.manual_seed(0)
    model = TransformerLM(50, d_model=16, num_layers=2, num_heads=2, ffn_dim=32, max_positions=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = no_decay_groups(model)
    opt = build_optimizer(OptimConfig(optimizer="adamw", lr=0.1, weight_decay=0.5), groups)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    decayed = {id(p) for g in groups if g.get("weight_decay", 0.5) > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed and len(decayed) < len(names)
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.5) if id(p) in decayed else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7, msg=n)
    assert all(p.dim() >= 2 for p in model.parameters() if id(p) in decayed)


def test_unknown_optimizer_names_the_choices():
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "transformer_lm_ptb_m4.yaml"
    with pytest.raises(ConfigError, match="adamw"):
        config_lib.load(recipe, ["optim.optimizer=lamb"])
    assert config_lib.load(recipe, ["optim.optimizer=adamw"]).optim.optimizer == "adamw"
    assert math.isfinite(one_step("adamw", 1.0, 1.0))
