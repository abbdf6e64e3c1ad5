"""The gamma explorer of notebook 05: pick a gamma(s) family or draw a spline, see the curve at the sampler's steps
s_i = 1 - i/N, the per-step weights, a live preview of samples under that curve next to base and DRaFT, its point on
the run's Pareto plot, and export its spec string into a params file's `sweep: aig:` list.

Modules, bottom to top, each usable without a browser:
- `state`: `ExplorerState`, the pure state (family, parameters, spline points, steps) and its validated schedule;
- `preview`: `Previewer`, the one preview backend of every domain (paired seeds, `lib.methods.method_denoiser`,
  `lib.generate.generate`, `lib.evaluate.method_rows`);
- `drawing`: the figures (curve, weights, preview panels drawn by the domain, Pareto star, snapshot);
- `export`: `append_to_params`;
- `view`: `GammaExplorer`, the ipywidgets view and its mouse callbacks;
- `entry`: `open_explorer(params_file, ...)`, notebook 05's entry point.
"""
from lib.explorer.entry import open_explorer, require_artefacts
from lib.explorer.export import append_to_params
from lib.explorer.preview import Preview, Previewer, preview_pairs, torch_threads
from lib.explorer.state import FAMILIES, PARAMS, PRESETS, ExplorerState, Param
from lib.explorer.view import GammaExplorer

__all__ = ["ExplorerState", "FAMILIES", "GammaExplorer", "PARAMS", "PRESETS", "Param", "Preview", "Previewer",
           "append_to_params", "open_explorer", "preview_pairs", "require_artefacts", "torch_threads"]
