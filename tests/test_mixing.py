"""lib.mixing: LoRA mixing alpha * theta_A + beta * theta_B through peft / diffusers (DRaFT Sec. 5.3, Fig. 7 right)
equals the network with weights W + alpha dW_A + beta dW_B computed by hand from each adapter's A, B and scaling."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from lib.errors import ConfigError
from lib.mixing import add_named_adapter, adapter_names, lora_mix, mixing_grid

TOL = 1e-6
# peft warns on every second adapter injected into one module; two adapters are the point here
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


def mlp() -> torch.nn.Module:
    """A small float64 MLP (the toy denoiser's shape: Linear layers with a nonlinearity between them)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.SiLU(), torch.nn.Linear(16, 16), torch.nn.SiLU(),
                               torch.nn.Linear(16, 3)).double()


# two adapters of different rank and alpha, so a mixed-up scaling shows; random B (init_lora_weights=False)
CFG_A = dict(r=2, lora_alpha=4, init_lora_weights=False)  # s_A = 2
CFG_B = dict(r=3, lora_alpha=3, init_lora_weights=False)  # s_B = 1


def by_hand(base: torch.nn.Module, adapted: torch.nn.Module, weights: dict[str, float]) -> torch.nn.Module:
    """A plain copy of `base` whose adapted Linear layers hold W + sum_k w_k (lora_alpha_k / r_k) B_k A_k."""
    ref = copy.deepcopy(base)
    plain = dict(ref.named_modules())
    for name, layer in adapted.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        target = plain[name]
        assert isinstance(target, torch.nn.Linear)
        with torch.no_grad():
            for a, w in weights.items():
                if a in layer.lora_A:
                    s = layer.lora_alpha[a] / layer.r[a]
                    target.weight += w * s * (layer.lora_B[a].weight @ layer.lora_A[a].weight)  # (out, r) @ (r, in)
    return ref


def two_adapter_mlp():
    base = mlp()
    model = copy.deepcopy(base)
    torch.manual_seed(1)
    inject_adapter_in_model(LoraConfig(target_modules=["0", "2", "4"], **CFG_A), model, adapter_name="A")
    inject_adapter_in_model(LoraConfig(target_modules=["0", "2"], **CFG_B), model, adapter_name="B")  # B skips "4"
    model.double()
    return base, model


def layer_state(model):
    return [(list(m.active_adapters), m.disable_adapters, dict(m.scaling), [p.requires_grad for p in m.parameters()])
            for m in model.modules() if isinstance(m, LoraLayer)]


def test_mixing_grid_is_drafts_grid():
    g = mixing_grid(0.25)
    assert len(g) == 25 and g[0] == (0.0, 0.0) and g[-1] == (1.0, 1.0) and (0.75, 0.25) in g
    assert {a for a, _ in g} == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert mixing_grid(1) == ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0))
    for bad in (0.3, 0, -0.5, 2.0):
        with pytest.raises(ConfigError, match="divides 1"):
            mixing_grid(bad, key="sweep.lora_mix_step")


@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.25, 0.75), (1.0, 1.0), (0.5, -0.5)])
def test_mix_equals_hand_merged_weights_on_an_mlp(alpha, beta):
    base, model = two_adapter_mlp()
    assert adapter_names(model) == ["A", "B"]
    x = torch.randn(7, 5, dtype=torch.float64)
    before = layer_state(model)
    out0 = model(x)
    with torch.no_grad(), lora_mix(model, {"A": alpha, "B": beta}):
        mixed = model(x)
    ref = by_hand(base, model, {"A": alpha, "B": beta})(x)
    assert (mixed - ref).abs().max().item() < TOL
    assert layer_state(model) == before  # active adapters, enabled flag, scales and requires_grad restored
    assert torch.equal(model(x), out0)


def test_corners_are_base_and_each_adapter_alone():
    base, model = two_adapter_mlp()
    x = torch.randn(7, 5, dtype=torch.float64)
    with torch.no_grad():
        with lora_mix(model, {"A": 0.0, "B": 0.0}):
            assert torch.equal(model(x), base(x))  # no adapter active: exactly the base network
        for layer in model.modules():
            if isinstance(layer, LoraLayer):
                layer.set_adapter(["A"])
        alone = model(x)  # peft's own single-adapter forward
        with lora_mix(model, {"A": 1.0, "B": 0.0}):
            assert torch.equal(model(x), alone)
        with lora_mix(model, {"A": 1.0}):
            assert torch.equal(model(x), alone)


def test_mix_restores_a_disabled_model_and_refuses_bad_input():
    _, model = two_adapter_mlp()
    x = torch.randn(3, 5, dtype=torch.float64)
    for layer in model.modules():
        if isinstance(layer, LoraLayer):
            layer.enable_adapters(False)
    before = layer_state(model)
    with torch.no_grad(), lora_mix(model, {"A": 0.5, "B": 0.5}):
        pass
    assert layer_state(model) == before
    with pytest.raises(ValueError, match="adapter 'C' is not on"):
        with lora_mix(model, {"C": 1.0}):
            pass
    with pytest.raises(ValueError, match="not a finite number"):
        with lora_mix(model, {"A": float("nan")}):
            pass
    with pytest.raises(RuntimeError, match="boom"), lora_mix(model, {"A": 1.0}):
        raise RuntimeError("boom")
    assert layer_state(model) == before
    with pytest.raises(ValueError, match="no peft LoRA layers"):
        with lora_mix(mlp(), {"A": 1.0}):
            pass
    model(x)


def test_add_named_adapter_loads_a_trained_adapter_under_a_new_name():
    """Two runs each saved their adapter as peft's 'default'; both load into one model as 'A' and 'B'."""
    base = mlp()
    runs = []
    for seed in (3, 4):
        m = copy.deepcopy(base)
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(target_modules=["0", "2", "4"], **CFG_A), m)
        runs.append((m.double(), get_peft_model_state_dict(m)))
    model = copy.deepcopy(base)
    cfg = LoraConfig(target_modules=["0", "2", "4"], r=2, lora_alpha=4)
    add_named_adapter(model, "A", cfg, runs[0][1])
    add_named_adapter(model, "B", cfg, runs[1][1])
    model.double()
    assert adapter_names(model) == ["A", "B"]
    assert all(m.active_adapters == ["A"] for m in model.modules() if isinstance(m, LoraLayer))  # unchanged by B
    x = torch.randn(4, 5, dtype=torch.float64)
    with torch.no_grad():
        with lora_mix(model, {"A": 1.0, "B": 0.0}):
            assert (model(x) - runs[0][0](x)).abs().max().item() < TOL
        with lora_mix(model, {"A": 0.0, "B": 1.0}):
            assert (model(x) - runs[1][0](x)).abs().max().item() < TOL
    with pytest.raises(ValueError, match="already on"):
        add_named_adapter(model, "A", cfg)
    partial = {k: v for k, v in runs[0][1].items() if not k.startswith("4.")}
    with pytest.raises(ValueError, match="2 LoRA weights are not in the state"):
        add_named_adapter(copy.deepcopy(base), "A", cfg, partial)
    with pytest.raises(ValueError, match="1 state keys match no layer"):
        add_named_adapter(copy.deepcopy(base), "A", cfg, {**runs[0][1], "9.lora_A.weight": torch.zeros(2, 3)})


def tiny_unet():
    """The tiny SD UNet of lib.domains.sd.pipelines.tiny_pipeline (float64 here for a tight tolerance)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, cross_attention_dim=8,
                                norm_num_groups=2, sample_size=8, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).double()


def test_mix_equals_hand_merged_weights_on_a_diffusers_unet():
    base = tiny_unet()
    unet = copy.deepcopy(base)
    torch.manual_seed(1)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    unet.add_adapter(LoraConfig(target_modules=targets, **CFG_A), adapter_name="A")
    unet.add_adapter(LoraConfig(target_modules=targets, **CFG_B), adapter_name="B")
    unet.double()
    x, t, ctx = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.tensor([10, 500]), torch.randn(2, 3, 8,
                                                                                                   dtype=torch.float64)
    before = layer_state(unet)
    weights = {"A": 0.75, "B": 0.25}
    with torch.no_grad():
        with lora_mix(unet, weights):
            assert unet.active_adapters() == ["A", "B"]  # diffusers' own view of the mix
            mixed = unet(x, t, ctx).sample
        ref = by_hand(base, unet, weights)(x, t, ctx).sample
        assert (mixed - ref).abs().max().item() < TOL
        assert (mixed - base(x, t, ctx).sample).abs().max().item() > 1e-3  # the adapters do change the output
        with lora_mix(unet, {"A": 0.0, "B": 0.0}):
            assert (unet(x, t, ctx).sample - base(x, t, ctx).sample).abs().max().item() < TOL
    assert layer_state(unet) == before
    # B's trained weights load into a fresh UNet under another name (diffusers' add_adapter + peft's state dict)
    other = copy.deepcopy(base)
    add_named_adapter(other, "reward2", LoraConfig(target_modules=targets, r=3, lora_alpha=3),
                      get_peft_model_state_dict(unet, adapter_name="B"))
    other.double()
    assert other.active_adapters() == ["reward2"]
    with torch.no_grad(), lora_mix(other, {"reward2": 0.5}), lora_mix(unet, {"A": 0.0, "B": 0.5}):
        assert (other(x, t, ctx).sample - unet(x, t, ctx).sample).abs().max().item() < TOL
