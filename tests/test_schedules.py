import numpy as np
import pytest
import torch

from lib.schedules import Const, Power, Spline, Step, parse, step_weights


def test_power_value_from_issue():
    assert parse("power:2")(0.25) == 0.4375


@pytest.mark.parametrize("spec", ["power:1", "power:2.5", "step:0.4", "sigmoid:12,0.5", "spline:0=0,0.3=0.2,1=1",
                                  "const:0.3", "base", "tuned"])
def test_spec_round_trip_and_types(spec):
    g = parse(spec)
    assert parse(g.spec) == g
    s = np.linspace(0, 1, 11)
    out_np = g(s)
    assert isinstance(out_np, np.ndarray) and out_np.shape == (11,)
    out_t = g(torch.tensor(s, dtype=torch.float64))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64
    assert np.allclose(out_t.numpy(), out_np, atol=1e-6)
    assert isinstance(g(0.5), float)
    assert ((out_np >= 0) & (out_np <= 1)).all()


@pytest.mark.parametrize("spec", ["power:1", "power:3", "step:0.5", "spline:0=0,1=1", "sigmoid:50,0.5"])
def test_endpoints_base_at_noise_tuned_at_clean(spec):
    g = parse(spec)
    assert g(1.0) == pytest.approx(1.0, abs=1e-6)
    assert g(0.0) == pytest.approx(0.0, abs=1e-6)


def test_power_is_paper_formula_and_monotone():
    s = np.linspace(0, 1, 101)
    for p in (1, 1.25, 1.5, 2, 3, 4, 5):
        g = Power(p)(s)
        assert np.allclose(g, 1 - (1 - s) ** p)
        assert (np.diff(g) >= 0).all()
    assert np.allclose(Power(1)(s), s)  # linear: gamma = t / T


def test_step_switch():
    g = Step(0.4)
    assert g(0.41) == 1.0 and g(0.4) == 0.0 and g(0.1) == 0.0


def test_spline_is_monotone_pchip_through_points():
    g = parse("spline:0=0,0.5=0.1,0.8=0.9,1=1")
    assert isinstance(g, Spline)
    assert g(0.5) == pytest.approx(0.1) and g(0.8) == pytest.approx(0.9)
    s = np.linspace(0, 1, 201)
    assert (np.diff(g(s)) >= -1e-12).all()  # PCHIP keeps monotone data monotone


def test_base_and_tuned_are_constants():
    assert parse("base") == Const(1.0) and parse("tuned") == Const(0.0)
    assert parse("const:1").spec == "base"


@pytest.mark.parametrize("spec", ["power", "power:-1", "power:x", "step:1.5", "sigmoid:1", "spline:0=0",
                                  "spline:0=0,0=1", "spline:0.5", "cosine:2", "const:2", ""])
def test_bad_specs_name_spec_and_forms(spec):
    with pytest.raises(ValueError) as e:
        parse(spec)
    assert repr(spec) in str(e.value) and "power:p" in str(e.value)


def test_step_weights_are_indexed_by_sampling_step():
    assert np.allclose(step_weights("power:1", 4), [1.0, 0.75, 0.5, 0.25])
    assert np.allclose(step_weights("power:2", 4), [1.0, 1 - 1 / 16, 1 - 4 / 16, 1 - 9 / 16])


def _sd14_ddim():
    """SD1.4's scheduler config as the AIG paper samples it (CompVis / NeMo DDIM)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


def _sdxl_euler():
    """SDXL's Euler config with the paper's ("trailing", NeMo's legacy DDPM discretisation) spacing."""
    from diffusers import EulerDiscreteScheduler

    from lib.domains.sd.pipelines import paper_scheduler

    xl = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                timestep_spacing="leading")  # diffusers' SDXL config
    return paper_scheduler("sdxl", xl.config)


@pytest.mark.parametrize("make, first, last", [(_sd14_ddim, 961, 1), (_sdxl_euler, 999, 39)])
@pytest.mark.parametrize("p", [1, 2, 5])
def test_25_step_gamma_table_on_the_paper_samplers(make, first, last, p):
    """gamma_i = 1 - (i / N)^p at step i of N = 25 (NeMo-Aligner's (i / N)^p weight of the tuned model), whatever
    timesteps the sampler visits."""
    from lib.guidance import AIG
    from lib.samplers import sampling_timesteps
    from lib.schedules import StepClock

    ts = sampling_timesteps(make(), 25)
    assert (round(float(ts[0])), round(float(ts[-1]))) == (first, last)
    by_hand = [1 - (i / 25) ** p for i in range(25)]
    guide = AIG(None, None, f"power:{p}", StepClock(ts))
    got = [float(guide.weight(t, torch.zeros(1))) for t in ts]
    assert np.allclose(got, by_hand, atol=1e-6)
    assert got[0] == 1.0 and got[-1] > 0  # the base model alone at the first step; never zero at the last


@pytest.mark.parametrize("c, base_steps", [(0.6, 10), (0.5, 13), (0.2, 20), (0.0, 25), (1.0, 0)])
def test_step_c_runs_the_base_model_for_the_first_ceil_1_minus_c_n_steps(c, base_steps):
    w = step_weights(f"step:{c}", 25)
    assert int(w.sum()) == base_steps == int(np.ceil((1 - c) * 25 - 1e-9))
    assert np.all(w[:base_steps] == 1) and np.all(w[base_steps:] == 0)


def test_step_clock_refuses_a_timestep_of_another_chain():
    from lib.schedules import StepClock

    clock = StepClock([999, 666, 333])
    assert np.allclose(clock(torch.tensor([999, 333])), [1.0, 1 / 3])
    with pytest.raises(ValueError, match="not one of this chain's 3 timesteps"):
        clock(500)
