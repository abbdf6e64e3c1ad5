"""Offline tests of the Stable Diffusion domain on tiny randomly initialised SD / SDXL pipelines
(lib.domains.sd: pipelines, UNet views and AIG for stock pipelines, the domain)."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from lib import train as T
from lib.domains.sd import config as C, domain as D, pipelines as P, unet as U
from lib.guidance import AIG
from lib.lora import adapter_disabled, lora_parameters, lora_scale
from lib.methods import Method, method_denoiser
from lib.samplers import sample, sampling_timesteps
from lib.schedules import StepClock

sd = types.SimpleNamespace(**{k: getattr(m, k) for m in (P, U, C, D) for k in dir(m) if not k.startswith("__")})

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers Euler

PROMPTS = ["a red circle on a white background", "an astronaut riding a horse"]
SEEDS = [3, 7]
STEPS = 4


def make_domain(kind: str, cache: str) -> sd.SDDomain:
    return sd.SDDomain(sd.SDConfig.tiny(kind, cache_dir=cache))


def perturb_lora(unet: torch.nn.Module, seed: int = 1, std: float = 0.5) -> None:
    """Stand-in for a trained adapter: random LoRA B matrices (a fresh adapter has B = 0, i.e. tuned == base)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def run(pipe, seeds=SEEDS, prompts=PROMPTS, **kw) -> np.ndarray:
    """Pipeline images (B, 64, 64, 3) in [0, 1] from per-sample seeded latents."""
    lat = sd.latents_for(pipe, seeds, 64, 64)
    gs = sd.PAPER_SAMPLING["sd" if "XL" not in type(pipe).__name__ else "sdxl"]["guidance_scale"]
    with torch.no_grad():
        return pipe(prompt=list(prompts), latents=lat, num_inference_steps=STEPS, guidance_scale=gs,
                    output_type="np", **kw).images


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def trained(request, cache):
    """(domain, plain images before any adapter, images with a perturbed 'draft' adapter active)."""
    dom = make_domain(request.param, cache)
    plain = run(dom.pipe)
    unet = dom.add_adapter(dom.base_model(), rank=4, seed=0)
    perturb_lora(unet)
    tuned = run(dom.pipe)
    assert np.abs(tuned - plain).max() > 1e-3  # the adapter really changes the images
    return dom, plain, tuned


# ------------------------------------------------------------------------------------------- pipelines, seeds
def test_tiny_pipeline_kinds_and_schedulers(cache):
    p = sd.tiny_pipeline("sd", cache_dir=cache)
    q = sd.tiny_pipeline("sdxl", cache_dir=cache)
    assert type(p.scheduler).__name__ == "DDIMScheduler" and p.scheduler.config.timestep_spacing == "trailing"
    assert p.scheduler.config.set_alpha_to_one
    assert type(q.scheduler).__name__ == "EulerDiscreteScheduler"
    # same seed, same weights; the tokenizer gives open_clip's ids
    assert torch.equal(next(sd.tiny_pipeline("sd", cache_dir=cache).unet.parameters()), next(p.unet.parameters()))
    assert p.tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]
    with pytest.raises(ValueError, match="kind"):
        sd.tiny_pipeline("sd3")


def test_last_ddim_step_is_not_identity(cache):
    """With trailing spacing + alpha_0 = 1 the last step maps x to x0_hat (DRaFT-1 needs a non-trivial step)."""
    s = sd.tiny_pipeline("sd", cache_dir=cache).scheduler
    s.set_timesteps(STEPS)
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for t in s.timesteps[:-1]:
        s.step(eps, t, x)
    out = s.step(eps, s.timesteps[-1], x).prev_sample
    assert (out - x).abs().max() > 1e-2


def test_per_sample_latents_pair_across_batches_and_match_diffusers_generators(cache):
    pipe = sd.tiny_pipeline("sd", cache_dir=cache)
    both = sd.latents_for(pipe, [5, 6], 64, 64)
    assert both.shape == (2, 4, 32, 32)
    assert torch.equal(both[1], sd.latents_for(pipe, [6], 64, 64)[0])  # sample i starts from the same noise
    gens = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    with torch.no_grad():
        via_gen = pipe(prompt=PROMPTS, generator=gens, num_inference_steps=2, output_type="np").images
        via_lat = pipe(prompt=PROMPTS, latents=sd.latents_for(pipe, SEEDS, 64, 64), num_inference_steps=2,
                       output_type="np").images
    assert np.array_equal(via_gen, via_lat)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_load_pipeline_from_a_local_directory(kind, cache, tmp_path):
    """The real-checkpoint loader on a saved tiny pipeline: paper sampler, no safety checker, same images."""
    tiny = sd.tiny_pipeline(kind, cache_dir=cache)
    tiny.save_pretrained(tmp_path / kind)
    pipe = sd.load_pipeline(str(tmp_path / kind), kind, torch.float32, "cpu")
    assert type(pipe) is type(tiny)
    assert type(pipe.scheduler).__name__ == ("DDIMScheduler" if kind == "sd" else "EulerDiscreteScheduler")
    if kind == "sd":
        assert pipe.safety_checker is None
    np.testing.assert_allclose(run(pipe, seeds=[1], prompts=PROMPTS[:1]), run(tiny, seeds=[1], prompts=PROMPTS[:1]),
                               atol=1e-5)
    with pytest.raises(OSError, match="local directory"):
        sd.load_pipeline(str(tmp_path / "missing"), kind, torch.float32, "cpu")


def test_paper_scheduler_for_sd14_config_is_compvis_ddim():
    """From SD1.4's scheduler config: leading spacing, offset 1, alpha_bar_0 at the end (CompVis / NeMo DDIM)."""
    v14 = dict(_class_name="PNDMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
               num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
               clip_sample=False, trained_betas=None)
    s = sd.paper_scheduler("sd", v14)
    s.set_timesteps(25)
    assert type(s).__name__ == "DDIMScheduler" and s.timesteps[0] == 961 and s.timesteps[-1] == 1
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    assert (s.step(eps, s.timesteps[-1], x).prev_sample - x).abs().max() > 1e-3  # DRaFT-1 has a gradient
    assert type(sd.paper_scheduler("sdxl", v14)).__name__ == "EulerDiscreteScheduler"


def test_domain_implements_the_protocol_and_prompt_overrides(cache, tmp_path):
    import json

    from lib.domains.base import Domain

    photo = tmp_path / "photo.json"
    photo.write_text(json.dumps([f"a photo of object {i}" for i in range(800)]))
    dom = sd.SDDomain(sd.SDConfig.tiny("sd", cache_dir=cache, eval_prompts=("hpdv2:photo", "tiny"),
                                       prompt_paths={"hpdv2:photo": str(photo)}))
    members = {n for n in dir(Domain) if not n.startswith("_")} | set(Domain.__annotations__)
    assert members and all(hasattr(dom, n) for n in members)
    assert dom.prompts("eval")[5] == "a photo of object 5" and len(dom.prompts("hpdv2:photo")) == 800
    assert dom.prompts("train") == dom.prompts("coverage") == dom.prompts("tiny")


def test_domain_prompts_noise_and_features(cache):
    dom = make_domain("sd", cache)
    assert dom.prompts("train") == dom.prompts("eval") == dom.prompts("coverage") == dom.prompts("tiny")
    assert torch.equal(dom.noise([4, 5])[1], dom.noise([5])[0]) and dom.noise([4]).dtype == torch.float32
    feats = dom.features(torch.rand(3, 3, 64, 64))
    assert feats.shape == (3, 16)
    assert dom.num_train_timesteps == 1000 and dom.num_steps == STEPS and dom.kind == "sd"


# ------------------------------------------------------------------------------------------- AIG identities
def test_aig_base_tuned_and_calls(trained):
    dom, plain, tuned = trained
    for spec, ref, calls in (("base", plain, {"base": STEPS}), ("tuned", tuned, {"tuned": STEPS})):
        w = sd.aig_unet(dom.pipe, spec, merged=False)  # the merged tuned UNet agrees to float rounding: test_fused
        with sd.using_unet(dom.pipe, w):
            img = run(dom.pipe)
        assert np.array_equal(img, ref), spec  # exact: the skipped branch contributes nothing
        assert dict(w.calls) == calls
    assert not isinstance(dom.pipe.unet, sd.UNetView)  # the pipeline's UNet is restored


def test_aig_step_equals_switching_unets_mid_sampling(trained):
    dom, plain, tuned = trained
    pipe, c = dom.pipe, 0.5
    w = sd.aig_unet(pipe, f"step:{c}", merged=False)  # bit for bit; merged: tests/test_fused.py
    with sd.using_unet(pipe, w):
        aig_img = run(pipe)
    assert dict(w.calls) == {"base": STEPS // 2, "tuned": STEPS // 2}

    def switch(p, i, t, kwargs):  # after step i, choose the model for step i + 1 (base while s = 1 - i/N > c)
        n = len(p.scheduler.timesteps)
        if i + 1 < n:
            (p.unet.disable_lora if 1 - (i + 1) / n > c else p.unet.enable_lora)()
        return kwargs

    pipe.unet.disable_lora()  # the first step (s ~ 1) is the base model's
    try:
        switched = run(pipe, callback_on_step_end=switch)
    finally:
        pipe.unet.enable_lora()
    assert np.array_equal(aig_img, switched)
    assert np.abs(aig_img - plain).max() > 1e-4 and np.abs(aig_img - tuned).max() > 1e-4


def test_aig_power_mixes_both_branches_and_composes_with_cfg(trained):
    """power:2 evaluates both branches each step; mixing at the UNet output equals mixing guided eps (linear)."""
    dom, plain, tuned = trained
    w = sd.aig_unet(dom.pipe, "power:2", paired=False)
    with sd.using_unet(dom.pipe, w):
        img = run(dom.pipe)
    # step-indexed: gamma_0 = 1 exactly, so the first step is the base model's alone (NeMo-Aligner's (i/N)^p)
    assert dict(w.calls) == {"base": STEPS, "tuned": STEPS - 1}
    w1 = sd.aig_unet(dom.pipe, "power:2", paired=True)  # both branches in one UNet call (tests/test_fused.py)
    with sd.using_unet(dom.pipe, w1):
        np.testing.assert_allclose(run(dom.pipe), img, atol=1e-5)
    assert dict(w1.calls) == {"base": 1, "base+tuned": STEPS - 1}
    assert np.abs(img - plain).max() > 0 and np.abs(img - tuned).max() > 0
    unet = dom.pipe.unet
    x, c = dom.noise([0]), dom.encode(PROMPTS[:1])
    dom.pipe.scheduler.set_timesteps(STEPS)
    t = dom.pipe.scheduler.timesteps[1]  # step i = 1 of 4: gamma = 1 - (1/4)^2
    guided = dom.denoiser(w)(x, t, c)  # CFG over the mixed UNet
    base_den, tuned_den = dom.denoiser(unet), dom.denoiser(unet)
    with adapter_disabled(unet):
        eb = base_den(x, t, c)
    clock = StepClock(dom.pipe.scheduler.timesteps)
    mixed = AIG(lambda *a: eb, tuned_den, "power:2", clock)(x, t, c)  # mix of the two guided predictions
    torch.testing.assert_close(guided, mixed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed, (15 / 16) * eb + (1 / 16) * tuned_den(x, t, c), atol=1e-5, rtol=1e-5)


def test_aig_unet_forwards_pipeline_attributes(trained):
    dom, _, _ = trained
    w = sd.aig_unet(dom.pipe, "power:2")
    unet = dom.pipe.unet
    assert w.config is unet.config and w.dtype == unet.dtype and w.device == unet.device
    if dom.config.kind == "sdxl":
        assert w.add_embedding is unet.add_embedding
    assert w.gamma.spec == "power:2"
    dom.pipe.scheduler.set_timesteps(STEPS)
    out = w(dom.noise([0]), dom.pipe.scheduler.timesteps[2], encoder_hidden_states=dom._unpack(dom.encode(PROMPTS[:1]))["encoder_hidden_states"],
            added_cond_kwargs=dom._unpack(dom.encode(PROMPTS[:1])).get("added_cond_kwargs"))
    assert out.sample.shape == (1, 4, 32, 32)


def test_aig_with_a_separate_base_unet(cache):
    """The base branch can be a second UNet instead of the adapter-disabled one."""
    dom = make_domain("sd", cache)
    import copy

    base = copy.deepcopy(dom.pipe.unet)
    plain = run(dom.pipe)
    perturb_lora(dom.add_adapter(dom.base_model(), rank=4, seed=0))
    w = sd.aig_unet(dom.pipe, "base", base_unet=base)
    with sd.using_unet(dom.pipe, w):
        assert np.array_equal(run(dom.pipe), plain)


def test_lora_scale_zero_is_base_and_one_is_tuned(cache):
    dom = make_domain("sd", cache)
    plain = run(dom.pipe)
    perturb_lora(dom.add_adapter(dom.base_model(), rank=4, seed=0))
    tuned = run(dom.pipe)
    with lora_scale(dom.pipe.unet, 0.0):
        assert np.array_equal(run(dom.pipe), plain)
    with lora_scale(dom.pipe.unet, 1.0):
        assert np.array_equal(run(dom.pipe), tuned)
    with lora_scale(dom.pipe.unet, 0.5):
        half = run(dom.pipe)
    assert np.abs(half - plain).max() > 1e-4 and np.abs(half - tuned).max() > 1e-4
    assert np.array_equal(run(dom.pipe), tuned)  # scale restored


def test_step_k_over_n_runs_the_tuned_model_for_the_last_k_steps(trained):
    dom, _, _ = trained
    for k in range(STEPS + 1):
        w = sd.aig_unet(dom.pipe, f"step:{k / STEPS}")
        with sd.using_unet(dom.pipe, w), torch.no_grad():
            dom.pipe(prompt=PROMPTS[:1], latents=sd.latents_for(dom.pipe, [0], 64, 64), num_inference_steps=STEPS,
                     output_type="latent")
        assert w.calls["tuned"] == k and w.calls["base"] == STEPS - k, k


def _switching_sample(dom, unet, x_T, cond, base_steps, base_scale, tuned_scale):
    """The reference of per-branch guidance: the guided base model for the first steps, then the tuned one."""
    base_den = dom.denoiser(dom.base_model(), base_scale)
    tuned_den = dom.denoiser(unet, tuned_scale)
    order = [float(t) for t in sampling_timesteps(dom.scheduler, STEPS)]

    def switch(x, t, c):
        return (base_den if order.index(float(t)) < base_steps else tuned_den)(x, t, c)
    with torch.no_grad():
        return sample(switch, dom.scheduler, x_T, cond, STEPS)


def test_per_branch_guidance_combined_equals_switching_guided_base_to_unguided_tuned(trained):
    """ImageReFL's combined generation: base guided at the model's scale, fine-tuned model unguided (scale 1)."""
    dom, _, _ = trained
    w_base = dom.guidance_scale
    m = Method("combined", 0.5, scales=(w_base, 1.0))
    assert m.setting == f"step:0.5 cfg={w_base:g}/1" and Method.parse("combined", m.setting) == m
    x_T, cond = dom.noise(SEEDS), dom.encode(PROMPTS)
    with method_denoiser(dom, m, dom.pipe.unet) as den, torch.no_grad():
        ours = sample(den, dom.scheduler, x_T, cond, STEPS)
    ref = _switching_sample(dom, dom.pipe.unet, x_T, cond, STEPS // 2, w_base, 1.0)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    # differs from the single-scale combined method (the tuned branch guided too)
    with method_denoiser(dom, Method("combined", 0.5), dom.pipe.unet) as den, torch.no_grad():
        assert (sample(den, dom.scheduler, x_T, cond, STEPS) - ours).abs().max() > 1e-4


@pytest.mark.parametrize("spec", ["step:0.5", "power:2"])
def test_stock_pipeline_with_per_branch_aig_unet_equals_the_workbook_sampler(trained, spec):
    """aig_unet(scales=...) inside the stock diffusers pipeline gives the workbook's images (decode included)."""
    dom, _, _ = trained
    scales = (dom.guidance_scale, 1.0)
    m = Method("aig", spec, scales=scales)
    with method_denoiser(dom, m, dom.pipe.unet) as den, torch.no_grad():
        ours = dom.decode(sample(den, dom.scheduler, dom.noise(SEEDS), dom.encode(PROMPTS), STEPS))
    w = sd.aig_unet(dom.pipe, spec, scales=scales)
    with sd.using_unet(dom.pipe, w):
        stock = run(dom.pipe)  # the pipeline's own guidance step is neutral under per-branch scales
    np.testing.assert_allclose(stock, ours.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    if spec == "step:0.5":
        assert dict(w.calls) == {"base": STEPS // 2, "tuned": STEPS // 2}


# ---------------------------------------------------------------------------------------------- the domain
def test_domain_sampler_matches_the_pipeline(trained):
    """lib.samplers.sample over domain.denoiser + domain.decode reproduces the diffusers pipeline's images."""
    dom, _, tuned = trained
    with torch.no_grad():
        x0 = sample(dom.denoiser(dom.pipe.unet), dom.scheduler, dom.noise(SEEDS), dom.encode(PROMPTS), STEPS)
        img = dom.decode(x0).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(img, tuned, atol=1e-5)
    assert dom.encode(PROMPTS).shape[0] == 2 and dom.null_cond.shape[0] == 1


def test_kl_term_is_zero_for_a_fresh_adapter(cache):
    dom = make_domain("sd", cache)
    unet = dom.add_adapter(dom.base_model(), rank=4, seed=0)
    den = dom.denoiser(unet)
    x, c, t = dom.noise(SEEDS), dom.encode(PROMPTS), torch.tensor(500)
    with torch.no_grad():
        eps_tuned = den(x, t, c)
        with adapter_disabled(unet):
            eps_base = den(x, t, c)
    assert torch.mean((eps_tuned - eps_base) ** 2).item() == 0.0  # LoRA B = 0 at initialisation
    perturb_lora(unet, std=0.05)
    with torch.no_grad():
        assert torch.mean((den(x, t, c) - eps_base) ** 2).item() > 0


def test_draft1_step_changes_only_lora_weights(cache):
    """One DRaFT-1 step: gradient through the last sampling step only, reward on the decoded image."""
    dom = make_domain("sd", cache)
    unet = dom.add_adapter(dom.base_model(), rank=4, seed=0)
    params = lora_parameters(unet)
    assert params and all(p.requires_grad and p.dtype == torch.float32 for p in params)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    grad_seen = []
    x0 = sample(dom.denoiser(unet), dom.scheduler, dom.noise(SEEDS), dom.encode(PROMPTS), STEPS, grad_last=1,
                callback=lambda i, t, x: grad_seen.append(x.requires_grad))
    assert grad_seen == [False] * STEPS + [True]  # x_T and all but the last step are outside the graph
    r = dom.reward(dom.decode(x0), PROMPTS)
    assert r.shape == (2,) and r.requires_grad
    (-r.mean()).backward()
    grads = {n: p.grad for n, p in unet.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert sum(float(g.abs().sum()) for n, g in grads.items() if "lora_B" in n) > 0
    for m in (dom.pipe.vae, dom.pipe.text_encoder, dom.reward_model):
        assert all(p.grad is None for p in m.parameters())
    torch.optim.AdamW(params, lr=1e-2).step()
    changed = {n for n, p in unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_gradient_checkpointing_gives_the_same_draft1_gradient(cache):
    grads = []
    for ckpt in (False, True):
        dom = sd.SDDomain(sd.SDConfig.tiny("sd", cache_dir=cache, gradient_checkpointing=ckpt))
        unet = dom.add_adapter(dom.base_model(), rank=4, seed=0)
        assert unet.is_gradient_checkpointing == ckpt
        x0 = sample(dom.denoiser(unet), dom.scheduler, dom.noise(SEEDS), dom.encode(PROMPTS), 2, grad_last=1)
        dom.reward(dom.decode(x0), PROMPTS).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in lora_parameters(unet)]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_saved_adapter_loads_with_load_lora_weights_and_reproduces_images(trained, tmp_path):
    dom, _, tuned = trained
    dom.save_adapter(dom.pipe.unet, tmp_path / "lora")
    f = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    from safetensors import safe_open

    with safe_open(str(f), "pt") as fh:
        keys = list(fh.keys())
    assert keys and all(k.startswith("unet.") and "lora" in k for k in keys)
    fresh = sd.tiny_pipeline(dom.config.kind, cache_dir=dom.config.cache_dir)
    fresh.load_lora_weights(str(tmp_path / "lora"), adapter_name="draft")
    np.testing.assert_allclose(run(fresh), tuned, atol=1e-6)
    dom2 = sd.SDDomain(dom.config, pipe=sd.tiny_pipeline(dom.config.kind, cache_dir=dom.config.cache_dir))
    unet2 = dom2.load_adapter(f)  # a .safetensors file path works too
    assert sd.has_adapter(unet2)
    np.testing.assert_allclose(run(dom2.pipe), tuned, atol=1e-6)


def test_loaded_adapters_coexist_as_views_of_one_unet(cache, tmp_path):
    """The sweep holds the DRaFT model and KL models at once (lib.stages): each load_adapter is its own model."""
    dom = make_domain("sd", cache)
    x_T, c = dom.noise(SEEDS), dom.encode(PROMPTS)

    def draw(d, model):
        with torch.no_grad():
            return sample(d.denoiser(model), d.scheduler, x_T, c, STEPS)

    base0 = draw(dom, dom.base_model())
    unet = dom.add_adapter(dom.base_model(), 4, 0)
    refs = {}
    for k in ("a", "b"):
        perturb_lora(unet, seed=ord(k))
        refs[k] = draw(dom, unet)
        dom.save_adapter(unet, tmp_path / f"{k}.safetensors")
    assert not torch.allclose(refs["a"], refs["b"]) and torch.equal(draw(dom, dom.base_model()), base0)

    dom2 = make_domain("sd", cache)
    a = dom2.load_adapter(tmp_path / "a.safetensors")
    b = dom2.load_adapter(tmp_path / "b.safetensors")
    assert (a.adapter_name, b.adapter_name) == ("draft", "draft_2") and a.unet is b.unet
    for view, k in ((b, "b"), (a, "a"), (b, "b")):  # interleaved use
        torch.testing.assert_close(draw(dom2, view), refs[k], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(draw(dom2, dom2.base_model()), base0, atol=1e-5, rtol=1e-5)
    with lora_scale(a, 0.0):
        torch.testing.assert_close(draw(dom2, a), base0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(draw(dom2, b), refs["b"], atol=1e-5, rtol=1e-5)  # b's scale untouched
    with adapter_disabled(b):
        torch.testing.assert_close(draw(dom2, b), base0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(draw(dom2, sd.aig_unet(dom2.pipe, "tuned", unet=b, merged=False)), refs["b"],
                               atol=1e-5, rtol=1e-5)  # merged (a float-rounding difference): tests/test_fused.py
    with method_denoiser(dom2, Method("lora_scale", 0.0), a) as den, torch.no_grad():
        torch.testing.assert_close(sample(den, dom2.scheduler, x_T, c, STEPS), base0, atol=1e-5, rtol=1e-5)
    with method_denoiser(dom2, Method("base"), b) as den, torch.no_grad():
        torch.testing.assert_close(sample(den, dom2.scheduler, x_T, c, STEPS), base0, atol=1e-5, rtol=1e-5)
    assert dom2.load_adapter(tmp_path / "a.safetensors").adapter_name == "draft"  # reloading keeps the name
    assert sorted(dom2.pipe.unet.peft_config) == ["draft", "draft_2"]


def test_add_adapter_is_seeded_and_replaces_the_previous_one(cache):
    dom = make_domain("sd", cache)
    rng = torch.get_rng_state()
    a = [p.detach().clone() for p in lora_parameters(dom.add_adapter(dom.base_model(), 4, seed=5))]
    assert torch.equal(rng, torch.get_rng_state())  # the global seed is untouched
    b = [p.detach().clone() for p in lora_parameters(dom.add_adapter(dom.base_model(), 4, seed=5))]
    c = lora_parameters(dom.add_adapter(dom.base_model(), 4, seed=6))
    assert len(a) == len(b) == len(c) and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert list(dom.pipe.unet.peft_config) == ["draft"]


# ------------------------------------------------------------------------------------------------- errors
def test_aig_unet_needs_an_adapter_or_a_base_unet_and_restores_the_pipeline(cache):
    dom = make_domain("sd", cache)
    with pytest.raises(ValueError, match="adapter"):
        sd.aig_unet(dom.pipe, "power:2")
    dom.add_adapter(dom.base_model(), 4, 0)
    with sd.using_unet(dom.pipe, sd.aig_unet(dom.pipe, "step:0.3")) as p:
        assert isinstance(p.unet, sd.AIGUNet) and p.unet.gamma.spec == "step:0.3"
    assert p.unet is sd.plain_unet(dom.base_model()) and not isinstance(p.unet, sd.UNetView)


def test_sdconfig_validates_and_has_paper_presets():
    with pytest.raises(ValueError, match=r"sd.kind = 'sd2' is not allowed: expected sd or sdxl"):
        sd.SDConfig(kind="sd2")
    with pytest.raises(ValueError, match="reward"):
        sd.SDConfig(reward="aesthetic")
    xl = sd.SDConfig.paper("sdxl")
    assert (xl.model, xl.num_steps, xl.guidance_scale, xl.resolution) == (sd.DEFAULT_MODELS["sdxl"], 25, 5.0, 1024)
    v14 = sd.SDConfig.paper("sd")
    assert (v14.num_steps, v14.guidance_scale, v14.resolution) == (25, 7.5, 512)
    assert sd.SDConfig() == v14
    assert v14.dino == "dino" and v14.clip == "clip"


def test_clip_scores_and_dino_embeddings_of_the_tiny_domain(cache):
    dom = make_domain("sd", cache)
    imgs = torch.rand(3, 3, 64, 64)
    s = dom.clip_scores(imgs, PROMPTS[:1] * 3)
    assert s.shape == (3,) and np.all(np.abs(s) <= 100)
    assert dom.embeddings(imgs).shape[0] == 3
    assert {"dino", "clip", "features"} <= dom.capabilities(dom.config)


def test_a_new_reward_makes_the_trained_adapter_stale_but_not_the_base_samples(cache):
    """sd.reward (and sd.reward_path) enter the training key (`Domain.reward_stamp`), not the domain's stamp: a
    run whose reward changed retrains DRaFT instead of reusing the adapter trained on the old reward, while its
    base samples, which no reward shapes, stay current."""
    pick, hps = (sd.SDDomain(sd.SDConfig.tiny("sd", cache_dir=cache, reward=r)) for r in ("pickscore", "hpsv2"))
    cfg = T.TrainConfig()
    assert pick.stamp() == hps.stamp()
    assert pick.reward_stamp() != hps.reward_stamp()
    assert T._key(pick, cfg) != T._key(hps, cfg)
    again = sd.SDDomain(sd.SDConfig.tiny("sd", cache_dir=cache, reward="pickscore"))
    assert T._key(pick, cfg) == T._key(again, cfg)  # the same reward: the adapter stays current
