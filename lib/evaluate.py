"""Notebook 03's engine: rewards, alignment and diversity metrics of every sampled method into one tidy metrics.csv.

Rows: method, setting, prompt_set, metric, value, n, ci95 (half-width of the 95 % interval; NaN where none is
defined). Metrics come from the one table `lib.metrics.METRICS`:
- reward (every prompt set): mean over samples, t-interval;
- clip (every prompt set, `metrics.alignment`): CLIP score 100 * cos per sample (`lib.metrics.clip_score`);
- fid, precision, recall, scd, lscd (coverage set): each method's features against the base model's, paired seed
  for seed (Eq. 12-14); interval from `metrics.ci_draws` random halves of the seeds (`lib.metrics.half_sample_ci`);
- dino_diversity (every prompt set with >= 2 samples per prompt): 1 - mean pairwise cosine within a prompt
  (`lib.metrics.pairwise_diversity`), averaged over prompts; interval and n over prompts;
- kl: the chain KL of each fine-tuned model (Fig. 3a);
- ground truth (`metrics.truth`, domains with capability 'truth': the miniature SD world): true_preference,
  true_preference_alt, reward_alt, prompt_accuracy (means over samples, t-interval); mode_entropy and the entropy of
  each mode part (per prompt, in bits, averaged over prompts); true_coverage (per prompt: the share of the modes the
  base samples produce, each at least MODE_SHARE of them, that the method still produces; averaged over prompts).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lib import metrics as M
from lib.domains.base import Domain
from lib.errors import check
from lib.generate import generate
from lib.methods import Method, method_denoiser
from lib.samplers import sample
from lib.store import read_samples
from lib.tables import TableConfig
from lib.train import KLProbe, base_branch

MODE_SHARE = 0.02  # a mode counts as produced by a set of samples of one prompt when it holds >= 2 % of them
PER_SAMPLE_TRUTH = {"true_preference": "true_preference", "true_preference_alt": "true_preference_alt",
                    "reward_alt": "reward_alt", "prompt_accuracy": "prompt_ok"}
ENTROPY_OF = {"mode_entropy": "mode", "position_entropy": "position", "size_entropy": "size",
              "background_entropy": "background"}
NUM_MODES = 16  # modes per prompt of the world (lib.domains.world.render.NUM_MODES)


@dataclass(frozen=True)
class MetricsConfig:
    """Which metrics notebook 03 computes (names of lib.metrics.METRICS)."""

    k: int = 10  # neighbourhood size of precision / recall
    diversity: tuple[str, ...] = ("fid", "precision", "recall", "scd", "lscd")
    alignment: tuple[str, ...] = ()  # "clip": the CLIP score of every prompt set (Fig. 21-24)
    kl_samples: int = 64  # trajectories per prompt for the reward-KL plot (Fig. 3a)
    truth: tuple[str, ...] = ()  # ground-truth metrics (needs 'truth': the miniature SD world), lib.metrics.TRUTH_METRICS
    table: TableConfig = field(default_factory=TableConfig)  # how notebook 04's Table 1 picks a setting per row
    ci_draws: int = 20  # seed half-samples behind the intervals of fid, precision, recall, scd, lscd (0: none)
    # the training whose periodic adapters the Goodhart curve reads (lib.truth.goodhart): 'draft', or a name of
    # sweep.adapters trained past the run's length (e.g. {draft_long: {steps: 160}}) to show where the truth turns
    goodhart: str = "draft"

    def __post_init__(self):
        check("metrics.k", self.k, self.k >= 1, "an integer >= 1")
        check("metrics.ci_draws", self.ci_draws, self.ci_draws == 0 or self.ci_draws >= 2, "0 (none) or an integer >= 2")
        for m in self.diversity:
            check("metrics.diversity", m, m in M.DIVERSITY_METRICS, "any of " + ", ".join(M.DIVERSITY_METRICS))
        for m in self.alignment:
            check("metrics.alignment", m, m == "clip", "'clip'")
        for m in self.truth:
            check("metrics.truth", m, m in M.TRUTH_METRICS, "any of " + ", ".join(M.TRUTH_METRICS))

    @property
    def names(self) -> tuple[str, ...]:
        """Every metric asked for, beyond reward and kl."""
        return (*self.diversity, *self.alignment, *self.truth)


def _row(m: Method, prompt_set: str, metric: str, value: float, n: int, ci95: float = np.nan) -> dict:
    return dict(method=m.method, setting=m.setting, prompt_set=prompt_set, metric=metric, value=value, n=n, ci95=ci95)


def batched(domain: Domain, fn: Callable[[torch.Tensor, list], torch.Tensor], x: np.ndarray, prompts: list,
            batch: int) -> np.ndarray:
    """Apply a function of samples (domain.from_storage of rows of x) in batches, without gradients: (N,) or (N, D)."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            v = fn(domain.from_storage(x[lo: lo + batch]), prompts[lo: lo + batch])
            out.append(np.asarray(v.cpu() if torch.is_tensor(v) else v, dtype=np.float64))
    return np.concatenate(out)


def features_of(domain: Domain, x: np.ndarray, batch: int) -> np.ndarray:
    """Coverage-metric features (N, D) of stored samples."""
    return batched(domain, lambda xb, _: domain.features(xb), x, [None] * len(x), batch)


def truth_of(domain: Domain, x: np.ndarray, prompts: list, batch: int) -> dict[str, np.ndarray]:
    """The domain's per-sample ground truth (`Domain.truth`) of stored samples: name -> (N,)."""
    parts: dict[str, list] = {}
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            for key, v in domain.truth(domain.from_storage(x[lo: lo + batch]), prompts[lo: lo + batch]).items():
                parts.setdefault(key, []).append(np.asarray(v))
    return {key: np.concatenate(v) for key, v in parts.items()}


def truth_rows(m: Method, prompt_set: str, t: dict, prompt_idx: np.ndarray, names: Sequence[str],
               ref: tuple[dict, np.ndarray] | None = None) -> list[dict]:
    """Ground-truth rows of one method (module docstring) from its per-sample truth `t`; `ref` = (the base
    samples' truth, their prompt indices) for true_coverage."""
    rows = []
    for name in names:
        if name in PER_SAMPLE_TRUTH:
            value = M.mean_ci(t[PER_SAMPLE_TRUTH[name]])
        elif name in ENTROPY_OF:
            per = [M.entropy_bits(t[ENTROPY_OF[name]][prompt_idx == j]) for j in np.unique(prompt_idx)]
            value = M.mean_ci(per)
        elif name == "true_coverage" and ref is not None:
            ref_t, ref_p = ref
            per = [M.mode_coverage(ref_t["mode"][ref_p == j], t["mode"][prompt_idx == j], NUM_MODES, MODE_SHARE)
                   for j in np.unique(prompt_idx)]
            value = M.mean_ci([v for v in per if v == v])
        else:
            continue
        mean, half, n = value
        rows.append(_row(m, prompt_set, name, mean, n, half))
    return rows


def method_rows(domain: Domain, m: Method, prompt_set: str, x: np.ndarray, prompt_idx: np.ndarray,
                ref_features: np.ndarray | None, names: Sequence[str], k: int, batch: int,
                features: np.ndarray | None = None, ref_truth: tuple[dict, np.ndarray] | None = None,
                truth: dict | None = None, ci_draws: int = 0) -> list[dict]:
    """The rows of one method on one prompt set: reward, then every metric in `names` that applies (feature
    metrics only with `ref_features`, the base model's, with intervals from `ci_draws` seed half-samples; `features`
    of x when already computed; ground-truth
    metrics from `truth` of x or computed here, true_coverage only with `ref_truth`, the base samples' truth and
    prompt indices)."""
    texts = domain.prompts(prompt_set)
    prompts = [texts[j] for j in prompt_idx]
    mean, half, n = M.mean_ci(batched(domain, domain.reward, x, prompts, batch))
    rows = [_row(m, prompt_set, "reward", mean, n, half)]
    if "clip" in names:
        mean, half, n = M.mean_ci(batched(domain, domain.clip_scores, x, prompts, batch))
        rows.append(_row(m, prompt_set, "clip", mean, n, half))
    if "dino_diversity" in names and np.bincount(prompt_idx).max() >= 2:
        emb = batched(domain, lambda xb, _: domain.embeddings(xb), x, prompts, batch)
        per_prompt = [M.pairwise_diversity(emb[prompt_idx == j], np.zeros(int((prompt_idx == j).sum())))
                      for j in np.unique(prompt_idx) if (prompt_idx == j).sum() >= 2]
        mean, half, n = M.mean_ci(per_prompt)
        rows.append(_row(m, prompt_set, "dino_diversity", mean, n, half))
    feature_metrics = [name for name in names if name in M.FEATURE_METRICS]
    if ref_features is not None and feature_metrics:
        f = features if features is not None else features_of(domain, x, batch)
        for name in feature_metrics:
            half = M.half_sample_ci(name, ref_features, f, k, ci_draws) if ci_draws else float("nan")
            rows.append(_row(m, prompt_set, name, M.against_base(name, ref_features, f, k=k), len(f), half))
    truth_names = [name for name in names if name in M.TRUTH_METRICS]
    if truth_names:
        t = truth if truth is not None else truth_of(domain, x, prompts, batch)
        rows += truth_rows(m, prompt_set, t, prompt_idx, truth_names, ref_truth)
    return rows


def evaluate(domain: Domain, methods: Sequence[Method], samples_dir, prompt_sets: Sequence[str], names: Sequence[str],
             k: int = 10, batch: int = 512, progress: bool = True, ci_draws: int = 0) -> pd.DataFrame:
    """Tidy metrics of every method on every prompt set (feature metrics on 'coverage' against the base samples,
    intervals from `ci_draws` seed half-samples)."""
    rows = []
    for ps in prompt_sets:
        ref_x, ref_p, ref_s = read_samples(samples_dir, f"{ps}/{Method('base').key}")
        ref_f = features_of(domain, ref_x, batch) if ps == "coverage" else None
        ref_t = None
        if any(name in M.TRUTH_METRICS for name in names):
            texts = domain.prompts(ps)
            ref_t = (truth_of(domain, ref_x, [texts[j] for j in ref_p], batch), ref_p)
        for m in tqdm(methods, desc=f"metrics {ps}", disable=not progress):
            x, p, s = read_samples(samples_dir, f"{ps}/{m.key}")
            if not (np.array_equal(p, ref_p) and np.array_equal(s, ref_s)):
                raise ValueError(f"{m.key}: prompts/seeds differ from the base samples; re-run notebook 02")
            is_base = m == Method("base")
            rows += method_rows(domain, m, ps, x, p, ref_f, names, k, batch, features=ref_f if is_base else None,
                                ref_truth=ref_t, truth=ref_t[0] if is_base and ref_t is not None else None,
                                ci_draws=ci_draws)
    return pd.DataFrame(rows)


def chain_kl(domain: Domain, model: torch.nn.Module, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
    """sum_t mean((eps_tuned - eps_base)^2) along the tuned model's own trajectory (AIG paper Eq. 4): (N,)."""
    probe = KLProbe(domain.denoiser(model), base_branch(domain, model), every_step=True)
    with torch.no_grad():
        sample(probe, domain.scheduler, domain.noise(seeds), domain.encode(list(prompts)), domain.num_steps)
    return torch.as_tensor(probe.total).cpu().double().numpy()


def kl_rows(domain: Domain, models: dict[Method, torch.nn.Module], per_prompt: int, offset: int = 10**6) -> list[dict]:
    """Fig. 3a data: the chain KL of each fine-tuned model on the coverage prompts (mean, 95 % interval, n)."""
    names = domain.prompts("coverage")
    rows = []
    for m, model in models.items():
        vals = np.concatenate([chain_kl(domain, model, [p] * per_prompt, range(offset + j * per_prompt, offset + (j + 1) * per_prompt))
                               for j, p in enumerate(names)])
        mean, half, n = M.mean_ci(vals)
        rows.append(_row(m, "coverage", "kl", mean, n, half))
    return rows


def checkpoint_metrics(domain: Domain, checkpoints: dict[int, str], pairs: Sequence[tuple[int, int]],
                       names: Sequence[str], k: int = 10, batch: int = 512, prompt_set: str = "coverage",
                       progress: bool = True) -> pd.DataFrame:
    """The metrics of DRaFT's periodic adapters {training step: adapter file} on (prompt index, seed) pairs, with
    the base model as step 0 and as the reference of the feature and coverage metrics: the Goodhart curve of reward
    hacking (proxy reward against the truth along training). Rows as metrics.csv plus a column `step`."""
    texts = domain.prompts(prompt_set)
    idx = np.array([j for j, _ in pairs])
    rows, ref_f, ref_t = [], None, None
    steps = sorted(checkpoints)
    for step in tqdm([0, *steps], desc="checkpoints", disable=not progress):
        model = domain.load_adapter(checkpoints[step or steps[0]], adapter_name="checkpoint")
        m = Method("base" if step == 0 else "draft")
        with method_denoiser(domain, m, model) as den:
            x = generate(domain, den, texts, list(pairs), batch)
        if step == 0:
            ref_f = features_of(domain, x, batch)
            ref_t = (truth_of(domain, x, [texts[j] for j in idx], batch), idx) \
                if any(name in M.TRUTH_METRICS for name in names) else None
        got = method_rows(domain, m, prompt_set, x, idx, ref_f, names, k, batch,
                          features=ref_f if step == 0 else None, ref_truth=ref_t,
                          truth=ref_t[0] if step == 0 and ref_t is not None else None)
        rows += [dict(r, step=step) for r in got]
    return pd.DataFrame(rows)
