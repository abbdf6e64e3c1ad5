"""The work of notebooks 01-04 as functions (the notebooks only call these and show the results).

Every stage is resumable: an artefact whose config hash matches, and whose files match the size and sha256 recorded
when they were written, is not recomputed unless force=True (one that no longer matches is recomputed, saying
why). Stages that write hold the run folder's lock (`lib.files.run_lock`; a no-op under the runner, which holds it).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lib.adapters import DRAFT, RewardDomain
from lib.config import RunConfig, named_training
from lib.distributed import process_state
from lib.domains.base import Domain
from lib.domains.registry import make_domain as build_domain
from lib.evaluate import evaluate, kl_rows
from lib.files import atomic_path, run_lock
from lib.generate import generate, paired_seeds
from lib.methods import Method, method_denoiser, sweep_methods, sweep_stamp
from lib.metrics import METRICS
from lib.pareto import dominance_table
from lib.runs import RunPaths, make_domain, training_name
from lib.samplers import sample
from lib.shards import sample_part
from lib.store import (clear_samples, mark_done, note_reused, read_samples, stamp_of, why_not_done,
                       write_samples)
from lib.tracking import log_metrics
from lib.train import TrainConfig, adapter_sha256, is_trained, train, trained_adapter, trajectory


def kl_configs(cfg: RunConfig) -> dict[Method, TrainConfig]:
    """The training config of DRaFT (lambda = 0) and of every KL-regularised run of the sweep."""
    out = {Method("draft"): dataclasses.replace(cfg.train, kl_lambda=0.0)}
    out.update({Method("kl", lam): dataclasses.replace(cfg.train, kl_lambda=float(lam)) for lam in cfg.sweep.kl_lambdas})
    return out


def _lambda(m: Method) -> float:
    return 0.0 if m.method == "draft" else float(m.value)


def trainings(cfg: RunConfig) -> dict[str, tuple[TrainConfig, Any]]:
    """Every fine-tuning run by its folder name under train/: 'draft' (lambda = 0), 'kl_lambda-<l>' for each KL run,
    then each extra training of sweep.adapters by its name: (train config, domain settings it trains with)."""
    out = {training_name(_lambda(m)): (tcfg, cfg.domain_config) for m, tcfg in kl_configs(cfg).items()}
    out.update({name: named_training(cfg, name) for name in cfg.sweep.adapters})
    return out


def training_chains(cfg: RunConfig) -> list[list[str]]:
    """The run's trainings grouped by trajectory (lib.train.trajectory, and the same domain settings): each group in
    order of length, so that a longer one continues from the shorter one's checkpoint (lib.resume), and the groups
    longest first (the order a pool of processes finishes soonest in)."""
    groups: dict[Any, list[tuple[int, str]]] = {}
    for name, (tcfg, settings) in trainings(cfg).items():
        groups.setdefault((trajectory(tcfg), repr(settings)), []).append((tcfg.steps, name))
    return [[name for _, name in g] for g in sorted((sorted(g) for g in groups.values()), key=lambda g: -g[-1][0])]


def _training_domain(cfg: RunConfig, paths: RunPaths, domain: Domain, settings: Any) -> Domain:
    """The domain a training runs on: the run's, or the run's built with a named training's other reward."""
    if settings == cfg.domain_config:
        return domain
    return RewardDomain(build_domain(cfg.domain, settings, root=paths.root, device=cfg.device), settings.reward)


def stage_train(cfg: RunConfig, paths: RunPaths, force: bool = False, progress: bool = True,
                include_kl: bool = True, lambdas: Optional[Sequence[float]] = None,
                prepare: bool = True, names: Optional[Sequence[str]] = None) -> dict[str, pd.DataFrame]:
    """Notebook 01: the domain's preparation (the toy pre-trains its base), then DRaFT, every KL run and every extra
    training of sweep.adapters; returns their step logs. `lambdas` keeps only those DRaFT / KL runs (0 = DRaFT);
    a cluster job (lib.cluster) trains only the runs `names` (folder names under train/), prepare=False."""
    state = process_state()  # one process in a notebook; several under `accelerate launch -m lib.launch`
    keep = None if lambdas is None else {training_name(float(lam)) for lam in lambdas}
    with _locked(paths, state):
        domain = make_domain(cfg, paths)
        if state.is_main_process and prepare:
            domain.prepare(force=force, progress=progress)
        state.wait_for_everyone()
        logs, runs = {}, trainings(cfg)
        for name in [n for chain in training_chains(cfg) for n in chain]:  # a longer run after the shorter one
            if (name.startswith("kl_lambda-") and not include_kl) or (keep is not None and name not in keep) \
                    or (names is not None and name not in names):
                continue
            tcfg, settings = runs[name]
            out, dom = paths.adapter(name), _training_domain(cfg, paths, domain, settings)
            if force or not is_trained(out, tcfg, dom):
                train(dom, tcfg, out, progress=progress, run=cfg.run, siblings=[paths.adapter(n) for n in runs])
            logs[_label(name)] = pd.read_csv(out / "log.csv")
    order = [_label(n) for n in runs]
    return {k: logs[k] for k in sorted(logs, key=order.index)}  # in the order of trainings(cfg)


def _label(name: str) -> str:
    """A training's name in the curves' legend: DRaFT, KL λ=<l>, or its folder name."""
    return {DRAFT: "DRaFT"}.get(name, f"KL λ={name.removeprefix('kl_lambda-')}" if name.startswith("kl_lambda-")
                                else name)


def _locked(paths: RunPaths, state):
    """The run folder's lock, taken by the main process (the other processes of a launch run under it)."""
    return run_lock(paths.root) if state.is_main_process else contextlib.nullcontext()


def load_models(cfg: RunConfig, paths: RunPaths, domain: Domain) -> tuple[torch.nn.Module, dict[float, torch.nn.Module]]:
    """The DRaFT model and the KL models (by lambda) of a trained run."""
    tuned = domain.load_adapter(trained_adapter(paths.train(0.0)))
    kl = {float(m.value): domain.load_adapter(trained_adapter(paths.train(_lambda(m))))
          for m in kl_configs(cfg) if m.method == "kl"}
    return tuned, kl


def load_adapters(cfg: RunConfig, paths: RunPaths, domain: Domain) -> dict[str, torch.nn.Module]:
    """The extra trainings of sweep.adapters that the sweep's methods use (LoRA mix, tuned branch), by name."""
    used = {n for m in sweep_methods(cfg.sweep) for n in m.adapters} - {DRAFT}
    return {n: domain.load_adapter(trained_adapter(paths.adapter(n))) for n in cfg.sweep.adapters if n in used}


def _shas(cfg: RunConfig, paths: RunPaths) -> dict[str, str]:
    """The sha256 of every trained adapter of the run, by folder name under train/."""
    return {name: adapter_sha256(paths.adapter(name)) for name in trainings(cfg)}


def _model_stamp(shas: dict[str, str], m: Method) -> list:
    """What a method's samples depend on beyond the sweep and the base model: the adapters' sha256 (DRaFT's, a KL
    run's; for a method on named adapters, each of those by its folder)."""
    if m.method == "lora_mix" or m.adapter is not None:
        return [(f"train/{n}/adapter.safetensors", shas[n]) for n in m.adapters]
    names = [DRAFT] + ([training_name(m.value)] if m.method == "kl" else [])
    return [("adapter.safetensors", shas[n]) for n in names]


def stage_sample(cfg: RunConfig, paths: RunPaths, force: bool = False, progress: bool = True) -> pd.DataFrame:
    """Notebook 02: every method x setting on every prompt set with paired seeds; returns a summary table.
    Under several processes each takes every N-th (prompt, seed) pair."""
    state = process_state()
    with _locked(paths, state):
        return _sample(cfg, paths, state, force, progress)


def _sample(cfg: RunConfig, paths: RunPaths, state, force: bool, progress: bool) -> pd.DataFrame:
    domain = make_domain(cfg, paths)
    tuned, kl = load_models(cfg, paths, domain)
    named = load_adapters(cfg, paths, domain)
    methods = sweep_methods(cfg.sweep)
    base = domain.stamp()
    shas = _shas(cfg, paths)
    rows = []
    for ps in cfg.sweep.prompt_sets:
        names = domain.prompts(ps)
        per = cfg.sweep.samples_per_prompt if ps == "coverage" else cfg.sweep.eval_samples_per_prompt
        pairs = paired_seeds(len(names), per, cfg.sweep.seed_offset)
        mine = list(range(state.process_index, len(pairs), state.num_processes))
        for m in tqdm(methods, desc=f"sampling {ps}", disable=not (progress and state.is_main_process)):
            key = f"{ps}/{m.key}"
            stamp = _sample_stamp(cfg, base, shas, m)
            calls = "-"
            why = None if force else why_not_done(paths.samples, key, stamp)
            if why and state.is_main_process:
                print(f"{why}: sampling {m.label} on {ps} again")
            if force or why is not None:
                if state.is_main_process:
                    clear_samples(paths.samples, key)
                state.wait_for_everyone()
                if mine:  # a process may have nothing to do when there are fewer pairs than processes
                    with method_denoiser(domain, m, tuned, kl, adapters=named) as den:
                        x = generate(domain, den, names, [pairs[i] for i in mine], cfg.sweep.batch_size)
                        calls = dict(getattr(den, "calls", {})) or "-"
                    write_samples(paths.samples, key, x, [pairs[i] for i in mine], stamp, positions=mine,
                                  rank=state.process_index)
                state.wait_for_everyone()
                if state.is_main_process:
                    mark_done(paths.samples, key, stamp, len(pairs),
                              dict(method=m.method, setting=m.setting, prompt_set=ps, prompts=names))
            elif state.is_main_process:
                note_reused(paths.samples, key)
            rows.append(dict(prompt_set=ps, method=m.method, setting=m.setting, n=len(pairs), network_calls=str(calls)))
    state.wait_for_everyone()
    return pd.DataFrame(rows)


def _sample_stamp(cfg: RunConfig, base: dict, shas: dict[str, str], m: Method) -> str:
    """What a sample set of method m is current with: the sweep, the base model's stamp, the method, its adapters."""
    return stamp_of(sweep_stamp(cfg.sweep), base, m.label, _model_stamp(shas, m))


def stage_sample_parts(cfg: RunConfig, paths: RunPaths, units: Sequence[tuple[str, str, int, int]],
                       force: bool = False) -> pd.DataFrame:
    """A cluster job's share of notebook 02 (lib.cluster): units (prompt set, method key, part r, parts W), each
    the r-th of W contiguous batch-aligned runs of the set's pairs (lib.shards: a done part is skipped, the job
    completing the last part writes done.json). Returns one row per unit with its status."""
    domain = make_domain(cfg, paths)
    tuned, kl = load_models(cfg, paths, domain)
    named = load_adapters(cfg, paths, domain)
    methods = {m.key: m for m in sweep_methods(cfg.sweep)}
    base = domain.stamp()
    shas = _shas(cfg, paths)
    rows = []
    for ps, key, rank, world in units:
        m = methods[key]
        names = domain.prompts(ps)
        per = cfg.sweep.samples_per_prompt if ps == "coverage" else cfg.sweep.eval_samples_per_prompt
        pairs = paired_seeds(len(names), per, cfg.sweep.seed_offset)

        def make(mine):
            with method_denoiser(domain, m, tuned, kl, adapters=named) as den:
                return generate(domain, den, names, mine, cfg.sweep.batch_size)

        status = sample_part(paths.samples, f"{ps}/{m.key}", _sample_stamp(cfg, base, shas, m), pairs, rank, world,
                             cfg.sweep.batch_size, make, dict(method=m.method, setting=m.setting, prompt_set=ps,
                                                              prompts=names), force=force)
        rows.append(dict(prompt_set=ps, method=m.method, setting=m.setting, part=f"{rank + 1}/{world}", status=status))
    return pd.DataFrame(rows)


def stage_metrics(cfg: RunConfig, paths: RunPaths, progress: bool = True) -> pd.DataFrame:
    """Notebook 03: metrics.csv (rewards, alignment, diversity against base, chain KL of the fine-tuned models).
    Stored samples are checked against their records and refused when not finite (lib.store.read_samples)."""
    with run_lock(paths.root):
        return _metrics(cfg, paths, progress)


def _metrics(cfg: RunConfig, paths: RunPaths, progress: bool) -> pd.DataFrame:
    domain = make_domain(cfg, paths)
    df = evaluate(domain, sweep_methods(cfg.sweep), paths.samples, cfg.sweep.prompt_sets, cfg.metrics.names,
                  k=cfg.metrics.k, batch=cfg.sweep.batch_size, progress=progress, ci_draws=cfg.metrics.ci_draws)
    tuned, kl = load_models(cfg, paths, domain)
    models = {Method("draft"): tuned, **{Method("kl", lam): mdl for lam, mdl in kl.items()}}
    df = pd.concat([df, pd.DataFrame(kl_rows(domain, models, cfg.metrics.kl_samples))], ignore_index=True)
    with atomic_path(paths.metrics) as tmp:
        df.to_csv(tmp, index=False)
    log_metrics(cfg.train.tracker, cfg.run, paths.root / "tracking", df.to_dict("records"))  # off by default
    return df


def stage_dominance(cfg: RunConfig, df: pd.DataFrame) -> pd.DataFrame:
    """Notebook 04's table: hypervolume and dominance of each family per diversity metric (coverage set)."""
    own = df[[Method.parse(m, s).adapter is None for m, s in zip(df.method, df.setting)]]  # DRaFT's families
    return pd.concat([dominance_table(own, d, maximize_div=METRICS[d].maximize) for d in cfg.metrics.diversity],
                     ignore_index=True)


def showcase(cfg: RunConfig) -> list[Method]:
    """One representative setting per family for sample grids: the middle of each sweep list."""
    out = [Method("base"), Method("draft")]
    for fam in ("lora_scale", "aig", "combined", "kl"):
        ms = [m for m in sweep_methods(cfg.sweep) if m.method == fam and m.scales is None and m.adapter is None]
        if ms:
            out.append(ms[len(ms) // 2])
    return out


def sample_grid(cfg: RunConfig, paths: RunPaths, per_prompt: int = 200) -> Any:
    """Fig. 2 style grid of the showcase methods' coverage samples, drawn by the domain."""
    domain = make_domain(cfg, paths)
    shown = {}
    for m in showcase(cfg):
        x, p, s = read_samples(paths.samples, f"coverage/{m.key}")
        keep = (s - cfg.sweep.seed_offset - p * cfg.sweep.samples_per_prompt) < per_prompt
        shown[m.label] = (x[keep], p[keep])
    return domain.sample_grid(shown)


def trajectories(cfg: RunConfig, paths: RunPaths, prompt: int = 0, seeds: Sequence[int] = range(12),
                 aig_spec: str = "power:2") -> tuple[Domain, dict[str, np.ndarray]]:
    """Fig. 1 data: x_t along the sampling chain of base, DRaFT and AIG from the same seeds: name -> (steps+1, B, ...)."""
    domain = make_domain(cfg, paths)
    tuned = domain.load_adapter(trained_adapter(paths.train(0.0)))
    cond = domain.encode([domain.prompts("coverage")[prompt]] * len(seeds))
    out = {}
    for m in (Method("base"), Method("draft"), Method("aig", aig_spec)):
        path = []
        with method_denoiser(domain, m, tuned) as den, torch.no_grad():
            sample(den, domain.scheduler, domain.noise(list(seeds)), cond, domain.num_steps,
                   callback=lambda i, t, x: path.append(x.clone()))
        out[m.label] = torch.stack(path).numpy()
    return domain, out
