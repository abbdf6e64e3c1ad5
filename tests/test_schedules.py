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


def test_step_weights_at_sampler_steps():
    w = step_weights("power:1", [999, 500, 0], 1000)
    assert np.allclose(w, [0.999, 0.5, 0.0])
