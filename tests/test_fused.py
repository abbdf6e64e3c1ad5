"""AIG at the cost the maths allows, and exactly: both branches in one network call, the tuned model merged
(lib.lora.LoRAModes, lib.guidance.paired_branches, lib.methods.method_denoiser, lib.domains.sd.unet.AIGUNet).

Tolerances (float32, CPU): one call on the stacked batch agrees with two calls to within 2e-6 of the output's scale
(most settings bit for bit); the merged network W + s B A with the peft-run adapter to within 5e-6 of the output's
scale after a whole chain (also one call split over base and merged layers, `LoRAModes.split`); the base mode is bit
for bit the adapter switched off; routing agrees with peft's own `adapter_names` batches to rounding (bit for bit on
the base rows). The default (one call or two) follows `lib.guidance.pairing_pays` call by call.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from lib import guidance
from lib.domains.sd.config import SDConfig
from lib.domains.sd.domain import SDDomain
from lib.domains.sd.pipelines import latents_for
from lib.domains.sd.unet import aig_unet, paired_default, using_unet
from lib.domains.toy import ToyConfig, ToyDomain
from lib.guidance import AIG, paired_branches, pairing_pays
from lib.lora import LoRAModes, active_adapter, adapter_disabled, lora_modes, lora_scale
from lib.methods import Method, method_denoiser
from lib.samplers import sample

SPECS = ["power:2", "step:0.5", "spline:0=0,0.4=0.2,0.8=0.9,1=1", "tuned"]
STEPS = 4


def perturb(model: torch.nn.Module, std: float, seed: int = 1) -> None:
    """Stand-in for a trained adapter: random LoRA B (a fresh adapter has B = 0, i.e. tuned == base)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def close(a: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    """|a - ref| <= rel * max |ref| everywhere (float32 rounding at the output's scale)."""
    err = float((a - ref).abs().max())
    assert err <= rel * float(ref.abs().max()), (err, float(ref.abs().max()))


@pytest.fixture(scope="module")
def sd_domain(cache):
    dom = SDDomain(SDConfig.tiny("sd", cache_dir=cache))
    unet = dom.add_adapter(dom.base_model(), rank=4, seed=0)
    perturb(unet, 0.1)
    return dom, unet


@pytest.fixture(scope="module")
def toy_model():
    dom = ToyDomain(ToyConfig(num_steps=STEPS, guidance_scale=2.0))
    base = dom.new_model().eval()
    model = dom.add_adapter(copy.deepcopy(base), rank=4, seed=0).requires_grad_(False).eval()
    perturb(model, 0.3)
    return dom, base, model


# ------------------------------------------------------------------------------------------ LoRAModes itself
def _mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))
    net = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]), net)
    perturb(net, 0.5)
    return net.eval()


def _peft_mixed(model, x, names):
    """peft's own mixed-adapter batch inside a model whose forward takes no `adapter_names`: a forward pre-hook on
    each LoRA layer passes them (DESIGN.md, appendix)."""
    layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    hooks = [m.register_forward_pre_hook(lambda mod, a, kw: (a, {**kw, "adapter_names": names}), with_kwargs=True)
             for m in layers]
    try:
        return model(x)
    finally:
        for h in hooks:
            h.remove()


def test_modes_of_a_peft_injected_mlp():
    net, x = _mlp(), torch.randn(5, 6)
    assert active_adapter(net) == "default"
    with torch.no_grad():
        tuned = net(x)
        with adapter_disabled(net):
            base = net(x)
        modes = LoRAModes(net)
        modes.base()
        assert torch.equal(net(x), base) and modes.mode == "base"  # the base layers alone: bit for bit
        modes.merged()
        close(net(x), tuned, 1e-6)  # W + s B A against W x + s B A x: float rounding
        with modes.routed(2, 5):
            mixed = net(x)
        assert torch.equal(mixed[:2], base[:2]) and torch.equal(mixed[2:], tuned[2:])
        ref = _peft_mixed(net, x, ["__base__"] * 2 + ["default"] * 3)  # peft runs the LoRA on the gathered rows
        assert torch.equal(mixed[:2], ref[:2])
        close(mixed, ref, 1e-6)
        with modes.split(2, 5):  # base layers on rows 0-1, merged layers on rows 2-4, one call, no LoRA computed
            split = net(x)
        modes.base()
        head = net(x[:2])
        modes.merged()
        assert torch.equal(split, torch.cat([head, net(x[2:])]))
        close(split, mixed, 1e-6)
        modes.close()
        assert modes.mode == "lora" and torch.equal(net(x), tuned)  # weights untouched, layers restored


def test_merging_applies_the_lora_scale_and_follows_weight_changes():
    net, x = _mlp(), torch.randn(4, 6)
    with torch.no_grad(), lora_modes(net) as modes:
        with lora_scale(net, 0.5):
            half = net(x)
            modes.merged()
            close(net(x), half, 1e-6)
            modes.lora()
        perturb(net, 0.5, seed=7)  # new LoRA weights: after invalidate() the merged copy is made again
        new = net(x)
        modes.invalidate()
        modes.merged()
        close(net(x), new, 1e-6)
    assert "forward" not in net[0].__dict__


def test_routing_refuses_a_layer_that_does_not_see_the_batch():
    net = _mlp()
    for how in ("routed", "split"):
        with torch.no_grad(), lora_modes(net) as modes, getattr(modes, how)(1, 3), pytest.raises(RuntimeError,
                                                                                                   match="rows"):
            net(torch.randn(4, 6))


def test_both_models_in_one_call_keep_gradients_through_peft():
    """`both(merged=True)` splits rows over base and merged layers while no gradient is recorded, and routes the
    peft-run LoRA while one is (the merged copies carry none)."""
    net, x = _mlp(), torch.randn(4, 6)
    lora = [p for n, p in net.named_parameters() if "lora_" in n]
    with lora_modes(net) as modes:
        with torch.no_grad(), modes.both(merged=True)(1, 4):
            assert net[0].__dict__["forward"].__qualname__.startswith("_split_rows")  # the split forward
            ref = net(x)
        for p in lora:
            p.requires_grad_(True)
        with modes.both(merged=True)(1, 4):
            out = net(x)
        out[1:].sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
        close(out.detach(), ref, 1e-6)


def test_active_adapter_declines_what_it_cannot_serve():
    net = _mlp()
    assert active_adapter(torch.nn.Linear(2, 2)) is None
    with adapter_disabled(net):
        assert active_adapter(net) is None
    with lora_modes(torch.nn.Linear(2, 2)) as modes:
        assert modes is None


# ------------------------------------------------------------------------------------------ the dispatcher
def _chains(dom, model, m: Method, x_T, cond, **kw) -> tuple[torch.Tensor, dict]:
    with method_denoiser(dom, m, model, **kw) as den, torch.no_grad():
        out = sample(den, dom.scheduler, x_T, cond, STEPS)
    return out, dict(getattr(den, "calls", {}))


@pytest.mark.parametrize("scales", [None, "per-branch"])
@pytest.mark.parametrize("spec", SPECS)
def test_one_call_and_merged_equal_two_calls_on_tiny_sd(sd_domain, spec, scales):
    dom, unet = sd_domain
    m = Method("aig", spec, None if scales is None else (dom.guidance_scale, 1.0))
    x_T, cond = dom.noise([3, 7]), dom.encode(["a red circle on white", "an astronaut riding a horse"])
    ref, calls = _chains(dom, unet, m, x_T, cond, paired=False, merged=False)  # two peft-run calls
    one, calls1 = _chains(dom, unet, m, x_T, cond, paired=True, merged=False)
    fast, calls2 = _chains(dom, unet, m, x_T, cond, paired=True, merged=True)
    close(one, ref, 2e-6)
    close(fast, ref, 5e-6)
    mixed = calls.get("tuned", 0) if spec not in ("tuned", "step:0.5") else 0
    assert calls1 == calls2 == ({k: v for k, v in {"base": calls.get("base", 0) - mixed,
                                                    "tuned": calls.get("tuned", 0) - mixed,
                                                    "base+tuned": mixed}.items() if v})
    assert not any("forward" in layer.__dict__ for layer in unet.modules())  # layers restored


def test_per_branch_scales_of_three_rows_and_the_paired_evaluator(sd_domain):
    """cfg=3/1: the stacked batch holds [null_b, cond_b, cond_t]; each branch guided as classifier_free guides it."""
    dom, unet = sd_domain
    x, cond = dom.noise([0, 1]), dom.encode(["a", "b"])
    t = dom.scheduler.timesteps[0] if len(dom.scheduler.timesteps) else torch.tensor(500)
    with lora_modes(unet) as modes, torch.no_grad():
        both = paired_branches(dom.denoiser(unet, 1.0), dom.null_cond, (3.0, 1.0), modes.routed)(x, t, cond)
        modes.lora()
        with adapter_disabled(unet):
            eb = dom.denoiser(unet, 3.0)(x, t, cond)
        et = dom.denoiser(unet, 1.0)(x, t, cond)
    close(both[0], eb, 2e-6)
    close(both[1], et, 2e-6)


def test_lora_scale_and_kl_models_run_merged(sd_domain):
    dom, unet = sd_domain
    x_T, cond = dom.noise([5]), dom.encode(["a blue square"])
    for m in (Method("lora_scale", 0.5), Method("kl", 1.0)):
        slow, _ = _chains(dom, unet, m, x_T, cond, kl_models={1.0: unet}, merged=False)
        with method_denoiser(dom, m, unet, kl_models={1.0: unet}, merged=True) as den, torch.no_grad():
            fast = sample(den, dom.scheduler, x_T, cond, STEPS)
            assert all("forward" in layer.__dict__ for layer in unet.modules() if hasattr(layer, "lora_A"))
        close(fast, slow, 5e-6)


def test_merged_mode_gives_way_to_peft_while_gradients_are_recorded(toy_model):
    dom, _, model = toy_model
    model.requires_grad_(False)
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    for p in lora:
        p.requires_grad_(True)
    x, cond = dom.noise([1, 2]), dom.encode(["gmm-0", "gmm-1"])
    with method_denoiser(dom, Method("draft"), model, merged=True) as den:
        den(x, dom.scheduler.timesteps[0] if len(dom.scheduler.timesteps) else torch.tensor(999), cond).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    for p in lora:
        p.grad = None
        p.requires_grad_(False)


@pytest.mark.parametrize("spec", SPECS)
def test_one_call_and_merged_equal_two_calls_on_the_toy(toy_model, spec):
    dom, base, model = toy_model
    names = dom.prompts("coverage")
    x_T, cond = dom.noise(range(16)), dom.encode([names[i % len(names)] for i in range(16)])
    for scales in (None, (3.0, 1.0)):
        m = Method("aig", spec, scales)
        ref, _ = _chains(dom, model, m, x_T, cond, paired=False, merged=False)
        close(_chains(dom, model, m, x_T, cond, paired=True, merged=False)[0], ref, 2e-6)
        close(_chains(dom, model, m, x_T, cond, paired=True, merged=True)[0], ref, 5e-6)
    with torch.no_grad():  # the base method is the base network itself, bit for bit
        plain = sample(dom.denoiser(base), dom.scheduler, x_T, cond, STEPS)
    assert torch.equal(_chains(dom, model, Method("base"), x_T, cond)[0], plain)


# ------------------------------------------------------------------------------------------ the stock pipeline
@pytest.mark.parametrize("scales", [None, (7.5, 1.0)])
def test_aig_unet_in_the_stock_pipeline_one_call_and_merged(sd_domain, scales):
    dom, unet = sd_domain
    pipe = dom.pipe
    lat = latents_for(pipe, [3, 7], 64, 64)

    def images(w):
        with using_unet(pipe, w), torch.no_grad():
            return pipe(prompt=["a red circle", "a horse"], latents=lat, num_inference_steps=STEPS,
                        guidance_scale=7.5, output_type="latent").images

    for spec in ("power:2", "spline:0=0,0.4=0.2,0.8=0.9,1=1", "step:0.5", "tuned"):
        two = aig_unet(pipe, spec, scales=scales, paired=False, merged=False)
        one = aig_unet(pipe, spec, scales=scales, paired=True, merged=True)
        ref, fast = images(two), images(one)
        close(fast, ref, 5e-6)
        if spec.startswith(("power", "spline")):
            assert dict(one.calls) == {"base": 1, "base+tuned": STEPS - 1}
        assert not any("forward" in layer.__dict__ for layer in unet.modules())  # restored after every call


def test_two_aig_unets_of_one_pipeline_interleave(sd_domain):
    """Each call switches the layers it needs and restores them, so wrappers of one UNet can take turns."""
    dom, unet = sd_domain
    x, c = dom.noise([0]), dom.encode(["a"])
    dom.pipe.scheduler.set_timesteps(STEPS)
    t = dom.pipe.scheduler.timesteps[1]
    a = aig_unet(dom.pipe, "step:0.5", paired=True, merged=True)  # step 1 of 4: base alone
    b = aig_unet(dom.pipe, "tuned", paired=True, merged=True)  # merged
    with torch.no_grad():
        ref_a = dom.denoiser(aig_unet(dom.pipe, "step:0.5", paired=False, merged=False))(x, t, c)
        ref_b = dom.denoiser(aig_unet(dom.pipe, "tuned", paired=False, merged=False))(x, t, c)
        for _ in range(2):
            close(dom.denoiser(a)(x, t, c), ref_a, 2e-6)
            close(dom.denoiser(b)(x, t, c), ref_b, 5e-6)


def test_aig_counts_paired_calls_and_mixes_like_two_calls():
    base = lambda x, t, c: x * 2.0  # noqa: E731
    tuned = lambda x, t, c: x * 3.0  # noqa: E731
    both = lambda x, t, c: (base(x, t, c), tuned(x, t, c))  # noqa: E731
    clock = lambda t: 1 - np.asarray(t) / 4  # noqa: E731
    x = torch.ones(2, 3)
    g1 = AIG(base, tuned, "power:2", clock)
    g2 = AIG(base, tuned, "power:2", clock, paired=both)
    for t in range(4):
        assert torch.equal(g1(x, t, None), g2(x, t, None))
    assert dict(g1.calls) == {"base": 4, "tuned": 3} and dict(g2.calls) == {"base": 1, "base+tuned": 3}


# ------------------------------------------------------------------------------------------ the default, measured
def test_pairing_pays_below_a_work_threshold_that_a_gpu_raises():
    n = 1_000_000
    small, big = 16 * 512, 256 * 512  # the miniature world's UNet at 16 / 256 rows (lib.bench: one call +13 / -5 %)
    assert pairing_pays(n, small, "cpu") and not pairing_pays(n, big, "cpu")
    assert pairing_pays(n, 512 * 512, "cuda") and pairing_pays(n, 512 * 512, torch.device("cuda", 0))
    assert not pairing_pays(860_000_000, 16 * 4 * 64 * 64, "cuda")  # SD1.4 at 8 images (-31 % on an H100)


def test_the_default_pairs_call_by_call_where_it_pays(sd_domain, monkeypatch):
    """AIGUNet(paired=None) and method_denoiser(paired=None) pair a mixed step when `pairing_pays` says so for that
    batch (the tiny UNet at a few rows: yes), and take two calls where it does not."""
    dom, unet = sd_domain
    x = torch.zeros(1, 4, 32, 32)
    assert paired_default(unet, x) and not paired_default(unet, x.expand(10 ** 6, -1, -1, -1))
    assert dom.paired_calls  # the domain's flag: pairing can pay for this UNet on this device
    x_T, cond = dom.noise([3]), dom.encode(["a red circle on white"])
    m = Method("aig", "power:2")
    ref, _ = _chains(dom, unet, m, x_T, cond, paired=False)
    auto, calls = _chains(dom, unet, m, x_T, cond)
    assert calls == {"base": 1, "base+tuned": STEPS - 1}
    close(auto, ref, 5e-6)
    pipe = dom.pipe
    lat = latents_for(pipe, [3], 64, 64)
    w = aig_unet(pipe, "power:2")
    with using_unet(pipe, w), torch.no_grad():
        pipe(prompt=["a"], latents=lat, num_inference_steps=STEPS, guidance_scale=7.5, output_type="latent")
    assert dict(w.calls) == {"base": 1, "base+tuned": STEPS - 1}

    monkeypatch.setitem(guidance.PAIRED_WORK, "cpu", 0.0)  # as if every batch were compute-bound
    two, calls = _chains(dom, unet, m, x_T, cond)
    assert calls == {"base": STEPS, "tuned": STEPS - 1} and torch.equal(two, _chains(dom, unet, m, x_T, cond,
                                                                                      paired=False)[0])
    w.calls.clear()
    with using_unet(pipe, w), torch.no_grad():
        pipe(prompt=["a"], latents=lat, num_inference_steps=STEPS, guidance_scale=7.5, output_type="latent")
    assert dict(w.calls) == {"base": STEPS, "tuned": STEPS - 1}
    assert _chains(dom, unet, m, x_T, cond, paired=True)[1]["base+tuned"] == STEPS - 1  # forced: still one call


def test_the_toy_takes_two_calls_unless_told(toy_model):
    """The toy's MLP is not overhead-bound at its sweep batch (lib.bench: one call 1-6 % dearer at 256 rows), so its
    domain does not pair by default; paired=True still does."""
    dom, _, model = toy_model
    names = dom.prompts("coverage")
    x_T, cond = dom.noise(range(4)), dom.encode([names[i % len(names)] for i in range(4)])
    assert not dom.paired_calls
    assert _chains(dom, model, Method("aig", "power:2"), x_T, cond)[1] == {"base": STEPS, "tuned": STEPS - 1}
    assert _chains(dom, model, Method("aig", "power:2"), x_T, cond, paired=True)[1] == \
        {"base": 1, "base+tuned": STEPS - 1}
