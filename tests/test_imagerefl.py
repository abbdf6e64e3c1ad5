"""ImageReFL training as a variant of the DRaFT-family trainer (issue 12 part 1; seed 004 Sec. 4.3, Eq. 4-5): the
gradient reaches the LoRA weights only through the final sampling step and the diffusion loss, every n-th micro-batch
is a classical ReFL step, bad settings are refused by key, and a run trains, writes and resumes as the others do."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from PIL import Image

import lib.train as T
from lib.config import build
from lib.domains.sd.config import SDConfig
from lib.domains.sd.domain import SDDomain
from lib.domains.sd.real import folder_images, unet_latent, vae_latent
from lib.domains.world import annotators as A
from lib.domains.world.config import shape_of, world_config
from lib.domains.world.link import World
from lib.errors import ConfigError
from lib.lora import lora_parameters
from lib.samplers import eps_of, noised, renoise, sample, sampling_timesteps
from lib.train import TrainConfig, draft_loss, imagerefl_loss, train

IR = TrainConfig(variant="imagerefl", imagerefl_t_range=(3, 3), refl_m=1, batch_size=8)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers Euler

PROMPTS = ["gmm-0", "gmm-1", "gmm-2", "gmm-0"]
SEEDS = [11, 12, 13, 14]


class Tap:
    """Wraps domain.denoiser: records each network call's timestep, whether its output is in the graph, whether a
    non-zero gradient reached that output, and whether its input carried a graph."""

    def __init__(self, domain, monkeypatch):
        self.calls: list[dict] = []
        orig = domain.denoiser

        def wrapped(model, scale=None):
            den = orig(model, scale)

            def f(x, t, c):
                out = den(x, t, c)
                rec = {"t": int(t), "grad": out.requires_grad, "reached": False, "input_graph": x.requires_grad}
                self.calls.append(rec)
                if out.requires_grad:
                    out.register_hook(lambda g, rec=rec: rec.update(reached=bool(g.abs().sum() > 0)))
                return out
            return f

        monkeypatch.setattr(domain, "denoiser", wrapped)


def adapted(domain, seed: int = 0):
    """The base model with a LoRA adapter whose B matrices are small random values (so A gets gradient too)."""
    model = domain.add_adapter(domain.base_model(), rank=2, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def lora_grad(model, loss: torch.Tensor) -> torch.Tensor:
    """d loss / d LoRA weights, flattened (the model's gradients are cleared first)."""
    params = lora_parameters(model)
    for p in params:
        p.grad = None
    loss.backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


@pytest.mark.parametrize("refl_m", [1, 3])
def test_gradient_reaches_lora_only_through_the_final_step_and_the_diffusion_loss(toy, monkeypatch, refl_m):
    model, n = adapted(toy), toy.num_steps
    cfg = dataclasses.replace(IR, refl_m=refl_m)
    tap = Tap(toy, monkeypatch)
    gen = torch.Generator().manual_seed(5)
    out = imagerefl_loss(toy, model, cfg, PROMPTS, SEEDS, gen)
    g_full = lora_grad(model, out["loss"])
    check = torch.Generator().manual_seed(5)  # the same draws: t' = 3rd step from the end, then the stop step
    start = int(torch.randint(3, 4, (1,), generator=check))
    stop = int(torch.randint(1, min(refl_m, start) + 1, (1,), generator=check))
    ts = [int(t) for t in sampling_timesteps(toy.scheduler, n)]
    chain = [(ts[i], i == n - stop) for i in range(n - start, n - stop + 1)]  # tuned calls from t' to the stop step
    expected = chain + [(ts[n - stop], False)] + [(ts[n - start], True)]  # + the KL probe's base call + Eq. 5's call
    assert [(c["t"], c["grad"]) for c in tap.calls] == expected
    assert [c["reached"] for c in tap.calls] == [g for _, g in expected]  # gradient arrives at exactly those two
    assert not any(c["input_graph"] for c in tap.calls)  # x_t' and the chain before the final step are detached
    assert g_full.abs().sum() > 0

    # the loss is linear in its parts: reward-only + diffusion-only gradients make up the whole
    only_r = imagerefl_loss(toy, model, dataclasses.replace(cfg, imagerefl_mse=0.0), PROMPTS, SEEDS,
                            torch.Generator().manual_seed(5))
    g_r = lora_grad(model, only_r["loss"])
    only_d = imagerefl_loss(toy, model, dataclasses.replace(cfg, imagerefl_reward_scale=0.0), PROMPTS, SEEDS,
                            torch.Generator().manual_seed(5))
    g_d = lora_grad(model, only_d["loss"])
    torch.testing.assert_close(g_full, g_r + g_d, rtol=1e-5, atol=1e-8)

    # by hand: the reward of the tuned chain from the noised real sample through its final step alone (Eq. 4) ...
    x0_real, eps, cond = toy.real_samples(PROMPTS, SEEDS), toy.noise(SEEDS), toy.encode(PROMPTS)
    x_t, t = noised(toy.scheduler, n, x0_real, eps, start)
    x0 = sample(toy.denoiser(model, 1.0), toy.scheduler, x_t, cond, n, grad_last=1, stop_at=stop, start_at=start)
    torch.testing.assert_close(g_r, lora_grad(model, -toy.reward(x0, PROMPTS).mean()), rtol=1e-5, atol=1e-8)
    # ... and the diffusion loss alone, w * mean((eps - eps_theta(x_t', t', c))^2) (Eq. 5)
    eps_theta = toy.denoiser(model, 1.0)(renoise(toy.scheduler, x0_real, eps, t), t, cond)
    ref_d = cfg.imagerefl_mse * ((eps - eps_theta) ** 2).mean()
    torch.testing.assert_close(g_d, lora_grad(model, ref_d), rtol=1e-5, atol=1e-10)
    assert float(out["diffusion"]) == pytest.approx(float(ref_d.detach()) / cfg.imagerefl_mse, rel=1e-5)


def test_every_nth_micro_batch_is_a_classical_refl_step_on_a_full_trajectory(toy, monkeypatch, tmp_path):
    paths = []
    real_draft, real_image = T.draft_loss, T.imagerefl_loss

    def counted_draft(*args, index=0, **kwargs):
        paths.append([index, "refl"])
        return real_draft(*args, index=index, **kwargs)

    def counted_image(*args, **kwargs):
        paths[-1][1] = "imagerefl"
        return real_image(*args, **kwargs)

    monkeypatch.setattr(T, "draft_loss", counted_draft)
    monkeypatch.setattr(T, "imagerefl_loss", counted_image)
    train(toy, dataclasses.replace(IR, steps=4, grad_accum=2, batch_size=4, checkpoint_every=4), tmp_path / "a",
          progress=False)
    assert paths == [[i, "refl" if (i + 1) % 4 == 0 else "imagerefl"] for i in range(8)]  # micro-batches 4 and 8
    paths.clear()
    train(toy, dataclasses.replace(IR, steps=5, batch_size=4, checkpoint_every=5, imagerefl_refl_every=0),
          tmp_path / "b", progress=False)
    assert [p for _, p in paths] == ["imagerefl"] * 5  # 0: never (the authors' shipped yaml)

    # the ReFL step starts from x_T at the first timestep; the ImageReFL step at t'
    monkeypatch.setattr(T, "draft_loss", real_draft)
    monkeypatch.setattr(T, "imagerefl_loss", real_image)
    model, n = adapted(toy), toy.num_steps
    ts = [int(t) for t in sampling_timesteps(toy.scheduler, n)]
    cfg = dataclasses.replace(IR, refl_m=2)
    tap = Tap(toy, monkeypatch)
    for index, first, calls in ((3, ts[0], range(n, n + 2)), (4, ts[n - 3], range(4, 6))):
        tap.calls.clear()
        draft_loss(toy, model, cfg, PROMPTS, SEEDS, torch.Generator().manual_seed(0), index=index)
        assert tap.calls[0]["t"] == first and len(tap.calls) in calls  # (+ base call; ImageReFL: + Eq. 5's call)
        assert sum(c["grad"] for c in tap.calls) == (1 if index == 3 else 2)


@pytest.mark.parametrize("settings, key", [
    ({"imagerefl_t_range": (0, 2)}, "train.imagerefl_t_range"),
    ({"imagerefl_t_range": (3, 2)}, "train.imagerefl_t_range"),
    ({"imagerefl_t_range": (1, 2, 3)}, "train.imagerefl_t_range"),
    ({"imagerefl_t_range": (1.5, 2)}, "train.imagerefl_t_range"),
    ({"imagerefl_mse": -1.0}, "train.imagerefl_mse"),
    ({"imagerefl_mse": float("nan")}, "train.imagerefl_mse"),
    ({"imagerefl_reward_scale": float("inf")}, "train.imagerefl_reward_scale"),
    ({"imagerefl_mse": 0.0, "imagerefl_reward_scale": 0.0}, "train.imagerefl_reward_scale"),
    ({"imagerefl_refl_every": 1}, "train.imagerefl_refl_every"),
    ({"imagerefl_refl_every": -4}, "train.imagerefl_refl_every"),
    ({"imagerefl_guidance": 0.5}, "train.imagerefl_guidance"),
    ({"variant": "image-refl"}, "train.variant"),
])
def test_bad_settings_are_refused_naming_the_key(settings, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        TrainConfig(**{"variant": "imagerefl", **settings})


def test_settings_from_params_and_a_range_past_the_chain(toy):
    cfg = build(TrainConfig, {"variant": "imagerefl", "imagerefl_t_range": [2, 4], "imagerefl_mse": 1}, "train.")
    assert cfg.imagerefl_t_range == (2, 4) and cfg.imagerefl_mse == 1.0
    with pytest.raises(ConfigError, match="train.imagerefl_t_range"):
        build(TrainConfig, {"variant": "imagerefl", "imagerefl_t_range": 3}, "train.")
    far = dataclasses.replace(IR, imagerefl_t_range=(toy.num_steps, toy.num_steps + 1))
    with pytest.raises(ConfigError, match=rf"train.imagerefl_t_range.*{toy.num_steps}-step chain"):
        imagerefl_loss(toy, adapted(toy), far, PROMPTS, SEEDS, torch.Generator())


def test_other_variants_keep_their_training_hash():
    """ImageReFL's settings enter the hash of ImageReFL runs only: trained DRaFT / KL adapters stay valid."""
    old = {"variant", "K", "lv_n", "refl_m", "kl_lambda", "steps", "batch_size", "grad_accum", "lr", "beta1", "beta2",
           "weight_decay", "grad_clip", "lora_rank", "checkpoint_every", "seed"}
    for variant in ("draft", "lv", "refl"):
        assert set(T._settings(TrainConfig(variant=variant))) == old
    ir = T._settings(TrainConfig(variant="imagerefl"))
    assert set(ir) > old and T._settings(dataclasses.replace(IR, imagerefl_mse=0.5)) != T._settings(IR)


def test_imagerefl_run_writes_adapter_and_log_and_resumes(toy, tmp_path, monkeypatch):
    cfg = dataclasses.replace(IR, imagerefl_t_range=(2, 4), refl_m=3, steps=6, batch_size=8, checkpoint_every=2,
                              lr=2e-3, grad_clip=1.0)
    model, clean_log = train(toy, cfg, tmp_path / "clean", progress=False)
    assert {"adapter.safetensors", "log.csv", "train.json", "checkpoint.pt"} <= {
        p.name for p in (tmp_path / "clean").iterdir()}
    meta = json.loads((tmp_path / "clean" / "train.json").read_text())
    assert meta["config"]["variant"] == "imagerefl" and meta["config"]["imagerefl_t_range"] == [2, 4]
    assert len(clean_log) == 6 and np.isfinite(clean_log[["reward", "loss", "diffusion"]].to_numpy()).all()
    assert clean_log["diffusion"][3] == 0 and (clean_log["diffusion"].drop(3) > 0).all()  # step 4 was ReFL
    clean = toy.load_adapter(tmp_path / "clean" / "adapter.safetensors")
    x, c = toy.noise(range(3)), toy.encode(["gmm-0"] * 3)
    assert torch.allclose(clean(x, 500, c), model(x, 500, c))

    real, seen, stop_at = T.draft_loss, [], [4]  # Ctrl-C in micro-batch 4 (step 5), after the step-4 checkpoint

    def once_interrupted(*args, index=0, **kwargs):
        seen.append(index)
        if index in stop_at:
            stop_at.clear()
            raise KeyboardInterrupt(f"simulated Ctrl-C in micro-batch {index}")
        return real(*args, index=index, **kwargs)

    monkeypatch.setattr(T, "draft_loss", once_interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(toy, cfg, tmp_path / "resumed", progress=False)
    _, log = train(toy, cfg, tmp_path / "resumed", progress=False)
    assert seen == [0, 1, 2, 3, 4, 4, 5]  # the second run computes steps 5 and 6 only, with their own indices
    cols = ["step", "reward", "kl", "loss", "diffusion", "grad_norm"]
    assert log[cols].equals(clean_log[cols])
    resumed = toy.load_adapter(tmp_path / "resumed" / "adapter.safetensors")
    assert torch.equal(resumed(x, 500, c), clean(x, 500, c))


def test_toy_real_samples_are_per_seed_draws_of_the_prompts_gmm(toy):
    a = toy.real_samples(["gmm-1", "gmm-2"], [5, 6])
    b = toy.real_samples(["gmm-3", "gmm-2", "gmm-1"], [9, 6, 5])
    assert a.shape == (2, 2) and torch.equal(a[1], b[1]) and torch.equal(a[0], b[2])  # paired across batches
    x = toy.real_samples(["gmm-2"] * 400, range(400))
    modes = toy.mode_of(x, ["gmm-2"] * 400)
    assert (np.bincount(modes, minlength=len(toy.means[2])) > 0.1 * 400).all()  # every mode of the data
    assert not torch.allclose(toy.real_samples(["gmm-0"], [3]), toy.noise([3]))  # a stream apart from the noise


def test_noised_and_eps_of_follow_each_schedulers_convention():
    x0, eps = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0)), torch.randn(3, 4, 2, 2)
    ddim = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    x_t, t = noised(ddim, 10, x0, eps, 3)
    assert int(t) == int(sampling_timesteps(ddim, 10)[-3])
    torch.testing.assert_close(x_t, renoise(ddim, x0, eps, t))
    euler = EulerDiscreteScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing")
    x_e, t_e = noised(euler, 10, x0, eps, 3)
    sched = euler.__class__.from_config(euler.config)
    sched.set_timesteps(10)
    torch.testing.assert_close(sched.scale_model_input(x_e, t_e), renoise(euler, x0, eps, t_e), rtol=1e-4, atol=1e-5)
    v_sched = DDIMScheduler(prediction_type="v_prediction")
    abar = v_sched.alphas_cumprod[int(t)]
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    torch.testing.assert_close(eps_of(v_sched, renoise(v_sched, x0, eps, t), v, t), eps, rtol=1e-4, atol=1e-5)
    assert eps_of(ddim, x_t, eps, t) is eps


def test_sample_from_the_first_step_equals_the_full_chain(toy):
    den, x_T, cond = toy.denoiser(toy.base_model()), toy.noise(range(4)), toy.encode(["gmm-1"] * 4)
    with torch.no_grad():
        full = sample(den, toy.scheduler, x_T, cond, toy.num_steps)
        same = sample(den, toy.scheduler, x_T * toy.scheduler.init_noise_sigma, cond, toy.num_steps,
                      start_at=toy.num_steps)
    torch.testing.assert_close(full, same)
    with pytest.raises(ValueError, match="start_at"):
        sample(den, toy.scheduler, x_T, cond, toy.num_steps, start_at=2, stop_at=3)


def test_world_real_images_and_the_sd_step_on_the_tiny_pipeline(cache, tmp_path):
    """The world's generator draws each caption's images per seed; the SD domain encodes them with its VAE and one
    ImageReFL step on the tiny pipeline changes only LoRA weights; SD without a world refuses, naming what is
    missing."""
    dom = SDDomain(SDConfig.tiny("sd", cache_dir=cache))
    with pytest.raises(ConfigError, match="sd.model: world"):
        dom.real_samples(["a red circle"], [0])
    folder = tmp_path / "photos"  # sd.real_images (lib.domains.sd.real)
    folder.mkdir()
    Image.new("RGB", (80, 64), (200, 30, 30)).save(folder / "r.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "r.png", "text": "a red circle"}) + "\n")
    object.__setattr__(dom.config, "real_images", str(folder))
    assert dom.real_samples(["a red circle"] * 2, [0, 1]).shape == dom.noise([0, 1]).shape
    object.__setattr__(dom.config, "real_images", None)
    world = World(world_config({"resolution": 64}), tmp_path)
    caps = ["a red circle", "a blue square", "a green cross", "a yellow triangle"]
    img = world.real_images(caps, [1, 2, 3, 4])
    assert img.shape == (4, 3, 64, 64) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert torch.equal(world.real_images(caps[1:2], [2])[0], img[1])
    many = world.real_images(["a red circle"] * 48, range(48))
    read = A.read(many, [shape_of("a red circle")] * 48)
    assert len(set(read.mode.tolist())) >= 8  # uniform modes, as the world's training set
    with pytest.raises(ValueError, match="not a caption"):
        world.real_images(["an astronaut"], [0])

    dom.world = world
    x0 = dom.real_samples(caps[:2], [1, 2])
    assert x0.shape == dom.noise([1, 2]).shape and x0.dtype == torch.float32
    torch.testing.assert_close(unet_latent(dom.pipe.vae, vae_latent(dom.pipe.vae, x0)), x0)
    unet = dom.add_adapter(dom.base_model(), rank=4, seed=0)
    cfg = TrainConfig(variant="imagerefl", imagerefl_t_range=(2, 2), refl_m=1)
    out = imagerefl_loss(dom, unet, cfg, caps[:2], [1, 2], torch.Generator().manual_seed(0))
    out["loss"].backward()
    grads = {n: p.grad for n, p in unet.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads) and float(out["diffusion"]) > 0
    assert sum(float(g.abs().sum()) for n, g in grads.items() if "lora_B" in n) > 0


@pytest.mark.parametrize("layout", ["jsonl", "csv"])
def test_a_captioned_image_folder_gives_per_seed_real_images(tmp_path, layout):
    colours = {"a.png": (255, 0, 0), "b.png": (0, 0, 255), "c.jpg": (0, 255, 0)}
    captions = {"a.png": "a red square", "b.png": "a red square", "c.jpg": "a green field"}
    for name, rgb in colours.items():
        Image.new("RGB", (48, 32), rgb).save(tmp_path / name)
    if layout == "jsonl":
        (tmp_path / "metadata.jsonl").write_text("".join(json.dumps({"file_name": k, "text": v}) + "\n"
                                                         for k, v in captions.items()))
    else:
        (tmp_path / "metadata.csv").write_text("file_name,text\n" + "".join(f"{k},{v}\n" for k, v in captions.items()))
    img = folder_images(str(tmp_path), ["a green field", "a red square"], [0, 1], 16)
    assert img.shape == (2, 3, 16, 16) and torch.allclose(img[0], torch.tensor([0.0, 1.0, 0.0])[:, None, None], atol=0.02)
    reds = folder_images(str(tmp_path), ["a red square"] * 16, range(16), 16)[:, :, 8, 8]  # (16, 3) centre pixels
    assert {tuple(r.round().tolist()) for r in reds} == {(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)}  # seeds pick both images
    torch.testing.assert_close(folder_images(str(tmp_path), ["a red square"], [5], 16)[0, :, 8, 8], reds[5])
    with pytest.raises(ConfigError, match="no image captioned 'a blue sky'"):
        folder_images(str(tmp_path), ["a blue sky"], [0], 16)
    with pytest.raises(ConfigError, match="metadata.jsonl or metadata.csv"):
        folder_images(str(tmp_path / "missing"), ["a red square"], [0], 16)
