"""Experiment tracking through accelerate's tracker API, off by default (`train.tracker: none`).

    train:
      tracker: tensorboard        # or wandb, mlflow (pip install wandb / mlflow)

Training curves (reward, KL term, loss, gradient norm, learning rate; one point per optimiser step) go to a tracker
run named `train-<draft | kl_lambda-L>`, and the sweep's metrics (every metrics.csv row, `<metric>/<prompt set>/
<method setting>`) to one named `metrics`; the project is the run's name. TensorBoard writes to
results/<run>/tracking/<name>/ (`tensorboard --logdir results/<run>/tracking`), W&B and MLflow to their own stores
(MLflow's local default: results/<run>/tracking/mlruns). The files the workbook writes are the same with or without
a tracker: the tracker is a copy, and it is not part of any configuration hash. Only the main process logs.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, Optional

from lib.errors import ConfigError

TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
_MODULE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


class Tracker:
    """One run of an accelerate tracker (`accelerate.tracking`), as `Accelerator(log_with=...).init_trackers` makes
    it: started, its configuration stored, scalars logged by step, finished."""

    def __init__(self, kind: str, project: str, name: str, logging_dir: Path, config: Optional[dict] = None):
        from accelerate import tracking

        if importlib.util.find_spec(_MODULE[kind]) is None:
            raise ConfigError(f"tracker = {kind!r} needs the {_MODULE[kind]} package (pip install {_MODULE[kind]}); "
                              f"allowed without extra packages here: none" +
                              (", tensorboard" if importlib.util.find_spec("tensorboard") else ""))
        logging_dir = Path(logging_dir)
        if kind == "tensorboard":
            self.tracker = tracking.TensorBoardTracker(name, logging_dir)
        elif kind == "wandb":
            logging_dir.mkdir(parents=True, exist_ok=True)
            self.tracker = tracking.WandBTracker(project, name=name, dir=str(logging_dir))
        else:
            self.tracker = tracking.MLflowTracker(experiment_name=project, run_name=name,
                                                  logging_dir=str(logging_dir / "mlruns"))
        self.tracker.start()
        if config:
            self.tracker.store_init_configuration(_flat(config))

    def log(self, values: dict[str, float], step: int) -> None:
        """Scalars at a step (non-finite values are logged as they are: the tracker shows the divergence)."""
        self.tracker.log({k: float(v) for k, v in values.items()}, step=step)

    def finish(self) -> None:
        """End the tracker's run (flushes TensorBoard's event file)."""
        self.tracker.finish()


def open_tracker(kind: str, project: str, name: str, logging_dir: Path, config: Optional[dict] = None,
                 main_process: bool = True) -> Optional[Tracker]:
    """A started Tracker, or None when tracking is off (kind 'none') or this is not the main process."""
    if kind == "none" or not main_process:
        return None
    return Tracker(kind, project, name, logging_dir, config)


def log_metrics(kind: str, project: str, logging_dir: Path, rows: list[dict]) -> None:
    """The sweep's metrics.csv rows as scalars `<metric>/<prompt set>/<method> <setting>` of a run named 'metrics'."""
    tracker = open_tracker(kind, project, "metrics", logging_dir)
    if tracker is None:
        return
    values = {f"{r['metric']}/{r['prompt_set']}/{r['method']} {r['setting']}".replace(" -", ""): r["value"]
              for r in rows if isinstance(r.get("value"), (int, float)) and math.isfinite(r["value"])}
    tracker.log(values, step=0)
    tracker.finish()


def _flat(config: dict) -> dict[str, Any]:
    """Hyperparameters as the trackers take them: numbers, strings and booleans (lists as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
