import torch

from lib.guidance import aig, cfg


def make(scale):
    calls = []

    def den(x, t, c):
        calls.append(1)
        return scale * x
    return den, calls


def test_aig_mixes_with_gamma_of_normalised_time():
    base, _ = make(1.0)
    tuned, _ = make(3.0)
    g = aig(base, tuned, "power:1", num_train_timesteps=1000)
    x = torch.ones(2, 3)
    # s = 0.25: eps = 0.25 * 1 + 0.75 * 3
    assert torch.allclose(g(x, 250, None), torch.full((2, 3), 0.25 + 2.25))


def test_per_sample_timesteps():
    base, _ = make(1.0)
    tuned, _ = make(3.0)
    g = aig(base, tuned, "power:1")
    out = g(torch.ones(2, 1), torch.tensor([1000, 0]), None)
    assert torch.allclose(out[:, 0], torch.tensor([1.0, 3.0]))


def test_zero_weight_branch_is_not_evaluated_and_counted():
    base, bc = make(1.0)
    tuned, tc = make(3.0)
    g = aig(base, tuned, "step:0.5")
    x = torch.ones(4, 2)
    g(x, 900, None)
    g(x, 100, None)
    g(x, torch.tensor([900, 900, 100, 100]), None)  # mixed batch: both branches
    assert g.calls == {"base": 2, "tuned": 2}
    assert len(bc) == 2 and len(tc) == 2


def test_base_and_tuned_specs_are_exact():
    base, _ = make(1.7)
    tuned, _ = make(-0.3)
    x = torch.randn(5, 2)
    assert torch.equal(aig(base, tuned, "base")(x, 10, None), base(x, 10, None))
    assert torch.equal(aig(base, tuned, "tuned")(x, 990, None), tuned(x, 990, None))


def test_cfg_combines_conditional_and_null():
    def den(x, t, c):
        return x * c[:, None].float()
    guided = cfg(den, torch.tensor([0]), 3.0)
    x = torch.ones(2, 2)
    # eps_u = 0, eps_c = 2 -> 0 + 3 * 2
    assert torch.allclose(guided(x, 5, torch.tensor([2, 2])), torch.full((2, 2), 6.0))
    assert cfg(den, torch.tensor([0]), 1.0) is den
