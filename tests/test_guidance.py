import pytest
import torch

from lib.guidance import aig, classifier_free

CHAIN = [750, 500, 250, 0]  # a 4-step chain: s_i = 1 - i / 4 = 1, 0.75, 0.5, 0.25


def make(scale):
    calls = []

    def den(x, t, c):
        calls.append(1)
        return scale * x
    return den, calls


def test_aig_mixes_with_gamma_of_the_step_index():
    base, _ = make(1.0)
    tuned, _ = make(3.0)
    g = aig(base, tuned, "power:1", CHAIN)
    x = torch.ones(2, 3)
    # step i = 3 of 4: s = 0.25, gamma = 0.25: eps = 0.25 * 1 + 0.75 * 3
    assert torch.allclose(g(x, 0, None), torch.full((2, 3), 0.25 + 2.25))
    # the first step is the base model alone, whatever its timestep
    assert torch.allclose(g(x, 750, None), torch.ones(2, 3))


def test_per_sample_timesteps():
    base, _ = make(1.0)
    tuned, _ = make(3.0)
    g = aig(base, tuned, "power:1", CHAIN)
    out = g(torch.ones(2, 1), torch.tensor([750, 250]), None)  # s = 1 and 0.5
    assert torch.allclose(out[:, 0], torch.tensor([1.0, 0.5 + 1.5]))


def test_a_timestep_outside_the_chain_is_an_error():
    base, _ = make(1.0)
    with pytest.raises(ValueError, match="timestep"):
        aig(base, base, "power:1", CHAIN)(torch.ones(1, 1), 999, None)


def test_zero_weight_branch_is_not_evaluated_and_counted():
    base, bc = make(1.0)
    tuned, tc = make(3.0)
    g = aig(base, tuned, "step:0.5", CHAIN)  # base at s = 1, 0.75; tuned at s = 0.5, 0.25
    x = torch.ones(4, 2)
    g(x, 750, None)
    g(x, 250, None)
    g(x, torch.tensor([750, 500, 250, 0]), None)  # mixed batch: both branches
    assert g.calls == {"base": 2, "tuned": 2}
    assert len(bc) == 2 and len(tc) == 2


def test_base_and_tuned_specs_are_exact():
    base, _ = make(1.7)
    tuned, _ = make(-0.3)
    x = torch.randn(5, 2)
    assert torch.equal(aig(base, tuned, "base", CHAIN)(x, 0, None), base(x, 0, None))
    assert torch.equal(aig(base, tuned, "tuned", CHAIN)(x, 750, None), tuned(x, 750, None))


def test_classifier_free_combines_conditional_and_null():
    def den(x, t, c):
        return x * c[:, None].float()
    guided = classifier_free(den, torch.tensor([0]), 3.0)
    x = torch.ones(2, 2)
    # eps_u = 0, eps_c = 2 -> 0 + 3 * 2
    assert torch.allclose(guided(x, 5, torch.tensor([2, 2])), torch.full((2, 2), 6.0))
    assert classifier_free(den, torch.tensor([0]), 1.0) is den


def test_per_branch_guidance_is_mixed_after_guiding_each_branch():
    """eps = gamma [u_b + w_b (c_b - u_b)] + (1 - gamma) [u_t + w_t (c_t - u_t)] (module docstring)."""
    def den(k):
        return lambda x, t, c: k * x * c[:, None].float() + (1 - c[:, None].float())  # u = 1, c = k x * cond
    null = torch.tensor([0])
    g = aig(classifier_free(den(2.0), null, 5.0), classifier_free(den(3.0), null, 1.0), "power:1", CHAIN)
    x, cond = torch.ones(1, 1), torch.tensor([1])
    got = g(x, 250, cond)  # gamma = 0.5
    expect = 0.5 * (1 + 5.0 * (2.0 - 1)) + 0.5 * 3.0
    assert torch.allclose(got, torch.tensor([[expect]]))
