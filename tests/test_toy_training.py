"""The toy domain, the sampler and the DRaFT-family trainer (issue: the toy study end to end)."""

import dataclasses

import numpy as np
import pytest
import torch

from lib import metrics as M
from lib.train import TrainConfig
from lib.guidance import aig
from lib.lora import lora_scale
from lib.methods import Method, method_denoiser
from lib.samplers import sample, sampling_timesteps
from lib.train import KLProbe, base_branch, draft_loss, train

SEEDS = list(range(200))


def draw(domain, den, prompt="gmm-1", seeds=SEEDS):
    with torch.no_grad():
        return sample(den, domain.scheduler, domain.noise(seeds), domain.encode([prompt] * len(seeds)), domain.num_steps)


class Recorder:
    """Denoiser wrapper recording, per call, whether grad is on and whether its input carries a graph."""

    def __init__(self, den):
        self.den, self.log = den, []

    def __call__(self, x, t, c):
        self.log.append((torch.is_grad_enabled(), x.requires_grad, int(t)))
        return self.den(x, t, c)


def test_reward_is_bounded_smooth_and_peaks_near_modes(toy):
    r_top = toy.reward(toy.top[0][None], ["gmm-0"])
    r_far = toy.reward(torch.tensor([[10.0, 10.0]]), ["gmm-0"])
    assert r_far < 1e-3 < r_top <= toy.cfg.reward_top + toy.cfg.reward_pull + 0.1
    for peak in toy.peaks[0]:  # a high-reward region next to every mode
        assert toy.reward(peak[None], ["gmm-0"]) > 0.6 * r_top
    x = torch.zeros(1, 2, requires_grad=True)
    toy.reward(x, ["gmm-0"]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_pretrained_base_covers_every_mode(toy):
    x = draw(toy, toy.denoiser(toy.base_model()), "gmm-2")
    modes = toy.mode_of(x, ["gmm-2"] * len(x))
    counts = np.bincount(modes, minlength=len(toy.means[2]))
    assert (counts > 0.08 * len(x)).all(), counts


@pytest.mark.parametrize("K", [1, 3, 10])
def test_gradients_reach_only_the_last_K_steps(toy, K):
    model = toy.add_adapter(toy.base_model(), rank=2, seed=0)
    rec = Recorder(toy.denoiser(model))
    x_T = toy.noise(range(8))
    x0 = sample(rec, toy.scheduler, x_T, toy.encode(["gmm-0"] * 8), toy.num_steps, grad_last=K)
    x0.sum().backward()
    grad_on = [g for g, _, _ in rec.log]
    assert grad_on == [False] * (toy.num_steps - K) + [True] * K
    # the first differentiated step starts from a detached x (stop_grad); later steps carry the graph
    has_graph = [r for _, r, _ in rec.log]
    assert has_graph == [False] * (toy.num_steps - K + 1) + [True] * (K - 1)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_refl_stops_early_and_lv_adds_renoised_copies(toy):
    """Count network calls with and without gradient. The KL probe also evaluates the base branch (no gradient)
    at every differentiated call, so the KL term is logged even for lambda = 0."""
    model = toy.add_adapter(toy.base_model(), rank=2, seed=0)
    n = toy.num_steps
    counts = {}
    for variant in ("draft", "lv", "refl"):
        cfg = TrainConfig(variant=variant, K=1, lv_n=3, refl_m=4)
        rec = {"n": 0, "grad": 0}
        orig = toy.denoiser

        def counting(m, scale=None, _orig=orig, _rec=rec):
            den = _orig(m, scale)

            def f(x, t, c):
                _rec["n"] += 1
                _rec["grad"] += int(torch.is_grad_enabled())
                return den(x, t, c)
            return f
        toy.denoiser = counting
        try:
            draft_loss(toy, model, cfg, ["gmm-0"] * 4, list(range(4)), torch.Generator().manual_seed(3))
        finally:
            toy.denoiser = orig
        counts[variant] = dict(rec)
    assert counts["draft"] == {"n": n + 1, "grad": 1}  # DRaFT-1: one differentiated step (+ its base call)
    # + n = 3 re-noised one-step predictions of the tuned model; Eq. 4 puts no KL term on them (no base calls)
    assert counts["lv"] == {"n": n + 1 + 3, "grad": 1 + 3}
    # ReFL: one differentiated x0 prediction at a random step j in [1, m] from the end, then stop: n - j + 1 calls
    assert counts["refl"]["grad"] == 1
    assert n - 4 + 1 <= counts["refl"]["n"] - 1 <= n


def test_refl_returns_one_step_prediction(toy):
    model = toy.base_model()
    den = toy.denoiser(model)
    x_T, cond = toy.noise(range(4)), toy.encode(["gmm-0"] * 4)
    full = sample(den, toy.scheduler, x_T, cond, toy.num_steps)
    early = sample(den, toy.scheduler, x_T, cond, toy.num_steps, stop_at=3)
    assert not torch.allclose(full, early)
    assert torch.allclose(sample(den, toy.scheduler, x_T, cond, toy.num_steps, stop_at=1), full, atol=1e-5)


def test_kl_term_is_zero_before_training(toy):
    model = toy.add_adapter(toy.base_model(), rank=4, seed=0)
    out = draft_loss(toy, model, TrainConfig(K=3, kl_lambda=1.0), ["gmm-1"] * 8, list(range(8)), torch.Generator())
    assert float(out["kl"]) == 0.0


def test_lora_scale_zero_reproduces_base_exactly(toy, draft_run):
    tuned = draft_run[0]
    base = draw(toy, toy.denoiser(toy.base_model()))
    with lora_scale(tuned, 0.0):
        scaled = draw(toy, toy.denoiser(tuned))
    assert torch.equal(base, scaled)
    assert not torch.equal(base, draw(toy, toy.denoiser(tuned)))


def test_aig_identities(toy, draft_run):
    tuned = draft_run[0]
    base_den, tuned_den = base_branch(toy, tuned), toy.denoiser(tuned)
    ts = sampling_timesteps(toy.scheduler, toy.num_steps)
    plain_base = draw(toy, toy.denoiser(toy.base_model()))
    plain_tuned = draw(toy, tuned_den)
    assert torch.equal(draw(toy, aig(base_den, tuned_den, "base", ts)), plain_base)
    assert torch.equal(draw(toy, aig(base_den, tuned_den, "tuned", ts)), plain_tuned)

    # step:c = the base model for the first ceil((1 - c) N) sampling steps, then the tuned model
    c = 0.45
    first_tuned = int(np.ceil((1 - c) * toy.num_steps))
    order = [float(t) for t in ts]

    def switch(x, t, cond):
        return base_den(x, t, cond) if order.index(float(t)) < first_tuned else tuned_den(x, t, cond)
    assert torch.equal(draw(toy, aig(base_den, tuned_den, f"step:{c}", ts)), draw(toy, switch))


def test_methods_share_paired_noise(toy, draft_run):
    tuned = draft_run[0]
    firsts = []
    for m in (Method("base"), Method("draft"), Method("aig", "power:2")):
        with method_denoiser(toy, m, tuned) as den:
            seen = []
            sample(den, toy.scheduler, toy.noise([5, 6]), toy.encode(["gmm-0"] * 2), toy.num_steps,
                   callback=lambda i, t, x: seen.append(x.clone()) if i == -1 else None)
            firsts.append(seen[0])
    assert all(torch.equal(firsts[0], f) for f in firsts)


def test_short_draft_run_raises_reward(draft_run):
    log = draft_run[1]
    assert log.reward.iloc[-20:].mean() > log.reward.iloc[:20].mean() + 0.1


def test_unregularised_draft_loses_modes(toy, draft_run):
    tuned = draft_run[0]
    base = draw(toy, toy.denoiser(toy.base_model()), "gmm-3")
    hacked = draw(toy, toy.denoiser(tuned), "gmm-3")
    assert M.recall(base.numpy(), hacked.numpy()) < 0.5 * M.recall(base.numpy(), base.numpy())
    r = lambda x: toy.reward(x, ["gmm-3"] * len(x)).mean()
    assert r(hacked) > r(base)


def test_training_writes_adapter_log_and_checkpoints(toy, tmp_path):
    cfg = TrainConfig(steps=4, batch_size=8, checkpoint_every=2)
    model, log = train(toy, cfg, tmp_path, progress=False)
    assert (tmp_path / "adapter.safetensors").exists() and len(log) == 4
    assert set(log.columns) >= {"step", "reward", "kl", "grad_norm"}
    loaded = toy.load_adapter(tmp_path / "adapter.safetensors")
    x = toy.noise(range(3))
    assert torch.allclose(loaded(x, 500, toy.encode(["gmm-0"] * 3)), model(x, 500, toy.encode(["gmm-0"] * 3)))
    # periodic adapter checkpoints load like the final adapter
    assert sorted(f.name for f in (tmp_path / "checkpoints").iterdir()) == ["adapter-step000002.safetensors", "adapter-step000004.safetensors"]
    at4 = toy.load_adapter(tmp_path / "checkpoints" / "adapter-step000004.safetensors")
    assert torch.equal(at4(x, 500, toy.encode(["gmm-0"] * 3)), loaded(x, 500, toy.encode(["gmm-0"] * 3)))


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(toy, tmp_path, monkeypatch):
    """Interrupt a run of one config after its step-4 checkpoint, run the same config again: it computes only
    steps 5-6 and ends with the log and weights of a run that was never interrupted."""
    import lib.train as T

    cfg = TrainConfig(variant="lv", steps=6, batch_size=8, checkpoint_every=2, lv_n=1)  # LV draws from the rng too
    _, clean_log = train(toy, cfg, tmp_path / "clean", progress=False)
    clean = toy.load_adapter(tmp_path / "clean" / "adapter.safetensors")

    real, calls = T.draft_loss, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated Ctrl-C at step 5")
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "draft_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(toy, cfg, tmp_path / "resumed", progress=False)
    assert not (tmp_path / "resumed" / "adapter.safetensors").exists()
    calls.clear()
    _, log = train(toy, cfg, tmp_path / "resumed", progress=False)
    assert len(calls) == 2  # steps 5 and 6 only: it resumed from the step-4 checkpoint
    cols = ["step", "reward", "kl", "loss", "grad_norm"]
    assert log[cols].equals(clean_log[cols])
    resumed = toy.load_adapter(tmp_path / "resumed" / "adapter.safetensors")
    x = toy.noise(range(3))
    c = toy.encode(["gmm-0"] * 3)
    assert torch.equal(resumed(x, 500, c), clean(x, 500, c))


def test_kl_probe_every_step_counts_the_chain(toy, draft_run):
    tuned = draft_run[0]
    probe = KLProbe(toy.denoiser(tuned), base_branch(toy, tuned), every_step=True)
    with torch.no_grad():
        sample(probe, toy.scheduler, toy.noise(range(4)), toy.encode(["gmm-0"] * 4), toy.num_steps)
    assert probe.steps == toy.num_steps and float(probe.total.mean()) > 0


def _counting(monkeypatch):
    """draft_loss wrapped to count its calls (one per step at grad_accum 1)."""
    import lib.train as T

    real, calls = T.draft_loss, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "draft_loss", counted)
    return calls


def test_a_longer_run_continues_from_a_shorter_sibling_to_the_result_of_training_alone(toy, tmp_path, monkeypatch):
    """A 6-step run next to a finished 4-step run of the same training (lib.resume.adopt) computes only steps 5-6,
    and ends with the log, weights and per-step adapters of a 6-step run trained alone; a sibling of another
    trajectory (another lr) or one past the run's length is never used."""
    cfg = TrainConfig(variant="lv", steps=6, batch_size=8, checkpoint_every=2, lv_n=1)
    _, alone_log = train(toy, cfg, tmp_path / "alone", progress=False)
    train(toy, dataclasses.replace(cfg, steps=4), tmp_path / "short", progress=False)
    train(toy, dataclasses.replace(cfg, lr=cfg.lr * 2, steps=5), tmp_path / "other", progress=False)
    calls = _counting(monkeypatch)
    _, log = train(toy, cfg, tmp_path / "long", progress=False, siblings=[tmp_path / "short", tmp_path / "other"])
    assert len(calls) == 2  # steps 5 and 6: steps 1-4 are the short run's
    cols = ["step", "reward", "kl", "loss", "grad_norm"]
    assert log[cols].equals(alone_log[cols])
    x, c = toy.noise(range(3)), toy.encode(["gmm-0"] * 3)
    for name in ("adapter.safetensors", *(f"checkpoints/adapter-step{s:06d}.safetensors" for s in (2, 4, 6))):
        a, b = toy.load_adapter(tmp_path / "long" / name), toy.load_adapter(tmp_path / "alone" / name)
        assert torch.equal(a(x, 500, c), b(x, 500, c)), name
    calls.clear()  # the 6-step runs are longer than a 4-step run: it trains its own 4 steps
    _, short_log = train(toy, dataclasses.replace(cfg, steps=4), tmp_path / "short2", progress=False,
                         siblings=[tmp_path / "long", tmp_path / "alone"])
    assert len(calls) == 4 and short_log[cols].equals(alone_log[cols].iloc[:4])
