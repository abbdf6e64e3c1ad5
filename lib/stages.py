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

from lib.config import RunConfig
from lib.distributed import process_state
from lib.domains.base import Domain
from lib.evaluate import evaluate, kl_rows
from lib.files import atomic_path, run_lock
from lib.generate import generate, paired_seeds
from lib.methods import Method, method_denoiser, sweep_methods
from lib.metrics import METRICS
from lib.pareto import dominance_table
from lib.runs import RunPaths, make_domain
from lib.samplers import sample
from lib.shards import sample_part
from lib.store import (clear_samples, mark_done, note_reused, read_samples, stamp_of, why_not_done,
                       write_samples)
from lib.tracking import log_metrics
from lib.train import TrainConfig, adapter_sha256, is_trained, train, trained_adapter


def kl_configs(cfg: RunConfig) -> dict[Method, TrainConfig]:
    """The training config of DRaFT (lambda = 0) and of every KL-regularised run of the sweep."""
    out = {Method("draft"): dataclasses.replace(cfg.train, kl_lambda=0.0)}
    out.update({Method("kl", lam): dataclasses.replace(cfg.train, kl_lambda=float(lam)) for lam in cfg.sweep.kl_lambdas})
    return out


def _lambda(m: Method) -> float:
    return 0.0 if m.method == "draft" else float(m.value)


def stage_train(cfg: RunConfig, paths: RunPaths, force: bool = False, progress: bool = True,
                include_kl: bool = True, lambdas: Optional[Sequence[float]] = None,
                prepare: bool = True) -> dict[str, pd.DataFrame]:
    """Notebook 01: the domain's preparation (the toy pre-trains its base), then DRaFT and every KL run; returns
    their step logs. A cluster job (lib.cluster) trains only the runs of `lambdas` (0 = DRaFT), prepare=False."""
    state = process_state()  # one process in a notebook; several under `accelerate launch -m lib.launch`
    with _locked(paths, state):
        domain = make_domain(cfg, paths)
        if state.is_main_process and prepare:
            domain.prepare(force=force, progress=progress)
        state.wait_for_everyone()
        logs = {}
        for m, tcfg in kl_configs(cfg).items():
            if (m.method == "kl" and not include_kl) or (lambdas is not None and _lambda(m) not in lambdas):
                continue
            out = paths.train(_lambda(m))
            if force or not is_trained(out, tcfg, domain):
                train(domain, tcfg, out, progress=progress, run=cfg.run)
            logs["DRaFT" if m.method == "draft" else f"KL λ={m.value:g}"] = pd.read_csv(out / "log.csv")
    return logs


def _locked(paths: RunPaths, state):
    """The run folder's lock, taken by the main process (the other processes of a launch run under it)."""
    return run_lock(paths.root) if state.is_main_process else contextlib.nullcontext()


def load_models(cfg: RunConfig, paths: RunPaths, domain: Domain) -> tuple[torch.nn.Module, dict[float, torch.nn.Module]]:
    """The DRaFT model and the KL models (by lambda) of a trained run."""
    tuned = domain.load_adapter(trained_adapter(paths.train(0.0)))
    kl = {float(m.value): domain.load_adapter(trained_adapter(paths.train(_lambda(m))))
          for m in kl_configs(cfg) if m.method == "kl"}
    return tuned, kl


def _model_stamp(shas: dict[float, str], m: Method) -> list:
    """What a method's samples depend on beyond the sweep and the base model: the adapters' sha256 (by lambda)."""
    return [("adapter.safetensors", shas[lam]) for lam in ([0.0] + ([_lambda(m)] if m.method == "kl" else []))]


def stage_sample(cfg: RunConfig, paths: RunPaths, force: bool = False, progress: bool = True) -> pd.DataFrame:
    """Notebook 02: every method x setting on every prompt set with paired seeds; returns a summary table.
    Under several processes each takes every N-th (prompt, seed) pair."""
    state = process_state()
    with _locked(paths, state):
        return _sample(cfg, paths, state, force, progress)


def _sample(cfg: RunConfig, paths: RunPaths, state, force: bool, progress: bool) -> pd.DataFrame:
    domain = make_domain(cfg, paths)
    tuned, kl = load_models(cfg, paths, domain)
    methods = sweep_methods(cfg.sweep)
    base = domain.stamp()
    shas = {_lambda(m): adapter_sha256(paths.train(_lambda(m))) for m in kl_configs(cfg)}
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
                    with method_denoiser(domain, m, tuned, kl) as den:
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


def _sample_stamp(cfg: RunConfig, base: dict, shas: dict[float, str], m: Method) -> str:
    """What a sample set of method m is current with: the sweep, the base model's stamp, the method, its adapters."""
    return stamp_of(dataclasses.asdict(cfg.sweep), base, m.label, _model_stamp(shas, m))


def stage_sample_parts(cfg: RunConfig, paths: RunPaths, units: Sequence[tuple[str, str, int, int]],
                       force: bool = False) -> pd.DataFrame:
    """A cluster job's share of notebook 02 (lib.cluster): units (prompt set, method key, part r, parts W), each
    the r-th of W contiguous batch-aligned runs of the set's pairs (lib.shards: a done part is skipped, the job
    completing the last part writes done.json). Returns one row per unit with its status."""
    domain = make_domain(cfg, paths)
    tuned, kl = load_models(cfg, paths, domain)
    methods = {m.key: m for m in sweep_methods(cfg.sweep)}
    base = domain.stamp()
    shas = {_lambda(m): adapter_sha256(paths.train(_lambda(m))) for m in kl_configs(cfg)}
    rows = []
    for ps, key, rank, world in units:
        m = methods[key]
        names = domain.prompts(ps)
        per = cfg.sweep.samples_per_prompt if ps == "coverage" else cfg.sweep.eval_samples_per_prompt
        pairs = paired_seeds(len(names), per, cfg.sweep.seed_offset)

        def make(mine):
            with method_denoiser(domain, m, tuned, kl) as den:
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
                  k=cfg.metrics.k, batch=cfg.sweep.batch_size, progress=progress)
    tuned, kl = load_models(cfg, paths, domain)
    models = {Method("draft"): tuned, **{Method("kl", lam): mdl for lam, mdl in kl.items()}}
    df = pd.concat([df, pd.DataFrame(kl_rows(domain, models, cfg.metrics.kl_samples))], ignore_index=True)
    with atomic_path(paths.metrics) as tmp:
        df.to_csv(tmp, index=False)
    log_metrics(cfg.train.tracker, cfg.run, paths.root / "tracking", df.to_dict("records"))  # off by default
    return df


def stage_dominance(cfg: RunConfig, df: pd.DataFrame) -> pd.DataFrame:
    """Notebook 04's table: hypervolume and dominance of each family per diversity metric (coverage set)."""
    return pd.concat([dominance_table(df, d, maximize_div=METRICS[d].maximize) for d in cfg.metrics.diversity],
                     ignore_index=True)


def showcase(cfg: RunConfig) -> list[Method]:
    """One representative setting per family for sample grids: the middle of each sweep list."""
    out = [Method("base"), Method("draft")]
    for fam in ("lora_scale", "aig", "combined", "kl"):
        ms = [m for m in sweep_methods(cfg.sweep) if m.method == fam and m.scales is None]
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
