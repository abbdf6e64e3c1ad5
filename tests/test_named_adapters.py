"""Named extra trainings (sweep.adapters) and the methods on them: LoRA mixing alpha * theta_A + beta * theta_B (DRaFT
Sec. 5.3, Fig. 7 right) and a named adapter as the tuned branch of AIG / combined generation (ImageReFL Sec. 5.3).

Checks: params errors name key, value and rule; Method round-trips through its metrics.csv setting; a lora_mix
denoiser at (1, 0) is DRaFT's, at (0, 0) the base model's, at (0, 1) the other adapter's (on the toy MLP, separate
models, and on the tiny SD UNet, one UNet with several adapters whose views activate their own); the sample stamp of
a method changes with the named adapter it uses and with nothing else's; trainings and cluster units list them."""
from __future__ import annotations

import copy

import pytest
import torch

from lib.cluster import plan
from lib.config import from_dict, named_training, to_dict
from lib.domains.sd.config import SDConfig
from lib.domains.sd.domain import SDDomain
from lib.domains.toy import ToyConfig, ToyDomain
from lib.errors import ConfigError
from lib.methods import Method, method_denoiser, sweep_methods
from lib.samplers import sample
from lib.stages import _sample_stamp, training_chains, trainings

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")

SWEEP = {"kl_lambdas": [1], "lora_scales": [0.5], "aig": ["power:2"], "combined": [0.5], "guidance": [[2, 1]],
         "adapters": {"b2": {"seed": 3}}, "tuned": ["b2"], "lora_mix": {"adapters": ["draft", "b2"], "grid": 0.5}}


def cfg_of(**sweep):
    return from_dict({"run": "named", "sweep": {**SWEEP, **sweep}})


@pytest.mark.parametrize("sweep,message", [
    ({"lora_mix": {"adapters": ["draft", "hps"]}}, "sweep.lora_mix.adapters: adapter 'hps' is not trained by this run; "
                                                   "allowed: draft, b2"),
    ({"lora_mix": {"adapters": ["draft", "b2"], "grid": 0.3}}, "sweep.lora_mix.grid = 0.3 is not allowed"),
    ({"lora_mix": {"adapters": ["b2"]}}, "sweep.lora_mix.adapters = ['b2'] is not allowed: expected two distinct"),
    ({"lora_mix": {"adapters": ["b2", "b2"]}}, "expected two distinct"),
    ({"lora_mix": {"weights": 1}}, "unknown key sweep.lora_mix.weights"),
    ({"tuned": ["nope"]}, "sweep.tuned: adapter 'nope' is not trained"),
    ({"tuned": ["draft"]}, "sweep.tuned = 'draft' is not allowed"),
    ({"adapters": {"Hps": {}}}, "sweep.adapters = 'Hps' is not allowed: expected a lower-case name"),
    ({"adapters": {"draft": {}}}, "sweep.adapters = 'draft' is not allowed"),
    ({"adapters": {"b2": {"seeds": 1}}}, "unknown key sweep.adapters.b2.seeds = 1; allowed keys: reward"),
    ({"adapters": {"b2": {"lr": 5}}}, "sweep.adapters.b2: train.lr = 5.0 is not allowed"),
    ({"adapters": {"b2": {"reward": "hpsv2"}}}, "sweep.adapters.b2.reward = 'hpsv2' is not allowed: domain 'toy' has "
                                                "one fixed reward"),
    ({"adapters": {"b2": 3}}, "sweep.adapters = {'b2': 3} is not allowed"),
])
def test_params_errors_name_key_value_and_rule(sweep, message):
    with pytest.raises(ConfigError) as e:
        cfg_of(**sweep)
    assert message in str(e.value)


def test_a_named_training_on_another_reward_is_the_domains_reward_setting():
    data = {"run": "n", "domain": "diffusers", "sd": {"model": "tiny", "reward": "tiny-pickscore"},
            "sweep": {"lora_scales": [0.5], "kl_lambdas": [], "adapters": {"hps": {"reward": "tiny-hpsv2", "steps": 7}}}}
    cfg = from_dict(data)
    train, dom = named_training(cfg, "hps")
    assert (train.steps, train.kl_lambda, dom.reward) == (7, 0.0, "tiny-hpsv2")
    assert cfg.domain_config.reward == "tiny-pickscore"  # the run's own reward is unchanged
    assert list(trainings(cfg)) == ["draft", "hps"]
    data["sweep"]["adapters"]["hps"]["reward"] = "no-such-reward"
    with pytest.raises(ConfigError, match=r"sweep.adapters.hps.reward: sd.reward = 'no-such-reward'"):
        from_dict(data)


def test_an_imagerefl_training_is_the_tuned_branch_of_combined_generation():
    """ImageReFL (train.variant imagerefl, seed 004) evaluated as ImageReFL evaluates it: combined generation with
    the base guided and the fine-tuned model unguided (sweep.guidance [[w, 1]]), its adapter named in the setting."""
    cfg = from_dict({"run": "n", "sweep": {"kl_lambdas": [], "lora_scales": [], "aig": [], "combined": [0.5],
                                           "guidance": [[7.5, 1]], "tuned": ["imagerefl"], "adapters": {
                                               "imagerefl": {"variant": "imagerefl", "imagerefl_t_range": [1, 2]}}}})
    train, _ = named_training(cfg, "imagerefl")
    assert (train.variant, tuple(train.imagerefl_t_range)) == ("imagerefl", (1, 2))
    assert [m.setting for m in sweep_methods(cfg.sweep) if m.method == "combined"] == [
        "step:0.5", "step:0.5 cfg=7.5/1", "step:0.5 tuned=imagerefl", "step:0.5 tuned=imagerefl cfg=7.5/1"]


def test_methods_round_trip_through_their_settings_and_keys_are_distinct():
    cfg = cfg_of()
    ms = sweep_methods(cfg.sweep)
    assert len({m.key for m in ms}) == len(ms) == len({(m.method, m.setting) for m in ms})
    for m in ms:
        assert Method.parse(m.method, m.setting) == m
    mix = [m for m in ms if m.method == "lora_mix"]
    assert [m.setting for m in mix[:3]] == ["draft=0,b2=0", "draft=0,b2=0.5", "draft=0,b2=1"] and len(mix) == 9
    m = Method("combined", 0.5, (7.5, 1), adapter="imagerefl")
    assert m.setting == "step:0.5 tuned=imagerefl cfg=7.5/1" and Method.parse("combined", m.setting) == m
    assert m.adapters == ("imagerefl",) and Method("aig", "power:2").adapters == ("draft",)
    assert Method("aig", "power:2", adapter="draft") == Method("aig", "power:2")  # one spelling of DRaFT's
    with pytest.raises(ValueError, match="named tuned adapter applies to"):
        Method("kl", 1.0, adapter="b2")
    with pytest.raises(ValueError, match="two adapters"):
        Method("lora_mix", (("draft", 1.0),))
    assert from_dict(to_dict(cfg)) == cfg  # the resolved config reads back


def test_sample_stamps_follow_the_adapters_a_method_uses():
    cfg = cfg_of()
    shas = {"draft": "d" * 64, "kl_lambda-1": "k" * 64, "b2": "b" * 64}
    before = {m: _sample_stamp(cfg, {}, shas, m) for m in sweep_methods(cfg.sweep)}
    after = {m: _sample_stamp(cfg, {}, {**shas, "b2": "c" * 64}, m) for m in sweep_methods(cfg.sweep)}
    changed = {m for m in before if before[m] != after[m]}
    assert changed == {m for m in before if "b2" in m.adapters} and len(changed) == 9 + 4
    # a sweep without named adapters stamps its methods as before they existed (no resampling of old runs)
    plain = cfg_of(adapters={}, tuned=[], lora_mix={"adapters": []})
    assert _sample_stamp(plain, {}, shas, Method("draft")) == _sample_stamp(cfg, {}, shas, Method("draft"))


def test_cluster_trains_every_named_training_as_its_own_job():
    units = plan(cfg_of())[1]
    assert [(u.name, u.payload) for u in units] == [("train-draft", "draft"), ("train-kl1", "kl_lambda-1"),
                                                     ("train-b2", "b2")]


def _perturb(model, seed, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _run(dom, m, tuned, adapters, x, cond, steps):
    with torch.no_grad(), method_denoiser(dom, m, tuned, adapters=adapters) as den:
        return sample(den, dom.scheduler, x, cond, steps)


def test_lora_mix_corners_on_the_toy_mlp():
    dom = ToyDomain(ToyConfig(num_steps=4, guidance_scale=2.0))
    base = dom.new_model().eval()
    tuned = dom.add_adapter(copy.deepcopy(base), rank=4, seed=0).requires_grad_(False).eval()
    other = dom.add_adapter(copy.deepcopy(base), rank=2, seed=1).requires_grad_(False).eval()
    _perturb(tuned, 1)
    _perturb(other, 2)
    x, cond = dom.noise(range(6)), dom.encode(["gmm-0", "gmm-1"] * 3)
    run = lambda m, t=tuned: _run(dom, m, t, {"b2": other}, x, cond, 4)  # noqa: E731
    draft, alone = run(Method("draft")), run(Method("draft"), other)
    base_out = run(Method("base"))
    # DRaFT alone runs on its merged network W + s B A (lib.lora.LoRAModes): equal up to float rounding
    assert torch.allclose(run(Method("lora_mix", (("draft", 1.0), ("b2", 0.0)))), draft, rtol=1e-5, atol=1e-5)
    assert torch.allclose(run(Method("lora_mix", (("draft", 0.0), ("b2", 0.0)))), base_out, rtol=1e-5, atol=1e-5)
    assert torch.allclose(run(Method("lora_mix", (("draft", 0.0), ("b2", 1.0)))), alone, rtol=1e-5, atol=1e-5)
    half = run(Method("lora_mix", (("draft", 0.5), ("b2", 0.5))))
    assert not torch.allclose(half, draft, atol=1e-3) and not torch.allclose(half, alone, atol=1e-3)
    assert [n for n, _ in tuned.named_parameters() if "mix_" in n] == []  # the DRaFT model is never changed
    # step:1 switches at the first step: the named adapter alone is the tuned branch
    assert torch.allclose(run(Method("combined", 1.0, adapter="b2")), alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="no trained adapter 'hps'"):
        run(Method("lora_mix", (("draft", 1.0), ("hps", 0.0))))


def test_lora_mix_corners_on_one_sd_unet_with_two_loaded_adapters(cache, tmp_path):
    dom = SDDomain(SDConfig.tiny("sd", cache_dir=cache, num_steps=2))
    for seed, name in ((1, "a"), (2, "b")):
        unet = dom.add_adapter(dom.base_model(), rank=4, seed=0)
        _perturb(unet, seed, 0.1)
        dom.save_adapter(unet, tmp_path / f"{name}.safetensors")
    tuned, other = (dom.load_adapter(tmp_path / f"{n}.safetensors") for n in ("a", "b"))
    x, cond = dom.noise([0, 1]), dom.encode(dom.prompts("coverage")[:2])
    run = lambda m, t=tuned: _run(dom, m, t, {"b2": other}, x, cond, 2)  # noqa: E731
    draft, alone, base_out = run(Method("draft")), run(Method("draft"), other), run(Method("base"))
    assert not torch.allclose(draft, alone, atol=1e-4)
    close = lambda a, ref: float((a - ref).abs().max()) <= 1e-5 * float(ref.abs().max())  # noqa: E731
    assert close(run(Method("lora_mix", (("draft", 1.0), ("b2", 0.0)))), draft)  # DRaFT runs merged: rounding
    assert close(run(Method("lora_mix", (("draft", 0.0), ("b2", 1.0)))), alone)
    assert close(run(Method("lora_mix", (("draft", 0.0), ("b2", 0.0)))), base_out)
    assert torch.equal(run(Method("draft")), draft)  # the views run their own adapter alone again afterwards


def test_a_longer_training_of_the_same_kind_runs_after_the_shorter_in_one_job_and_jobs_go_longest_first():
    """sweep.adapters.long is DRaFT with more steps: one cluster job trains draft then long (which continues from
    draft's checkpoint, lib.resume); b2 (another seed) is its own job; the longest job is submitted first."""
    cfg = cfg_of(adapters={"b2": {"seed": 3}, "long": {"steps": 400}})
    assert training_chains(cfg) == [["draft", "long"], ["kl_lambda-1"], ["b2"]]
    assert [(u.name, u.payload) for u in plan(cfg)[1]] == [("train-draft+long", ("draft", "long")),
                                                           ("train-kl1", "kl_lambda-1"), ("train-b2", "b2")]
    cfg = cfg_of(adapters={"b2": {"seed": 3, "steps": 30}, "long": {"steps": 400, "lr": 1e-4}})  # another lr: alone
    assert training_chains(cfg) == [["long"], ["draft"], ["kl_lambda-1"], ["b2"]]
