"""Honest evaluation of the searched front: every schedule is re-measured on held-out seed ranges that the search
never saw, next to the families it competes with, and compared by hypervolume (`lib.search.front`).

Families: `searched` (the chosen subset of the selection front), `power` (AIG paper A.7.3), `step` (combined
generation, ImageReFL Eq. 3), `sigmoid` (A.7.3's sigmoid, as a smoothed step), `kl` (the run's KL models, Eq. 4) and
`lora_scale` (alpha' of the run's sweep, Lemma 2); base and DRaFT (`anchor`) belong to every family.

The interval: the search's selection range and `search.heldout_repeats` held-out ranges are disjoint blocks of
paired seeds (`lib.search.study.seed_ranges`); every method is sampled from the same seeds within a range. A
family's held-out hypervolume is the mean over the held-out ranges with a t-interval (`lib.metrics.mean_ci`); the
searched-minus-family difference is paired range by range. Fresh seed ranges rather than a bootstrap of one range:
a resample repeats samples, and a repeated sample is its own nearest neighbour, which shrinks the k-NN radii of
precision / recall and biases them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lib.files import atomic_path, config_hash, run_lock
from lib.methods import Method
from lib.metrics import METRICS, mean_ci
from lib.search.front import NoSquare, greedy_subset, unit_hypervolume, unit_points
from lib.search.study import SearchRun

FAMILIES = ("searched", "power", "step", "sigmoid", "kl", "lora_scale")
UNION = "union of families"  # power, step, sigmoid, kl and lora_scale together
MEASURED_FILE = "measured.csv"


def comparison(run: SearchRun, specs: Sequence[str]) -> dict[str, list[Method]]:
    """The methods of each family: the searched specs, the search section's power / step / sigmoid lists, the run's
    KL lambdas and LoRA scales strictly between 0 (base) and 1 (DRaFT)."""
    s, sweep = run.scfg, run.cfg.sweep
    return {"searched": [Method("aig", x) for x in specs], "power": [Method("aig", x) for x in s.power],
            "step": [Method("aig", x) for x in s.step], "sigmoid": [Method("aig", x) for x in s.sigmoid],
            "kl": [Method("kl", lam) for lam in sweep.kl_lambdas],
            "lora_scale": [Method("lora_scale", a) for a in sweep.lora_scales if 0 < a < 1]}


def _key(run: SearchRun, range_name: str, m: Method) -> str:
    """What a measurement depends on: the run's models, the range's seeds, the method, the scored metrics."""
    pairs = run.ranges[range_name]
    kl = run.kl_stamps[m.value] if m.method == "kl" else None
    return config_hash([run.stamp, kl, pairs[0], len(pairs), m.method, m.setting, sorted(run.names)])


def measure_ranges(run: SearchRun, families: dict[str, list[Method]], progress: bool = False,
                   on_selection: Sequence[str] = ("searched",)) -> pd.DataFrame:
    """Long table (range, family, method, setting, metric, value) of base and DRaFT (family 'anchor') and every
    family's methods on every held-out range, and of the `on_selection` families on the selection range; measurements
    stored in gamma_search/measured.csv under the same key are reused, new ones are added to it as they finish
    (holding the run folder's lock)."""
    path = run.folder / MEASURED_FILE
    cache = pd.read_csv(path, dtype={"key": str}) if path.exists() else pd.DataFrame(columns=["key", "metric", "value"])
    jobs = [(r, fam, m) for r in run.ranges
            for fam, ms in {"anchor": [Method("base"), Method("draft")], **families}.items()
            if r != "selection" or fam in ("anchor", *on_selection) for m in ms]
    rows = []
    with run_lock(run.paths.root):
        for r, fam, m in tqdm(jobs, desc="held-out measurements", disable=not progress):
            key = _key(run, r, m)
            hit = cache[cache.key == key]
            if hit.empty:
                hit = pd.DataFrame([dict(key=key, metric=k, value=v) for k, v in run.measure(m, r).items()])
                cache = pd.concat([cache, hit], ignore_index=True) if len(cache) else hit
                with atomic_path(path) as tmp:
                    cache.to_csv(tmp, index=False)
            rows += [dict(range=r, family=fam, method=m.method, setting=m.setting, metric=k, value=v)
                     for k, v in zip(hit.metric, hit.value)]
    return pd.DataFrame(rows)


def points(measured: pd.DataFrame, diversity: str) -> pd.DataFrame:
    """One row per (range, family, method, setting) with columns reward and the diversity metric."""
    t = measured[measured.metric.isin(["reward", diversity])]
    return t.pivot_table(index=["range", "family", "method", "setting"], columns="metric", values="value",
                         sort=False).reset_index()[["range", "family", "method", "setting", "reward", diversity]]


def family_hypervolumes(measured: pd.DataFrame, diversity: str) -> pd.DataFrame:
    """Per seed range and family (and their union): the hypervolume on base/DRaFT's unit square, and point count."""
    p, rows = points(measured, diversity), []
    for r, g in p.groupby("range", sort=False):
        anchor = g[g.family == "anchor"].set_index("method")
        base, draft = anchor.loc["base", ["reward", diversity]], anchor.loc["draft", ["reward", diversity]]
        unit = unit_points(g[["reward", diversity]].to_numpy(), base.to_numpy(), draft.to_numpy(),
                           METRICS[diversity].maximize)
        fams = [f for f in FAMILIES if f in set(g.family)]
        others = [f for f in fams if f != "searched"]
        for fam in [*fams, *([UNION] if others else [])]:
            mask = (g.family.isin(others) if fam == UNION else g.family == fam).to_numpy()
            rows.append(dict(range=r, family=fam, points=int(mask.sum()), hypervolume=unit_hypervolume(unit[mask])))
    return pd.DataFrame(rows)


def hypervolume_table(measured: pd.DataFrame, diversity: str) -> pd.DataFrame:
    """Per family: hypervolume on the selection seeds (where measured), mean held-out hypervolume with its 95 %
    t-interval over the held-out ranges, and the paired held-out difference searched - family with its interval and
    win count."""
    hv = family_hypervolumes(measured, diversity)
    held = hv[hv.range.str.startswith("heldout")].pivot_table(index="range", columns="family", values="hypervolume",
                                                               sort=False)
    selection = hv[hv.range == "selection"].set_index("family").hypervolume
    counts = hv[hv.range.str.startswith("heldout")].groupby("family").points.first()
    rows = []
    for fam in [f for f in (*FAMILIES, UNION) if f in held.columns]:
        mean, half, n = mean_ci(held[fam].to_numpy())
        row = dict(family=fam, points=int(counts[fam]), hv_selection=selection.get(fam, np.nan), hv_heldout=mean,
                   ci95=half, ranges=n)
        if "searched" in held.columns and fam != "searched":
            diff = held["searched"].to_numpy() - held[fam].to_numpy()
            d_mean, d_half, _ = mean_ci(diff)
            row.update(searched_minus=d_mean, searched_minus_ci95=d_half,
                       searched_wins=f"{int((diff > 0).sum())}/{len(diff)}")
        rows.append(row)
    return pd.DataFrame(rows)


def other_metrics_table(measured: pd.DataFrame, objective: str, metrics: Sequence[str]) -> pd.DataFrame:
    """The searched front, chosen for one diversity metric, judged by the others: per metric, the held-out
    hypervolume of searched and of the best family (by mean), and their paired difference with its interval.
    A metric on which base and DRaFT do not differ (no unit square) gets a note instead."""
    rows = []
    for d in metrics:
        try:
            t = hypervolume_table(measured, d).set_index("family")
        except NoSquare:
            rows.append(dict(metric=d, note="base and DRaFT do not differ on it"))
            continue
        best = t.drop(index=["searched", UNION]).hv_heldout.idxmax()
        rows.append(dict(metric=d, objective=d == objective, searched=t.hv_heldout["searched"], best_family=best,
                         best_family_hv=t.hv_heldout[best], searched_minus=t.searched_minus[best],
                         ci95=t.searched_minus_ci95[best], searched_wins=t.searched_wins[best]))
    return pd.DataFrame(rows)


def heldout_points(measured: pd.DataFrame, diversity: str) -> pd.DataFrame:
    """Each method's (reward, diversity) averaged over the held-out ranges, and on the selection range."""
    p = points(measured, diversity)
    p["seeds"] = np.where(p.range == "selection", "selection", "heldout")
    return p.groupby(["seeds", "family", "method", "setting"], sort=False)[["reward", diversity]].mean().reset_index()


def best_specs(measured: pd.DataFrame, diversity: str, n: int) -> list[str]:
    """The n searched specs that add the most held-out hypervolume, greedily (the first is the best single one)."""
    p = heldout_points(measured, diversity)
    held = p[p.seeds == "heldout"]
    anchor = held[held.family == "anchor"].set_index("method")
    mine = held[held.family == "searched"].reset_index(drop=True)
    unit = unit_points(mine[["reward", diversity]].to_numpy(), anchor.loc["base", ["reward", diversity]].to_numpy(),
                       anchor.loc["draft", ["reward", diversity]].to_numpy(), METRICS[diversity].maximize)
    return [mine.setting[i] for i in greedy_subset(unit, n)]


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """Write the hypervolume table as CSV, atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)


def verdict(table: pd.DataFrame) -> str:
    """One line per family: the searched front's held-out hypervolume minus the family's, with its interval."""
    rows = table[table.family != "searched"].dropna(subset=["searched_minus"])
    return "\n".join(f"searched - {r.family}: {r.searched_minus:+.3f} ± {r.searched_minus_ci95:.3f} (95 % interval over "
                     f"{r.ranges} held-out seed ranges; searched larger in {r.searched_wins})" for r in rows.itertuples())
