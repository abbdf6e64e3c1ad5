"""The gamma explorer's ipywidgets view over an `ExplorerState` and a preview backend. Its callbacks (the widgets'
observers, `on_press`, `on_motion`, `on_release`, `on_export`) only translate events into state edits and redraw.

Mouse on the curve plot (spline family; needs the ipympl canvas, `%matplotlib widget`):
- left click on empty space adds a control point at (s, gamma), snapped to a 0.01 grid and clamped into [0, 1];
- left press on a control point (within PICK_PX pixels) and drag moves it (the preview is recomputed on release);
- right click, or shift + left click, on a control point removes it.
The control points are also an editable table (one `s=g` per line). Without the ipympl canvas the figures are PNG
images and the sliders, presets, table and spec box still work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lib.explorer.drawing import (PreviewPlot, draw_curve, draw_pareto, draw_weights, figure_png, pareto_table,
                                  snapshot_figure)
from lib.explorer.export import append_to_params
from lib.explorer.preview import PANEL_LABEL, Preview, PreviewBackend
from lib.explorer.state import FAMILIES, PARAMS, PRESETS, ExplorerState
from lib.files import atomic_path
from lib.metrics import METRICS

PICK_PX = 10.0  # a press within this many pixels of a control point grabs (or removes) it
# x axes of the Pareto plot: every metric of lib.metrics but the reward (the y axis) and the chain KL
X_METRICS = tuple(m for m, spec in METRICS.items() if spec.needs not in ("reward", "chain"))


def widget_backend() -> bool:
    """True when matplotlib draws on ipympl canvases (`%matplotlib widget`): clicks reach the kernel."""
    b = matplotlib.get_backend().lower()
    return "ipympl" in b or b == "widget"


def new_figure(figsize: tuple[float, float]):
    """A figure on an ipympl canvas under `%matplotlib widget` (not displayed by itself), else on an Agg canvas
    that pyplot does not track (nothing is shown twice under the inline backend)."""
    if widget_backend():
        import matplotlib.pyplot as plt  # pyplot only for ipympl canvases (it would pick a GUI backend elsewhere)

        with plt.ioff():
            return plt.figure(figsize=figsize)
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def x_metric_options(metrics: Optional[pd.DataFrame], default: str) -> list[str]:
    """The Pareto plot's x-axis choices: the run's metrics of X_METRICS (all of them without metrics.csv), the
    default first."""
    opts = list(X_METRICS)
    have = set(pareto_table(metrics).columns)
    opts = [m for m in opts if m in have] or opts
    return [default] + [o for o in opts if o != default] if default in opts else opts


class _Slot:
    """A figure shown in the widget tree: the ipympl canvas itself (`%matplotlib widget`), else a PNG Image."""

    def __init__(self, fig, css: str, dpi: int = 80):
        import ipywidgets as W  # the view's optional GUI dependency, only where a view is built

        self.fig, self.dpi = fig, dpi
        self.interactive = isinstance(fig.canvas, W.DOMWidget)
        if self.interactive:
            c = fig.canvas
            c.header_visible = c.footer_visible = c.toolbar_visible = c.resizable = False
            self.widget = c
        else:
            self.widget = W.Image(format="png")
        self.widget.add_class(css)

    def draw(self) -> None:
        if self.interactive:
            self.fig.canvas.draw_idle()
        else:
            self.widget.value = figure_png(self.fig, self.dpi)


class GammaExplorer:
    """The ipywidgets view over an ExplorerState and a preview backend (see the module docstring).

    `widget` is the root widget (displaying the explorer displays it). Tests drive the state through the widgets'
    values (their observers call the state's edits) and through `on_press` / `on_motion` / `on_release` with
    matplotlib mouse events on `curve_fig.canvas`.
    """

    def __init__(self, state: ExplorerState, backend: Optional[PreviewBackend] = None,
                 metrics: Optional[pd.DataFrame] = None, params_file: Optional[str | Path] = None,
                 diversity: str = "fid", presets: Sequence[str] = PRESETS):
        import ipywidgets as W  # the view's optional GUI dependency, only where a view is built

        self.state, self.backend, self.metrics = state, backend, metrics
        self.presets = tuple(presets)  # the paper's curves, plus a run's searched front (lib.search.presets)
        self.draw_samples = backend.draw_samples if backend is not None else None
        self.preview: Optional[Preview] = None
        self._drag: Optional[int] = None
        self._syncing = False
        self.events: list[str] = []  # a log of what the callbacks did (for tests and debugging)

        self.family = W.ToggleButtons(options=FAMILIES, value=state.family, description="family")
        self.family.style.button_width = "80px"
        self.preset = W.Dropdown(options=[("custom", "")] + [(p, p) for p in self.presets], value="", description="preset")
        self.sliders: dict[tuple[str, str], Any] = {}
        for fam, ps in PARAMS.items():
            for p in ps:
                sl = W.FloatSlider(value=state.params[fam][p.name], min=p.min, max=p.max, step=p.step,
                                   description=p.label, continuous_update=False, readout_format=".2f")
                sl.add_class(f"gamma-param-{fam}-{p.name}")
                sl.observe(self._param_changed(p.name), names="value")
                self.sliders[(fam, p.name)] = sl
        top = min(max(100, state.num_steps), state.max_steps)
        self.steps = W.IntSlider(value=state.num_steps, min=1, max=top, description="steps", continuous_update=False)
        self.steps.add_class("gamma-steps")
        self.table = W.Textarea(value=state.points_text(), description="s=g", continuous_update=False,
                                layout=W.Layout(width="180px", height="140px"))
        self.table.add_class("gamma-table")
        self.spec = W.Text(value=state.spec, description="γ spec", continuous_update=False,
                           layout=W.Layout(width="460px"))
        self.spec.add_class("gamma-spec")
        self.message = W.HTML(layout=W.Layout(min_height="28px", flex="1"))  # beside the spec: the plot never jumps
        self.message.add_class("gamma-message")
        self.diversity = W.Dropdown(options=x_metric_options(metrics, diversity), description="diversity")
        self.metrics_html = W.HTML()
        self.metrics_html.add_class("gamma-metrics")
        self.export_path = W.Text(value=str(params_file or ""), description="params", layout=W.Layout(width="420px"))
        self.export_button = W.Button(description="append to sweep.aig", icon="plus", layout=W.Layout(width="auto"))
        self.export_status = W.HTML()
        self.export_status.add_class("gamma-export-status")

        self.curve_fig = new_figure((9.6, 3.1))
        self.preview_fig = new_figure((5.4, 4.0))
        self.pareto_fig = new_figure((4.0, 3.4))
        self.ax_curve, self.ax_weights = self.curve_fig.subplots(1, 2, width_ratios=[1.3, 1])
        self.curve_fig.subplots_adjust(left=0.07, right=0.99, bottom=0.16, top=0.9, wspace=0.18)
        self.pareto_ax = self.pareto_fig.subplots()
        self.pareto_fig.subplots_adjust(left=0.18, right=0.97, bottom=0.15, top=0.91)
        self.preview_plot = PreviewPlot(self.preview_fig, self.draw_samples)
        self.curve_slot = _Slot(self.curve_fig, "gamma-curve")
        self.preview_slot = _Slot(self.preview_fig, "gamma-preview")
        self.pareto_slot = _Slot(self.pareto_fig, "gamma-pareto")
        canvas = self.curve_fig.canvas
        self._cids = [canvas.mpl_connect("button_press_event", self.on_press),
                      canvas.mpl_connect("motion_notify_event", self.on_motion),
                      canvas.mpl_connect("button_release_event", self.on_release)]

        self.family.observe(self._family_changed, names="value")
        self.preset.observe(self._preset_changed, names="value")
        self.steps.observe(self._steps_changed, names="value")
        self.table.observe(self._table_changed, names="value")
        self.spec.observe(self._spec_changed, names="value")
        self.diversity.observe(lambda ch: self._draw_pareto(), names="value")
        self.export_button.on_click(self.on_export)

        self.param_box = W.VBox(list(self.sliders.values()))
        self.spline_box = W.VBox([self.table, W.HTML("<small>click: add · drag: move<br>right/shift-click: remove</small>")])
        controls = W.HBox([W.VBox([self.family, W.HBox([self.preset, self.steps]), self.param_box]), self.spline_box])
        wrap = W.Layout(flex_flow="row wrap", align_items="flex-start")
        self.widget = W.VBox([
            controls, W.HBox([self.spec, self.message]), self.curve_slot.widget,
            W.HBox([self.preview_slot.widget, W.VBox([self.diversity, self.pareto_slot.widget])], layout=wrap),
            self.metrics_html, W.HBox([self.export_path, self.export_button], layout=wrap), self.export_status])
        self.widget.add_class("gamma-explorer")
        self.refresh(preview=True)

    def _ipython_display_(self):
        from IPython.display import display  # only inside a notebook kernel

        display(self.widget)

    # -- callbacks ------------------------------------------------------------------------------------------
    def _after(self, what: str, accepted: bool, preview: bool = True) -> None:
        self.events.append(f"{what}: {'ok' if accepted else 'refused'} -> {self.state.spec}")
        self.refresh(preview=preview and accepted)

    def _param_changed(self, name: str):
        def cb(change):
            if self._syncing:
                return
            fam = next(f for (f, n), sl in self.sliders.items() if sl is change["owner"])
            if fam != self.state.family:
                return
            value = round(float(change["new"]), 6)  # slider arithmetic: 2.9499999999999997 -> 2.95
            self._after(f"slider {name}={value}", self.state.set_param(name, value))
        return cb

    def _family_changed(self, change):
        if not self._syncing:
            self._after(f"family {change['new']}", self.state.select_family(change["new"]))

    def _preset_changed(self, change):
        if not self._syncing and change["new"]:
            self._after(f"preset {change['new']}", self.state.load_spec(change["new"]))

    def _steps_changed(self, change):
        if not self._syncing:
            self._after(f"steps {change['new']}", self.state.set_num_steps(int(change["new"])))

    def _table_changed(self, change):
        if not self._syncing:
            ok = self.state.set_points_text(change["new"])
            self.events.append(f"table: {'ok' if ok else 'refused'} -> {self.state.spec}")
            self.refresh(preview=ok, table=ok)  # a refused table keeps the typed text so it can be fixed

    def _spec_changed(self, change):
        if not self._syncing and change["new"] != self.state.spec:
            ok = self.state.load_spec(change["new"])
            self.events.append(f"spec {change['new']}: {'ok' if ok else 'refused'} -> {self.state.spec}")
            self.refresh(preview=ok, spec=ok)

    def _nearest_px(self, event) -> tuple[Optional[int], float]:
        if not self.state.points:
            return None, float("inf")
        xy = self.ax_curve.transData.transform(np.asarray(self.state.points))
        d = np.hypot(xy[:, 0] - event.x, xy[:, 1] - event.y)
        i = int(np.argmin(d))
        return i, float(d[i])

    def on_press(self, event) -> None:
        """Mouse press on the curve: add / grab / remove a spline control point (see the module docstring)."""
        if event.inaxes is not self.ax_curve or event.xdata is None:
            return
        if self.state.family != "spline":
            self._after("click", self.state.add_point(event.xdata, event.ydata))  # refused with a hint
            return
        i, d = self._nearest_px(event)
        near = i is not None and d <= PICK_PX
        # ipympl reports shift as a modifier of the mouse event; other canvases as the key held
        shift = "shift" in str(event.key or "") or "shift" in (getattr(event, "modifiers", None) or ())
        remove = int(event.button or 0) == 3 or shift
        self.events.append(f"press button {int(event.button or 0)}{' +shift' if shift else ''} at "
                           f"({event.xdata:.3f}, {event.ydata:.3f}), nearest point {d:.0f} px")
        if remove:
            if near:
                self._after(f"remove point {i}", self.state.remove_point(i))
            return
        if near:
            self._drag = i
            self.events.append(f"grab point {i}")
            return
        self._after(f"click at ({event.xdata:.3f}, {event.ydata:.3f})", self.state.add_point(event.xdata, event.ydata))

    def on_motion(self, event) -> None:
        """Drag: move the grabbed control point; only the curve is redrawn until release."""
        if self._drag is None or event.inaxes is not self.ax_curve or event.xdata is None:
            return
        new = self.state.move_point(self._drag, event.xdata, event.ydata)
        if new is not None:
            self._drag = new
        self._after(f"drag to ({event.xdata:.3f}, {event.ydata:.3f})", new is not None, preview=False)

    def on_release(self, event) -> None:
        """End of a drag: recompute the preview for the new curve."""
        if self._drag is not None:
            self._drag = None
            self._after("release", True)

    def on_export(self, _button=None) -> None:
        """Append the current spec to the params file's sweep.aig list."""
        path = self.export_path.value.strip()
        try:
            if not path:
                raise ValueError("no params file given")
            ok, msg = append_to_params(path, self.state.spec)
            self.export_status.value = f"<span style='color:{'green' if ok else 'gray'}'>{msg}</span>"
        except Exception as e:  # shown, not raised: a callback has no caller to raise to
            self.export_status.value = f"<span style='color:#b00'>export failed: {e}</span>"
        self.events.append(f"export: {self.export_status.value}")

    # -- drawing --------------------------------------------------------------------------------------------
    def refresh(self, preview: bool = True, table: bool = True, spec: bool = True) -> None:
        """Sync the widgets with the state and redraw (the preview only when asked)."""
        st = self.state
        self._syncing = True
        try:
            self.family.value = st.family
            for (fam, name), sl in self.sliders.items():
                sl.value = st.params[fam][name]
                sl.layout.display = "" if fam == st.family else "none"
            self.spline_box.layout.display = "" if st.family == "spline" else "none"
            self.preset.value = st.spec if st.spec in self.presets else ""
            self.steps.value = st.num_steps
            if table:
                self.table.value = st.points_text()
            if spec:
                self.spec.value = st.spec
        finally:
            self._syncing = False
        color = "#b00" if st.refused else "#666"
        self.message.value = f"<span style='color:{color}'>{st.message}</span>" if st.message else ""
        draw_curve(self.ax_curve, st)
        draw_weights(self.ax_weights, st)
        self.curve_slot.draw()
        if preview:
            self.update_preview()

    def update_preview(self) -> None:
        """Recompute the preview for the current curve (cached per spec and steps) and redraw it and the Pareto plot."""
        if self.backend is not None:
            try:
                self.preview = self.backend.preview(self.state.schedule, self.state.num_steps)
            except Exception as e:  # keep the last preview and say why
                self.message.value = f"<span style='color:#b00'>preview failed: {type(e).__name__}: {e}</span>"
                return
        self.preview_plot.update(self.preview)
        self.preview_slot.draw()
        self._draw_pareto()

    def _draw_pareto(self) -> None:
        draw_pareto(self.pareto_ax, self.metrics, self.diversity.value, self.preview)
        self.pareto_slot.draw()
        if self.preview is not None:
            table = self.preview.metrics.rename(index=PANEL_LABEL).round(3).to_html(border=0)
            self.metrics_html.value = f"<div style='font-size:12px'><b>preview metrics</b> (diversity against the " \
                                      f"base row; n samples){table}</div>"

    def snapshot(self, path: Optional[str | Path] = None, dpi: int = 80) -> bytes:
        """PNG of the whole explorer state (static); written to path (atomically) if given."""
        fig = snapshot_figure(self.state, self.preview, self.metrics, self.diversity.value, self.draw_samples)
        png = figure_png(fig, dpi)
        if path is not None:
            with atomic_path(path) as tmp:
                tmp.write_bytes(png)
        return png

    def summary(self, metrics: Optional[Sequence[str]] = None, digits: int = 2) -> str:
        """The current spec and the preview's metrics (all, or the named ones), rounded, for printed outputs."""
        lines = [f"spec: {self.state.spec}", f"steps: {self.state.num_steps}"]
        if self.preview is not None:
            m = self.preview.metrics.rename(index=PANEL_LABEL)
            cols = [c for c in (metrics or m.columns) if c in m.columns]
            lines.append(m[cols + (["n"] if "n" not in cols else [])].round(digits).to_string())
        return "\n".join(lines)
