"""The DRaFT-family trainer (DRaFT Algorithm 1) with KL regularisation (AIG paper Eq. 4), on the domain seam.

One loop covers DRaFT (K = T), DRaFT-K (gradient through the last K sampling steps), DRaFT-LV (K = 1 plus n
re-noised copies of x_0) and ReFL (stop at a random step in [1, m] and score the one-step x_0 prediction).
The loss is -r(x_0, c) + lambda * sum over the differentiated steps of the sampling trajectory of
mean((eps_tuned - eps_base)^2) (Eq. 4; DRaFT-LV's re-noised copies are not regularised, as in Eq. 4 and
NeMo-Aligner). NeMo-Aligner *averages* the term over the K steps where Eq. 4 sums, so its kl_coeff equals our
lambda times K (the same for K = 1, the paper's DRaFT-1).

ImageReFL (seed 004 Sec. 4.3, 5.3) is a variant of the same loop (`imagerefl_loss`): a real x_0 of the domain
(`Domain.real_samples`) noised to a late step t', the tuned model from t' with the gradient through its final step,
-s r (Eq. 4) + w mean((eps - eps_theta(x_t', t', c))^2) (Eq. 5), and every n-th micro-batch a classical ReFL step.
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from lib.distributed import digest, gather, mean_across, process_state
from lib.domains.base import Domain
from lib.errors import ArtefactError, TrainingDiverged, check
from lib.files import atomic_path, config_hash, file_record, mismatch, note_artefact, read_json
from lib.guidance import Denoiser
from lib.lora import adapter_disabled, lora_parameters
from lib.resume import CHECKPOINT, adopt, resume, save_checkpoint
from lib.samplers import eps_of, noised, predict_x0, renoise, sample
from lib.tracking import TRACKERS, open_tracker


@dataclass(frozen=True)
class TrainConfig:
    """DRaFT-family fine-tuning (DRaFT Algorithm 1) with optional KL regularisation (AIG paper Eq. 4)."""

    variant: str = "draft"  # draft (K steps of gradient; K >= num_steps is full DRaFT) | lv | refl | imagerefl
    K: int = 1
    lv_n: int = 2  # DRaFT-LV: re-noised copies of x_0
    refl_m: int = 5  # ReFL (and ImageReFL's final step): stop at a random step in [1, m] from the end
    # ImageReFL (seed 004 Sec. 4.3, 5.3), in steps of the N-step chain. The authors (40 DDIM steps, unguided): t' 10
    # steps from the end (N / 4: [6, 6] of 25), stop in [1, 10] (refl_m 6 of 25), loss 1e-3 (-r' + 0.01 Eq. 5) with
    # r' = 0.1 (r - 20) for PickScore, r for HPSv2.1 (so reward_scale 1e-4 or 1e-3 and mse 1e-5 on our raw rewards).
    imagerefl_t_range: tuple[int, int] = (1, 3)  # t' drawn uniformly from these steps from the end (1 = the last)
    imagerefl_mse: float = 0.01  # w: weight of the diffusion loss (Eq. 5); the paper's ratio to a [0, 1] reward
    imagerefl_reward_scale: float = 1.0  # s: the reward's factor in the loss (all steps of the run, ReFL ones too)
    imagerefl_refl_every: int = 4  # every n-th micro-batch a classical ReFL step (paper: 4); 0 = never (their yaml)
    imagerefl_guidance: float = 1.0  # CFG of both kinds of step; 1 = unguided (authors; combined generation's tuned)
    kl_lambda: float = 0.0
    steps: int = 200
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 2.5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 0.1
    lora_rank: int = 4
    checkpoint_every: int = 50
    seed: int = 0
    tracker: str = "none"  # also log curves and sweep metrics to: none | tensorboard | wandb | mlflow (lib.tracking)

    def __post_init__(self):
        check("train.variant", self.variant, self.variant in VARIANTS, f"one of {', '.join(VARIANTS)}")
        check("train.tracker", self.tracker, self.tracker in TRACKERS, f"one of {', '.join(TRACKERS)}")
        for key in ("K", "lv_n", "refl_m", "steps", "batch_size", "grad_accum", "lora_rank", "checkpoint_every"):
            v = getattr(self, key)
            check(f"train.{key}", v, isinstance(v, int) and v >= 1, "an integer >= 1")
        check("train.kl_lambda", self.kl_lambda, self.kl_lambda >= 0 and math.isfinite(self.kl_lambda),
              "a finite number >= 0")
        check("train.lr", self.lr, 0 < self.lr < 1, "in (0, 1)")
        for key in ("beta1", "beta2"):
            check(f"train.{key}", getattr(self, key), 0 <= getattr(self, key) < 1, "in [0, 1)")
        check("train.weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        check("train.grad_clip", self.grad_clip, self.grad_clip > 0 and math.isfinite(self.grad_clip), "a finite number > 0")
        r = self.imagerefl_t_range
        check("train.imagerefl_t_range", r, isinstance(r, (tuple, list)) and len(r) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in r) and 1 <= r[0] <= r[1],
            "two integers [lo, hi], 1 <= lo <= hi: the steps from the end of the chain where t' is drawn")
        for key in ("imagerefl_mse", "imagerefl_reward_scale"):
            v = getattr(self, key)
            check(f"train.{key}", v, isinstance(v, (int, float)) and math.isfinite(v) and v >= 0,
                  "a finite number >= 0")
        check("train.imagerefl_reward_scale", self.imagerefl_reward_scale, self.variant != "imagerefl" or
              self.imagerefl_reward_scale > 0 or self.imagerefl_mse > 0, "> 0 when train.imagerefl_mse is 0")
        g = self.imagerefl_guidance
        check("train.imagerefl_guidance", g, isinstance(g, (int, float)) and math.isfinite(g) and g >= 1,
              "a finite number >= 1 (1 = unguided)")
        n = self.imagerefl_refl_every
        check("train.imagerefl_refl_every", n, isinstance(n, int) and not isinstance(n, bool) and (n == 0 or n >= 2),
              "0 (never) or an integer >= 2 (every n-th micro-batch is a ReFL step; always ReFL is variant refl)")


VARIANTS = ("draft", "lv", "refl", "imagerefl")


class KLProbe:
    """Denoiser wrapper returning eps_tuned and adding mean((eps_tuned - eps_base)^2) to `self.total` (B,):
    at the steps that carry gradient (the last K of DRaFT-K; AIG paper Eq. 4), or at every step."""

    def __init__(self, tuned: Denoiser, base: Denoiser, every_step: bool = False):
        self.tuned, self.base, self.every_step = tuned, base, every_step
        self.total, self.steps = 0.0, 0

    def __call__(self, x: torch.Tensor, t: Any, cond: Any) -> torch.Tensor:
        """The tuned model's eps at t, adding the step's KL term (on the differentiated steps or every step)."""
        eps = self.tuned(x, t, cond)
        if self.every_step or torch.is_grad_enabled():
            with torch.no_grad():
                eps_base = self.base(x, t, cond)
            self.total = self.total + ((eps - eps_base) ** 2).flatten(1).mean(1)  # (B,)
            self.steps += 1
        return eps


def base_branch(domain: Domain, model: torch.nn.Module, scale: Optional[float] = None) -> Denoiser:
    """The base model's denoiser (guidance `scale`, None: the domain's): the same network with its adapter off."""
    tuned = domain.denoiser(model, scale)

    def base(x, t, cond):
        with adapter_disabled(model):
            return tuned(x, t, cond)

    return base


def draft_loss(domain: Domain, model: torch.nn.Module, cfg: TrainConfig, prompts: list[str], seeds: list[int],
               rng: torch.Generator, index: int = 0) -> dict[str, torch.Tensor]:
    """One DRaFT-family objective on micro-batch `index` of the run (DRaFT Algorithm 1; ImageReFL Eq. 4-5, every
    imagerefl_refl_every-th micro-batch ReFL): returns loss, reward, kl, diffusion (scalars)."""
    every = cfg.imagerefl_refl_every
    if cfg.variant == "imagerefl" and not (every and (index + 1) % every == 0):
        return imagerefl_loss(domain, model, cfg, prompts, seeds, rng)
    variant = "refl" if cfg.variant == "imagerefl" else cfg.variant  # ImageReFL's classical ReFL step
    scale, cfg_scale = (cfg.imagerefl_reward_scale, cfg.imagerefl_guidance) if cfg.variant == "imagerefl" else (1.0, None)
    cond = domain.encode(prompts)
    x_T = domain.noise(seeds)  # (B, ...)
    probe = KLProbe(domain.denoiser(model, cfg_scale), base_branch(domain, model, cfg_scale))
    n = domain.num_steps
    if variant == "refl":
        stop = int(torch.randint(1, min(cfg.refl_m, n) + 1, (1,), generator=rng))
        x0 = sample(probe, domain.scheduler, x_T, cond, n, grad_last=stop, stop_at=stop)
    else:
        x0 = sample(probe, domain.scheduler, x_T, cond, n, grad_last=1 if variant == "lv" else min(cfg.K, n))
    reward = domain.reward(domain.decode(x0), prompts)  # (B,)
    total_reward = reward
    if variant == "lv":
        sched = copy.deepcopy(domain.scheduler)  # the domain's scheduler is shared: never step or reset it
        sched.set_timesteps(n)
        t1 = sched.timesteps[-1]
        for _ in range(cfg.lv_n):
            eps = torch.randn(x0.shape, generator=rng).to(x0)
            x1 = renoise(sched, x0.detach(), eps, t1)
            eps1 = eps_of(sched, x1, probe.tuned(x1, t1, cond), t1)  # the network's output as eps (v-prediction)
            x0_i = predict_x0(sched, x1, eps1, t1)  # Eq. 4: no KL on the copies
            total_reward = total_reward + domain.reward(domain.decode(x0_i), prompts)
    kl = probe.total if probe.steps else torch.zeros_like(reward)
    loss = (-scale * total_reward + cfg.kl_lambda * kl).mean()
    return {"loss": loss, "reward": reward.mean().detach(), "kl": torch.as_tensor(kl).mean().detach(),
            "diffusion": torch.zeros(())}


def imagerefl_loss(domain: Domain, model: torch.nn.Module, cfg: TrainConfig, prompts: list[str], seeds: list[int],
                   rng: torch.Generator) -> dict[str, torch.Tensor]:
    """One ImageReFL step (seed 004 Sec. 4.3): -s r(F_theta(x_t', t', c), c) (Eq. 4) + w ||eps - eps_theta(x_t', t',
    c)||^2 (Eq. 5, mean over elements) + lambda KL on the differentiated step; returns loss, reward, kl, diffusion.

    x_t' noises the real x_0 (`Domain.real_samples`) with eps = the seed's noise to t' = the j-th step from the end,
    j uniform in imagerefl_t_range; the tuned model (CFG imagerefl_guidance) runs from t' and stops at a random step
    in [1, min(refl_m, j)] from the end, the only one with gradient (ReFL), scoring its x0 prediction. Eq. 5 takes
    the unguided eps_theta (the denoising objective; a v-prediction output is turned into eps)."""
    n = domain.num_steps
    lo, hi = cfg.imagerefl_t_range
    check("train.imagerefl_t_range", cfg.imagerefl_t_range, hi <= n,
          f"steps from the end of the domain's {n}-step chain")
    start = int(torch.randint(lo, hi + 1, (1,), generator=rng))  # t' is the start-th step from the end
    stop = int(torch.randint(1, min(cfg.refl_m, start) + 1, (1,), generator=rng))  # t_f: the differentiated step
    cond = domain.encode(prompts)
    with torch.no_grad():
        x0_real = domain.real_samples(prompts, seeds)  # (B, ...) in the model's space (SD: VAE latents)
    eps = domain.noise(seeds)  # (B, ...) the eps of x_t'
    x_t, t = noised(domain.scheduler, n, x0_real, eps, start)  # (B, ...) in the scheduler's scaling
    probe = KLProbe(domain.denoiser(model, cfg.imagerefl_guidance), base_branch(domain, model, cfg.imagerefl_guidance))
    x0 = sample(probe, domain.scheduler, x_t, cond, n, grad_last=stop, stop_at=stop, start_at=start)  # F_theta
    reward = domain.reward(domain.decode(x0), prompts)  # (B,)
    x_in = renoise(domain.scheduler, x0_real, eps, t)  # (B, ...) x_t' as the network sees it (variance-preserving)
    with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.imagerefl_mse > 0):
        eps_theta = eps_of(domain.scheduler, x_in, domain.denoiser(model, 1.0)(x_in, t, cond), t)
        diffusion = ((eps - eps_theta) ** 2).flatten(1).mean(1)  # (B,) Eq. 5
    kl = probe.total if probe.steps else torch.zeros_like(reward)
    loss = (-cfg.imagerefl_reward_scale * reward + cfg.imagerefl_mse * diffusion + cfg.kl_lambda * kl).mean()
    return {"loss": loss, "reward": reward.mean().detach(), "kl": torch.as_tensor(kl).mean().detach(),
            "diffusion": diffusion.mean().detach()}


def train(domain: Domain, cfg: TrainConfig, out_dir: Path, progress: bool = True,
          run: Optional[str] = None, siblings: Sequence[Path] = ()) -> tuple[torch.nn.Module, pd.DataFrame]:
    """Fine-tune a LoRA adapter; writes adapter.safetensors, log.csv and train.json (with the size and sha256 of
    both) to out_dir; every checkpoint_every steps it writes checkpoint.pt (LoRA, optimiser, generator states and the
    log: tensors and plain values that torch.load(weights_only=True) reads) and
    checkpoints/adapter-stepNNNNNN.safetensors (the adapter in the domain's format; for SD the diffusers LoRA format
    that `pipe.load_lora_weights` reads). A run of the same trajectory (the config but its length) resumes from
    checkpoint.pt; without one of its own it continues from the furthest checkpoint among the `siblings` run folders
    that it can (lib.resume.adopt: a longer DRaFT from the run's shorter one).

    A non-finite loss, reward, KL or gradient norm stops training before the update with TrainingDiverged, naming
    the run (`run`, default: the folder two levels up, results/<run>/train/<name>), the step and the quantity;
    nothing after the last finite checkpoint is written.

    Under `accelerate launch` (DDP: one process per GPU, or `--cpu`) every process draws its own prompts and noise,
    the LoRA gradients are averaged across processes before clipping (so the replicas stay identical; train.json
    records a digest of each replica's weights), and the main process writes the files.
    """
    state = process_state()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = _key(domain, cfg)
    model = domain.add_adapter(domain.base_model(), rank=cfg.lora_rank, seed=cfg.seed)
    params = lora_parameters(model)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    rng = torch.Generator().manual_seed(cfg.seed + 1_000_003 * state.process_index)  # each process its own data
    log: list[dict] = []
    trajectory = trajectory_key(domain, cfg)
    if state.is_main_process:
        adopt(out_dir, trajectory, cfg.steps, siblings)
    state.wait_for_everyone()
    start = resume(out_dir / CHECKPOINT, trajectory, cfg.steps, model, opt, rng, log, state.process_index)
    prompts = domain.prompts("train")
    tracker = open_tracker(cfg.tracker, run or out_dir.resolve().parent.parent.name, f"train-{out_dir.name}",
                           out_dir.resolve().parent.parent / "tracking", _settings(cfg), state.is_main_process)
    bar = tqdm(range(start, cfg.steps), desc=f"train {out_dir.name}", disable=not (progress and state.is_main_process),
               initial=start, total=cfg.steps)
    for step in bar:
        t0 = time.perf_counter()
        opt.zero_grad()
        stats = torch.zeros(4)  # reward, kl, loss, diffusion
        for a in range(cfg.grad_accum):
            idx = torch.randint(len(prompts), (cfg.batch_size,), generator=rng).tolist()
            seeds = torch.randint(2**31 - 1, (cfg.batch_size,), generator=rng).tolist()
            out = draft_loss(domain, model, cfg, [prompts[i] for i in idx], seeds, rng, index=step * cfg.grad_accum + a)
            (out["loss"] / cfg.grad_accum).backward()
            stats += torch.stack([out[k].detach().float().cpu() for k in STATS]) / cfg.grad_accum
        if state.num_processes > 1:
            for p in params:
                p.grad = mean_across(p.grad, state)
            stats = mean_across(stats.to(state.device), state).cpu()
        reward, kl, loss, diffusion = stats.tolist()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        for name, value in (("loss", loss), ("reward", reward), ("KL term", kl), ("gradient norm", grad_norm)):
            if not math.isfinite(value):  # the same on every process: stats and gradients are averaged
                bar.close()
                if tracker is not None:  # the tracker's curve ends at the diverging step
                    tracker.log({f"train/{name}": value}, step=step + 1)
                    tracker.finish()
                raise TrainingDiverged(
                    f"run {run or out_dir.resolve().parent.parent.name}, training {out_dir.name}: the {name} is {value} "
                    f"at step {step + 1} of {cfg.steps}; stopped before the update, nothing after the last checkpoint "
                    f"(step {step // cfg.checkpoint_every * cfg.checkpoint_every}) was saved. "
                    f"Lower train.lr (now {cfg.lr:g}) or train.grad_clip (now {cfg.grad_clip:g}) and run again")
        opt.step()
        extra = {"diffusion": diffusion} if cfg.variant == "imagerefl" else {}  # Eq. 5 (0 on ReFL micro-batches)
        log.append({"step": step + 1, "reward": reward, "kl": kl, "loss": loss, **extra, "grad_norm": grad_norm,
                    "seconds": time.perf_counter() - t0})
        if tracker is not None:
            tracker.log({"train/reward": reward, "train/KL term": kl, "train/loss": loss, "train/gradient norm":
                         grad_norm, "train/learning rate": opt.param_groups[0]["lr"],
                         **{f"train/{k} loss": v for k, v in extra.items()}}, step=step + 1)
        bar.set_postfix(reward=f"{reward:.3f}", kl=f"{kl:.2e}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            rngs = gather(rng.get_state(), state)
            if state.is_main_process:  # resumable state, plus the adapter alone in the domain's LoRA format
                save_checkpoint(out_dir / CHECKPOINT, trajectory, model, opt, rngs, log, step + 1)
                domain.save_adapter(model, out_dir / "checkpoints" / f"adapter-step{step + 1:06d}.safetensors")
    if tracker is not None:
        tracker.finish()
    digests = gather(digest(params), state)
    frame = pd.DataFrame(log)
    if state.is_main_process:
        domain.save_adapter(model, out_dir / "adapter.safetensors")
        with atomic_path(out_dir / "log.csv") as tmp:
            frame.to_csv(tmp, index=False)
        meta = {"config": _settings(cfg), "hash": key, "processes": state.num_processes, "replica_digests": digests,
                "files": [file_record(out_dir / name, out_dir) for name in RESULT_FILES]}
        with atomic_path(out_dir / "train.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
    state.wait_for_everyone()
    return model, frame


RESULT_FILES = ("adapter.safetensors", "log.csv")  # recorded with size and sha256 in train.json
STATS = ("reward", "kl", "loss", "diffusion")  # what draft_loss returns, averaged over micro-batches


def why_not_trained(out_dir: Path, cfg: TrainConfig, domain: Domain) -> Optional[str]:
    """None if out_dir holds a finished run of this exact config whose files match train.json; else why not ('' if
    it was never finished with this config, a one-line reason naming the file otherwise)."""
    meta_path = Path(out_dir) / "train.json"
    if not meta_path.exists():
        return ""
    try:
        meta = read_json(meta_path, "training record")
    except ArtefactError as e:
        return str(e)
    if meta.get("hash") != _key(domain, cfg):
        return ""
    if "files" not in meta:
        return f"{meta_path} predates file records"
    for rec in meta["files"]:
        why = mismatch(Path(out_dir) / rec["path"], rec["size"], rec["sha256"])
        if why:
            return f"{Path(out_dir) / rec['path']} {why}"
    return None


def is_trained(out_dir: Path, cfg: TrainConfig, domain: Domain) -> bool:
    """True if out_dir holds a finished run of this exact config and its adapter and log match train.json (they are
    then noted as reused in the running stage's artefact log); a mismatch is reported, naming the file."""
    why = why_not_trained(out_dir, cfg, domain)
    if why:
        print(f"{why}: training {Path(out_dir).name} again", file=sys.stderr)
    if why is not None:
        return False
    for name in (*RESULT_FILES, "train.json"):
        note_artefact(Path(out_dir) / name)
    return True


def trained_adapter(out_dir: Path) -> Path:
    """The adapter of a finished run, checked against the size and sha256 in train.json (ArtefactError naming the
    file otherwise)."""
    out_dir = Path(out_dir)
    fix = "re-run notebook 01 (python -m lib.reproduce <params> --only 01)"
    meta = read_json(out_dir / "train.json", "training record", fix)
    recs = {r["path"]: r for r in meta.get("files", [])}
    rec = recs.get("adapter.safetensors")
    if rec is None:
        raise ArtefactError(f"{out_dir / 'train.json'} records no adapter (it predates file records); {fix}")
    why = mismatch(out_dir / rec["path"], rec["size"], rec["sha256"])
    if why:
        raise ArtefactError(f"{out_dir / rec['path']} {why}; {fix}")
    return out_dir / rec["path"]


def adapter_sha256(out_dir: Path) -> str:
    """The sha256 train.json records for a finished run's adapter (checked by `trained_adapter`)."""
    trained_adapter(out_dir)
    recs = {r["path"]: r for r in read_json(Path(out_dir) / "train.json", "training record")["files"]}
    return recs["adapter.safetensors"]["sha256"]


def _settings(cfg: TrainConfig) -> dict:
    """The settings that shape the trained adapter: all but the tracker, which only copies the curves elsewhere, and
    ImageReFL's settings outside an ImageReFL run (so the other variants' hashes predate and ignore them)."""
    return {k: v for k, v in asdict(cfg).items()
            if k != "tracker" and (cfg.variant == "imagerefl" or not k.startswith("imagerefl_"))}


def _key(domain: Domain, cfg: TrainConfig) -> str:
    """Hash of the training config, the base model it starts from (the domain's stamp) and the reward where the
    stamp leaves it out (`Domain.reward_stamp`; none on the toy, so its earlier keys stay valid)."""
    reward = domain.reward_stamp()  # SD: sd.reward, sd.reward_path
    return config_hash({"train": _settings(cfg), "base": domain.stamp(), **({"reward": reward} if reward else {})})


def trajectory(cfg: TrainConfig) -> TrainConfig:
    """The config without the run's length and checkpoint period, which do not change the weights at a given step:
    two runs with the same trajectory agree step for step (lib.resume)."""
    return replace(cfg, steps=1, checkpoint_every=1)


def trajectory_key(domain: Domain, cfg: TrainConfig) -> str:
    """The key of a training's checkpoints: `_key` of its trajectory."""
    return _key(domain, trajectory(cfg))
