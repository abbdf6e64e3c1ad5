"""The toy domain: a 2-D conditional Gaussian-mixture "text-to-sample" problem with an MLP denoiser.

Each "prompt" c is a 2-D GMM whose modes sit on a ring. The reward r(x, c) is smooth, bounded and
differentiable: a bump next to every mode (shifted by `reward_shift`, a reference mismatch of the kind
the AIG paper discusses) with one bump higher than the rest (the global maximum), plus a broad bump around
the global maximum that pulls every sample towards it. Unregularised reward maximisation therefore collapses
onto one mode (Lemma 1), while every mode has a high-reward region close to it (the assumption of A.5).
Sampling goes through diffusers' DDIM scheduler, the same code path as Stable Diffusion.

Run layout: the pre-trained base model is `<run>/models/base.safetensors` with `base.json` (config hash, final
loss) next to it; `prepare` trains it when missing or stale.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from lib.distributed import device_for
from lib.domains.toy_config import ToyConfig
from lib.drawing import family_color
from lib.errors import ArtefactError
from lib.files import atomic_path, config_hash, file_record, mismatch, note_artefact, read_json, sha256_file, write_text
from lib.guidance import Denoiser, classifier_free
from lib.samplers import per_sample_noise


def _load(path: Path, fix: str) -> dict:
    """A safetensors file's tensors, or an ArtefactError naming the file (missing, truncated, not safetensors)."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ArtefactError(f"{path}: missing; {fix}") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ArtefactError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                            f"{fix}") from None


def _time_embedding(t: torch.Tensor, dim: int, T: int) -> torch.Tensor:
    """Sinusoidal embedding of s = t / T: (B,) -> (B, dim)."""
    freqs = torch.exp(torch.arange(dim // 2, dtype=torch.float32) * (-math.log(1000.0) / (dim // 2)))
    arg = (t.float()[:, None] / T) * 1000.0 * freqs[None, :].to(t.device)
    return torch.cat([arg.sin(), arg.cos()], dim=1)


class ToyDenoiser(nn.Module):
    """eps_theta(x_t, c, t): an MLP over [x, time embedding, prompt embedding]; index num_prompts is the null prompt."""

    def __init__(self, num_prompts: int, hidden: int = 128, depth: int = 3, emb: int = 32, num_train_timesteps: int = 1000):
        super().__init__()
        self.emb, self.T = emb, num_train_timesteps
        self.prompt = nn.Embedding(num_prompts + 1, emb)
        self.inp = nn.Linear(2 + 2 * emb, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        """x (B, 2), t scalar or (B,), cond (B,) prompt indices -> eps (B, 2)."""
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        h = torch.cat([x, _time_embedding(t, self.emb, self.T), self.prompt(cond)], dim=1)
        h = nn.functional.silu(self.inp(h))
        for layer in self.hidden:
            h = h + nn.functional.silu(layer(h))
        return self.out(h)


LORA_TARGETS = r".*(inp|hidden\.\d+|out)$"
REAL_STREAM = 4  # the seed-sequence stream of real_samples (seed 004, ImageReFL), apart from the noise's generator


def toy_scheduler(num_train_timesteps: int = 1000) -> DDIMScheduler:
    """DDIM, linear betas, "trailing" steps ending at alpha_bar = 1 (so the last step changes x: DRaFT-1 has a
    gradient); the toy's sampler for training, evaluation and the explorer."""
    return DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", clip_sample=False,
                         timestep_spacing="trailing", set_alpha_to_one=True)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch's global generator only inside this block, restoring it afterwards (lib never seeds globally)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class ToyDomain:
    """The 2-D toy domain (see module docstring); implements lib.domains.base.Domain.

    `root` is the run folder (the base model lives in root/models/); without it, `pretrain(path)` sets the path.
    """

    name = "toy"
    preview_samples = 64  # points: the explorer previews the run's first 64 seeds of every prompt at once
    paired_calls = False  # two calls: one call saves 13 % at 16 rows but loses 1-6 % at the sweep's 256 (lib.bench)

    def __init__(self, cfg: ToyConfig, root: Optional[Path] = None, device: str | torch.device = "cpu"):
        self.cfg, self.device = cfg, device_for(device) if isinstance(device, str) else torch.device(device)
        self.num_train_timesteps, self.num_steps = cfg.num_train_timesteps, cfg.num_steps
        self.guidance_scale = cfg.guidance_scale
        self.scheduler = toy_scheduler(cfg.num_train_timesteps)
        self.means, self.peaks, self.heights, self.top = self._layout()
        self.base_path = Path(root) / "models" / "base.safetensors" if root else None
        self._fields: dict = {}

    @classmethod
    def capabilities(cls, config: ToyConfig) -> frozenset[str]:
        """Reward, the 2-D points as features, and the chain KL; no image embeddings, no CLIP."""
        return frozenset({"reward", "features", "chain"})

    # ---- the run's base model ----------------------------------------------------------------------------
    def _base_record(self) -> Path:
        return self.base_path.with_suffix(".json")

    def prepare(self, force: bool = False, progress: bool = True) -> Optional[dict]:
        """Pre-train the base model unless a model of this exact config is stored; returns its record if trained."""
        if self.base_path is None:
            raise ValueError("ToyDomain.prepare needs the run folder (ToyDomain(cfg, root=...))")
        key = config_hash(asdict(self.cfg))
        rec = self._base_record()
        if not force and rec.exists():
            why = self._why_stale(key)
            if why is None:
                note_artefact(self.base_path)
                note_artefact(rec)
                return None
            if why:
                print(f"{why}: pre-training the base model again")
        losses = self.pretrain(self.base_path, progress=progress)
        info = {"hash": key, "final_loss": sum(losses[-100:]) / len(losses[-100:]), "steps": len(losses),
                "file": file_record(self.base_path, self.base_path.parent)}
        write_text(rec, json.dumps(info))
        return info

    def _why_stale(self, key: str) -> Optional[str]:
        """None if the stored base model is of this config and matches its record; '' if it is of another config;
        else why not, naming the file."""
        try:
            info = read_json(self._base_record(), "base model record")
        except ArtefactError as e:
            return str(e)
        if info.get("hash") != key:
            return ""
        if "file" not in info:
            return f"{self._base_record()} predates file records"
        why = mismatch(self.base_path, info["file"]["size"], info["file"]["sha256"])
        return f"{self.base_path} {why}" if why else None

    def stamp(self) -> dict:
        """The toy config and the sha256 of the stored base model."""
        base = self.base_path
        digest = sha256_file(base) if base is not None and base.exists() else None
        return {"domain": self.name, "config": asdict(self.cfg), "base_sha256": digest}

    def reward_stamp(self) -> dict:
        """Nothing: the toy's reward is part of its config, which stamp() holds."""
        return {}

    # ---- the problem -------------------------------------------------------------------------------------
    def _layout(self):
        """Mode centres, reward bumps and heights per prompt, and the global maximum of each prompt."""
        c = self.cfg
        means, peaks, heights, top = [], [], [], []
        for j in range(c.num_prompts):
            m = c.modes[j % len(c.modes)]
            ang = 2 * np.pi * (np.arange(m) / m + 0.13 * j)
            mu = c.radius * np.stack([np.cos(ang), np.sin(ang)], 1)  # (m, 2)
            # each bump sits outward-and-sideways of its mode: a shift plus a rotation of the whole set
            shift = c.reward_shift * np.stack([np.cos(ang + 0.8), np.sin(ang + 0.8)], 1)
            h = np.full(m, c.reward_other)
            best = j % m
            h[best] = c.reward_top
            means.append(torch.tensor(mu, dtype=torch.float32))
            peaks.append(torch.tensor(mu + shift, dtype=torch.float32))
            heights.append(torch.tensor(h, dtype=torch.float32))
            top.append(peaks[-1][best])
        return means, peaks, heights, top

    def prompts(self, split: str = "train") -> list[str]:
        """The prompts are named 'gmm-j'; every split uses all of them (seeds differ by split)."""
        if split not in ("train", "eval", "coverage"):
            raise ValueError(f"split = {split!r}; allowed: 'train', 'eval', 'coverage'")
        return [f"gmm-{j}" for j in range(self.cfg.num_prompts)]

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompt names -> indices (B,)."""
        return torch.tensor([int(p.split("-")[1]) for p in prompts], device=self.device)

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """x_T (B, 2) from per-sample generators."""
        return per_sample_noise((2,), seeds, device=self.device)

    def reward(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """r(x, c) = sum_i h_i exp(-|x - p_i|^2 / 2w^2) + a exp(-|x - p*|^2 / 2W^2): (B,), bounded, smooth."""
        c = self.cfg
        idx = self.encode(prompts).tolist()
        out = []
        for j in sorted(set(idx)):
            rows = [i for i, p in enumerate(idx) if p == j]
            x = samples[rows]  # (b, 2)
            d2 = ((x[:, None, :] - self.peaks[j].to(x)[None]) ** 2).sum(-1)  # (b, m)
            bumps = (self.heights[j].to(x) * torch.exp(-d2 / (2 * c.reward_width**2))).sum(1)
            pull = c.reward_pull * torch.exp(-((x - self.top[j].to(x)) ** 2).sum(1) / (2 * c.reward_pull_width**2))
            out.append((rows, bumps + pull))
        r = torch.empty(samples.shape[0], dtype=samples.dtype, device=samples.device)
        for rows, v in out:
            r = r.index_put((torch.tensor(rows, device=r.device),), v)
        return r

    def mode_of(self, samples: torch.Tensor, prompts: Sequence[str]) -> np.ndarray:
        """Index of the nearest mode of each sample's own prompt: (B,)."""
        idx = self.encode(prompts).tolist()
        return np.array([int(((self.means[j] - x.detach().cpu()) ** 2).sum(1).argmin()) for x, j in zip(samples, idx)])

    # ---- the model ---------------------------------------------------------------------------------------
    def new_model(self) -> ToyDenoiser:
        """A freshly initialised denoiser (seeded by cfg.seed)."""
        c = self.cfg
        with _seeded(c.seed):
            return ToyDenoiser(c.num_prompts, c.hidden, c.depth, num_train_timesteps=c.num_train_timesteps).to(self.device)

    def pretrain(self, path: Path, progress: bool = True) -> list[float]:
        """Denoising score matching on the GMMs (eps-prediction, null prompt at rate cond_dropout); saves to path."""
        c = self.cfg
        model, gen = self.new_model(), torch.Generator().manual_seed(c.seed + 1)
        opt = torch.optim.AdamW(model.parameters(), lr=c.pretrain_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, c.pretrain_steps)
        abar = self.scheduler.alphas_cumprod
        losses = []
        for _ in tqdm(range(c.pretrain_steps), desc="pre-train base", disable=not progress):
            j = torch.randint(c.num_prompts, (c.pretrain_batch,), generator=gen)
            x0 = self._batch(j, gen)  # (B, 2)
            t = torch.randint(c.num_train_timesteps, (c.pretrain_batch,), generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            a = abar[t][:, None]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            cond = torch.where(torch.rand(c.pretrain_batch, generator=gen) < c.cond_dropout, c.num_prompts, j)
            loss = ((model(xt, t, cond) - eps) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        with atomic_path(path) as tmp:
            save_file(model.state_dict(), str(tmp))
        self.base_path = Path(path)
        return losses

    def _batch(self, prompts: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One data sample per prompt index: (B,) -> (B, 2)."""
        k = torch.floor(torch.rand(len(prompts), generator=gen) * torch.tensor([len(self.means[int(p)]) for p in prompts])).long()
        mu = torch.stack([self.means[int(p)][int(i)] for p, i in zip(prompts, k)])
        return mu + self.cfg.mode_std * torch.randn(len(prompts), 2, generator=gen)

    def real_samples(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """Data x_0 (B, 2) from each prompt's GMM (ImageReFL's real samples), row i from its own generator seeded
        with seeds[i] on a stream apart from `noise` (so x_0 and the noise that renoises it are independent)."""
        idx = self.encode(prompts).cpu()
        rows = [self._batch(idx[i: i + 1], torch.Generator().manual_seed(
            int(np.random.SeedSequence([int(s), REAL_STREAM]).generate_state(1)[0]))) for i, s in enumerate(seeds)]
        return torch.cat(rows).to(self.device)  # (B, 2)

    def base_model(self) -> ToyDenoiser:
        """The pre-trained denoiser, frozen."""
        if self.base_path is None or not self.base_path.exists():
            raise FileNotFoundError(f"no pre-trained toy base model at {self.base_path}: run pretrain() (notebook 01) first")
        model = self.new_model()
        model.load_state_dict(_load(self.base_path, "re-run notebook 01, which pre-trains it"))
        return model.requires_grad_(False).eval()

    @property
    def null_cond(self) -> torch.Tensor:
        """The null prompt's index (1,), the unconditional row of classifier-free guidance."""
        return torch.tensor([self.cfg.num_prompts], device=self.device)

    def denoiser(self, model: nn.Module, scale: Optional[float] = None) -> Denoiser:
        """(x, t, cond) -> eps, with classifier-free guidance at `scale` (default cfg.guidance_scale)."""
        return classifier_free(model, self.null_cond, self.cfg.guidance_scale if scale is None else float(scale))

    def add_adapter(self, model: nn.Module, rank: int, seed: int) -> nn.Module:
        """Inject a fresh LoRA adapter (B = 0, so the model starts equal to the base) on every linear layer."""
        with _seeded(seed):
            model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS), model)
        for n, p in model.named_parameters():
            p.requires_grad_("lora_" in n)
        return model

    def save_adapter(self, model: nn.Module, path: Path) -> None:
        """LoRA weights as safetensors."""
        with atomic_path(path) as tmp:
            save_file(get_peft_model_state_dict(model), str(tmp))

    def load_adapter(self, path: Path) -> nn.Module:
        """Base model with the LoRA adapter stored at path (frozen)."""
        state = _load(path, "re-run notebook 01, which trains it")
        rank = next((v.shape[0] for k, v in state.items() if "lora_A" in k), None)
        if rank is None:
            raise ArtefactError(f"{path}: holds no LoRA weights (lora_A); re-run notebook 01, which trains it")
        model = self.add_adapter(self.base_model(), rank=rank, seed=0)
        set_peft_model_state_dict(model, state)
        return model.requires_grad_(False).eval()

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """The toy's samples are its latents."""
        return x0

    def features(self, samples: torch.Tensor) -> np.ndarray:
        """The 2-D samples themselves: (N, 2)."""
        return samples.detach().cpu().double().numpy().reshape(len(samples), -1)

    def embeddings(self, samples: torch.Tensor) -> np.ndarray:
        """Not available: 2-D points have no image embedding (config refuses dino_diversity for the toy)."""
        raise NotImplementedError("the toy domain has no image embedding for DinoDiversity")

    def clip_scores(self, samples: torch.Tensor, prompts: Sequence[str]) -> np.ndarray:
        """Not available: the toy's prompts are indices, not text (config refuses clip for the toy)."""
        raise NotImplementedError("the toy domain has no image-text model for a CLIP score")

    def to_storage(self, samples: torch.Tensor) -> np.ndarray:
        """float32 points (N, 2)."""
        return samples.detach().cpu().float().numpy()

    def from_storage(self, stored: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(stored, dtype=np.float32))

    def reward_field(self, prompt: int, lim: float = 2.6, n: int = 120):
        """Reward on a grid for contour plots: x (n, n), y (n, n), r (n, n) (computed once per prompt)."""
        key = (int(prompt), float(lim), int(n))
        if key not in self._fields:
            g = torch.linspace(-lim, lim, n)
            gx, gy = torch.meshgrid(g, g, indexing="xy")
            pts = torch.stack([gx.ravel(), gy.ravel()], 1)
            with torch.no_grad():
                r = self.reward(pts, [f"gmm-{prompt}"] * len(pts)).reshape(n, n)
            self._fields[key] = (gx.numpy(), gy.numpy(), r.numpy())
        return self._fields[key]

    def sample_grid(self, samples: dict, lim: float = 2.6):
        """Scatter grid (Fig. 2 style: method rows x prompt columns) over the reward landscape in grey."""
        import matplotlib.pyplot as plt  # figures only where drawn

        n = self.cfg.num_prompts
        fig, axes = plt.subplots(len(samples), n, figsize=(2.3 * n, 2.3 * len(samples)), squeeze=False)
        for r, (name, (x, p)) in enumerate(samples.items()):
            for j in range(n):
                ax = axes[r][j]
                self.draw_samples(ax, np.asarray(x)[np.asarray(p) == j], np.full(int((np.asarray(p) == j).sum()), j),
                                  family_color(name), lim=lim)
                if r == 0:
                    ax.set_title(f"prompt gmm-{j}", fontsize=9)
                if j == 0:
                    ax.set_ylabel(name, fontsize=9)
        fig.tight_layout()
        return fig

    def draw_samples(self, ax, stored: np.ndarray, prompt_index: np.ndarray, color=None, lim: float = 2.6) -> None:
        """Points of one prompt over its reward landscape (grey contours)."""
        j = int(prompt_index[0]) if len(prompt_index) else 0
        gx, gy, z = self.reward_field(j, lim)
        ax.contourf(gx, gy, z, levels=12, cmap="Greys", alpha=0.5)
        x = np.asarray(stored)
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color=color or "tab:gray")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xticks=[], yticks=[])

    def trajectory_figure(self, paths: dict[str, np.ndarray], prompt: int, lim: float = 2.6):
        """Fig. 1 style: sampling trajectories (steps+1, B, 2) of each method over the reward landscape."""
        import matplotlib.pyplot as plt  # figures only where drawn

        fig, axes = plt.subplots(1, len(paths), figsize=(4 * len(paths), 4), squeeze=False)
        gx, gy, z = self.reward_field(prompt, lim)
        for ax, (name, xs) in zip(axes[0], paths.items()):
            ax.contourf(gx, gy, z, levels=12, cmap="Greys", alpha=0.5)
            color = family_color(name)
            for b in range(xs.shape[1]):
                ax.plot(xs[:, b, 0], xs[:, b, 1], color=color, lw=0.8, alpha=0.7)
            ax.scatter(xs[-1, :, 0], xs[-1, :, 1], color=color, s=18, edgecolor="k", zorder=3)
            ax.scatter(xs[0, :, 0], xs[0, :, 1], color="white", s=10, edgecolor="k", zorder=3)
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xticks=[], yticks=[], title=name)
        fig.suptitle("sampling trajectories from the same noise (white: x_T, filled: x_0; grey: reward)")
        fig.tight_layout()
        return fig
