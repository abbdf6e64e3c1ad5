"""lib.domains.sd.multi: weighted reward specs 'pickscore:10,hpsv2:2' (DRaFT Sec. 5.2) and WeightedReward on the
tiny offline rewards."""
from __future__ import annotations

import pytest
import torch

from lib.domains.sd import multi as M
from lib.domains.sd import rewards as R
from lib.domains.sd.compress import JPEGReward
from lib.domains.sd.config import SDConfig
from lib.domains.sd.domain import SDDomain
from lib.errors import ConfigError

PROMPTS = ["a photo of a cat", "an oil painting of a lighthouse at dusk"]


def test_parse_specs():
    assert M.parse_reward_spec("pickscore") == (("pickscore", 1.0),)
    assert M.parse_reward_spec("pickscore:10,hpsv2:2") == (("pickscore", 10.0), ("hpsv2", 2.0))
    assert M.parse_reward_spec(" pickscore : 10 , hpsv2.1:0.5 ") == (("pickscore", 10.0), ("hpsv2.1", 0.5))
    assert M.parse_reward_spec("compressibility:1e-3,clip") == (("compressibility", 1e-3), ("clip", 1.0))
    assert M.spec_string(M.parse_reward_spec("pickscore:10,hpsv2:2.5")) == "pickscore:10,hpsv2:2.5"
    assert M.spec_string(M.parse_reward_spec("hpsv2:1")) == "hpsv2"
    assert all(n in M.ALL_REWARDS for n in R.REWARDS + ("compressibility", "incompressibility"))


@pytest.mark.parametrize("value,rule", [
    ("pickscore:10,foo:2", "reward names from pickscore, hpsv2, "),
    ("pickscore:0", "a finite weight > 0 after 'name:' ('pickscore' has weight '0')"),
    ("pickscore:-1,hpsv2", "a finite weight > 0"),
    ("pickscore:inf", "a finite weight > 0"),
    ("pickscore:nan", "a finite weight > 0"),
    ("pickscore:ten", "a finite weight > 0 after 'name:' ('pickscore' has weight 'ten')"),
    ("pickscore:", "a finite weight > 0"),
    ("pickscore:2,pickscore:3", "each reward at most once ('pickscore' appears twice)"),
    ("pickscore,,hpsv2", "no empty term"),
    ("", "a reward name"),
    (None, "a reward name"),
])
def test_parse_errors_are_one_line_naming_key_value_and_rule(value, rule):
    with pytest.raises(ConfigError) as e:
        M.parse_reward_spec(value)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"sd.reward = {value!r} is not allowed: expected ")
    assert rule in msg
    if value and "foo" in value:
        assert "('foo' is not one)" in msg and "compressibility" in msg


def test_bare_name_loads_exactly_the_single_reward(cache):
    calls = []

    def loader(name):
        calls.append(name)
        return R.tiny_reward(name, cache_dir=cache)

    single = M.load_spec("tiny-pickscore", loader)
    assert type(single) is R.PickScore and calls == ["tiny-pickscore"]
    assert type(M.load_spec("tiny-pickscore:1", loader)) is R.PickScore
    assert isinstance(M.load_spec("compressibility"), JPEGReward)
    assert isinstance(M.load_spec("anticorrelation"), R.RotationalAntiCorrelation)  # via rewards.load_reward


def test_weighted_reward_is_the_weighted_sum_and_reaches_pixels(cache):
    w = M.load_spec("tiny-pickscore:10,tiny-hpsv2:2,incompressibility:0.5",
                    lambda n: M.load_one(n, cache_dir=cache))
    assert isinstance(w, M.WeightedReward) and w.name == "tiny-pickscore:10,tiny-hpsv2:2,incompressibility:0.5"
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    r = w(x, PROMPTS)
    parts = w.terms(x, PROMPTS)
    assert r.shape == (2,) and set(parts) == {"tiny-pickscore", "tiny-hpsv2", "incompressibility"}
    expected = 10 * parts["tiny-pickscore"] + 2 * parts["tiny-hpsv2"] + 0.5 * parts["incompressibility"]
    assert torch.allclose(r, expected, rtol=1e-6, atol=1e-6)
    single = R.tiny_reward("tiny-pickscore", cache_dir=cache)
    assert torch.allclose(parts["tiny-pickscore"], single(x, PROMPTS), rtol=1e-6, atol=1e-6)
    (g,) = torch.autograd.grad(r.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # the gradient of the sum is the weighted sum of the parts' gradients
    gs = [torch.autograd.grad(p.sum(), x, retain_graph=True)[0] for p in w.terms(x, PROMPTS).values()]
    assert torch.allclose(g, 10 * gs[0] + 2 * gs[1] + 0.5 * gs[2], rtol=1e-4, atol=1e-6)


def test_weighted_reward_needs_parts():
    with pytest.raises(ValueError, match="at least one"):
        M.WeightedReward([])


def test_the_sd_domain_trains_and_scores_on_a_weighted_spec_from_params(cache):
    dom = SDDomain(SDConfig.tiny("sd", cache_dir=cache, reward="tiny-pickscore:3,compressibility:0.5"))
    assert isinstance(dom.reward_model, M.WeightedReward)
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    expected = 3 * R.tiny_reward("tiny-pickscore", cache_dir=cache)(x, PROMPTS) + 0.5 * JPEGReward("compressibility")(x, PROMPTS)
    assert torch.allclose(dom.reward(x, PROMPTS).float(), expected.float(), rtol=1e-5, atol=1e-6)
    plain = SDDomain(SDConfig.tiny("sd", cache_dir=cache, reward="tiny-pickscore"))
    assert type(plain.reward_model) is R.PickScore  # a single name stays exactly the single reward
    with pytest.raises(ConfigError, match=r"sd\.reward_path .*weighted"):
        SDConfig.tiny("sd", cache_dir=cache, reward="tiny-pickscore:3,tiny-hpsv2:1", reward_path="/x")
    with pytest.raises(ConfigError, match=r"sd\.reward .*'aesthetic' is not one"):
        SDConfig.tiny("sd", cache_dir=cache, reward="tiny-pickscore:3,aesthetic:1")
