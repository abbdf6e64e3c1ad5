"""Notebook 04's ground-truth figures, for domains with the capability 'truth' (the miniature SD world,
lib.domains.world): the proxy reward against the annotators' true preference, each diversity proxy against the true
mode coverage, the fronts of the second reward and of the true diversity, a larger sample grid of one caption, and
the Goodhart curve along DRaFT's training checkpoints. Other runs skip them (`has_truth`)."""
from __future__ import annotations

import pandas as pd

from lib.config import RunConfig
from lib.domains.registry import entry
from lib.evaluate import checkpoint_metrics
from lib.generate import paired_seeds
from lib.plots import (diversity_truth_figure, goodhart_figure, pareto_figure, proxy_truth_figure, save,
                       truth_correlations)
from lib.runs import RunPaths, make_domain
from lib.stages import showcase
from lib.store import read_samples

TRUE_DIVERSITY = ("true_coverage", "mode_entropy", "background_entropy", "position_entropy")
GOODHART_METRICS = ("recall", "true_preference", "true_coverage", "prompt_accuracy", "background_entropy",
                    "position_entropy", "size_entropy")


def has_truth(cfg: RunConfig, df: pd.DataFrame) -> bool:
    """Whether the run's domain knows the ground truth and metrics.csv carries it."""
    return "truth" in entry(cfg.domain).domain.capabilities(cfg.domain_config) and "true_coverage" in set(df.metric)


def truth_figures(cfg: RunConfig, paths: RunPaths, df: pd.DataFrame, per_prompt: int = 8) -> pd.DataFrame:
    """Write proxy_vs_true, diversity_vs_truth, the reward_alt and true-diversity fronts, samples_one_caption (the
    showcase methods, the first caption, the same `per_prompt` seeds in every row) and truth_correlations.csv;
    returns the correlations of each diversity proxy with the truth."""
    fig = paths.figures
    save(proxy_truth_figure(df), fig / "proxy_vs_true.png")
    save(diversity_truth_figure(df, cfg.metrics.diversity), fig / "diversity_vs_truth.png")
    save(pareto_figure(df, cfg.metrics.diversity, y="reward_alt"), fig / "pareto_reward_alt_diversity.png")
    save(pareto_figure(df, list(TRUE_DIVERSITY), y="reward"), fig / "pareto_reward_truth.png")
    shown = {}
    for m in showcase(cfg):
        x, p, _ = read_samples(paths.samples, f"coverage/{m.key}")
        shown[m.label] = (x[p == 0][:per_prompt], p[p == 0][:per_prompt])
    save(make_domain(cfg, paths).sample_grid(shown, prompts_shown=1, per_prompt=per_prompt),
         fig / "samples_one_caption.png")
    corr = truth_correlations(df, cfg.metrics.diversity)
    corr.to_csv(paths.root / "truth_correlations.csv", index=False)
    return corr


def goodhart(cfg: RunConfig, paths: RunPaths, seeds_per_prompt: int = 16, progress: bool = True) -> pd.DataFrame:
    """The periodic adapters (train.checkpoint_every) of DRaFT or of the training `metrics.goodhart` names, sampled on
    every coverage caption with fresh seeds (lib.evaluate.checkpoint_metrics, the base model as step 0): writes
    checkpoints.csv and goodhart.png (the run's own DRaFT length marked) and returns the table (metric x step)."""
    domain = make_domain(cfg, paths)
    ckpts = {int(f.stem.split("step")[-1]): str(f)
             for f in sorted((paths.adapter(cfg.metrics.goodhart) / "checkpoints").glob("adapter-step*.safetensors"))}
    pairs = paired_seeds(len(domain.prompts("coverage")), seeds_per_prompt, cfg.sweep.seed_offset + 10**6)
    ck = checkpoint_metrics(domain, ckpts, pairs, GOODHART_METRICS, k=cfg.metrics.k, batch=cfg.sweep.batch_size,
                            progress=progress)
    ck.to_csv(paths.root / "checkpoints.csv", index=False)
    save(goodhart_figure(ck, mark=cfg.train.steps), paths.figures / "goodhart.png")
    return ck.pivot_table(index="step", columns="metric", values="value")
