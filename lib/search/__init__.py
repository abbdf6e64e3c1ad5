"""Searching the gamma schedule: the reward-diversity front over all monotone schedules (AIG paper A.5, A.7.3 leave
the choice of gamma open).

- `lib.search.space`: the search's parameters (`SearchConfig`, the params section `search:`) and the search space,
  a PCHIP spline with k control points that is monotone by construction (`spline_of`).
- `lib.search.study`: the optuna study (NSGA-II over (reward, diversity), persisted in the run folder, resumable).
- `lib.search.heldout`: the honest evaluation: the searched front and the families re-measured on disjoint seeds,
  hypervolume with intervals over held-out seed ranges.
- `lib.search.front`: hypervolume on base/DRaFT's unit square and the greedy choice of a front's subset.
- `lib.search.presets`: the run's gamma_search folder and its exported specs (light: for the explorer).
- `lib.search.figures`: the front against the families, the schedules as gamma(s) curves, the sample grid.

This file imports nothing, so `lib.config` can import `lib.search.space` without pulling in the engines.
"""
