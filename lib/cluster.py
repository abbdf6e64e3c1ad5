"""Sweeps past one machine: the run's units of work as jobs submitted with submitit, with their dependencies.

    python -m lib.reproduce params/sd14_pickscore.yaml --launcher slurm --partition gpu --shards 8
    python -m lib.reproduce params/smoke.yaml --launcher local --shards 2      # real separate processes, here

The units (`plan`) and what each job runs (`run_unit`, the stage functions of lib.stages):
  1. prepare            the domain's preparation (the toy pre-trains its base, the miniature world is built)
  2. train <names>      each training run: DRaFT, every KL run, every extra training of sweep.adapters (a
                        longer run of the same training in the shorter one's job, which it continues;
                        the longest jobs first: lib.stages.training_chains)                          after 1
  3. sample <units>     `per_job` sampling parts (prompt set, method, part r of `shards`)   after all of 2
  4. notebooks          the numbered notebooks through the runner (lib.reproduce): 01 and 02 find the jobs' work
                        done and show it, 03 computes metrics.csv, 04-05 draw                after all of 3
On SLURM every job is submitted at once, each with `--dependency=afterok:<ids of the layer before>`; the local
executor has no dependencies, so the driver submits a layer when the one before has finished (at most `parallel`
jobs at a time; each with OMP_NUM_THREADS = CPUs // parallel unless the environment sets it, as the Makefile does:
small networks run 2-3x slower with more threads than cores). The driver holds the run folder's lock until the last
job ends (the jobs run under it, as notebook kernels run under the runner's) and cancels the jobs still pending or
running when it is stopped or a job fails.

Nothing is cluster-specific on disk: training resumes from its checkpoint.pt, sampling writes the store's shards
with a part record each (lib.shards), a sample set's done.json appears when its last part is done. So a cluster
sweep that stopped half-way resumes from the same command (done parts, trained runs and verified stages are
skipped), and a local `python -m lib.reproduce` on the same folder resumes it too.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from lib.config import RunConfig, load
from lib.errors import ConfigError, check
from lib.files import LOCK_ENV, run_lock
from lib.methods import sweep_methods
from lib.runs import make_domain, repo_path, run_paths
from lib.stages import stage_sample_parts, stage_train, training_chains

LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class ClusterOptions:
    """How the sweep's units become jobs (the `--launcher ...` options of lib.reproduce)."""

    launcher: str = "local"
    partition: Optional[str] = None  # SLURM partition
    shards: int = 1  # parts of each sample set (method x prompt set), sampled by separate jobs
    per_job: int = 1  # sampling parts per job
    gpus: int = 0  # GPUs per job (SLURM's gpus_per_node); 0 = none
    cpus: int = 4  # CPUs per job
    mem_gb: Optional[int] = None
    timeout_min: int = 24 * 60
    parallel: int = 2  # local executor: jobs at a time
    slurm: dict = field(default_factory=dict)  # more sbatch options, e.g. {"account": "lab", "qos": "high"}
    poll_s: float = 2.0

    def __post_init__(self):
        check("--launcher", self.launcher, self.launcher in LAUNCHERS, f"one of {', '.join(LAUNCHERS)}")
        for key in ("shards", "per_job", "cpus", "timeout_min", "parallel"):
            v = getattr(self, key)
            check(f"--{key.replace('_', '-')}", v, isinstance(v, int) and v >= 1, "an integer >= 1")
        check("--gpus", self.gpus, isinstance(self.gpus, int) and self.gpus >= 0, "an integer >= 0")
        check("--mem-gb", self.mem_gb, self.mem_gb is None or (isinstance(self.mem_gb, int) and self.mem_gb >= 1),
              "an integer >= 1 (or unset: the cluster's default)")


@dataclass(frozen=True)
class Unit:
    """One job: kind (prepare, train, sample, notebooks), a name for job names and messages, its payload."""

    kind: str
    name: str
    payload: Any = None


def plan(cfg: RunConfig, shards: int = 1, per_job: int = 1) -> list[list[Unit]]:
    """The sweep's layers of units; each layer runs after the whole layer before it."""
    train = [Unit("train", "train-" + "+".join(n.replace("kl_lambda-", "kl") for n in chain),
                  chain[0] if len(chain) == 1 else tuple(chain)) for chain in training_chains(cfg)]
    parts = [(ps, m.key, r, shards) for ps in cfg.sweep.prompt_sets for m in sweep_methods(cfg.sweep)
             for r in range(shards)]
    groups = [parts[i: i + per_job] for i in range(0, len(parts), per_job)]
    sample = [Unit("sample", f"sample-{k + 1}of{len(groups)}", tuple(g)) for k, g in enumerate(groups)]
    return [[Unit("prepare", "prepare")], train, sample]


def run_unit(kind: str, params_file: str, root: str, payload: Any, force: bool) -> Any:
    """The body of a job (it runs in its own process, under the driver's lock on the run folder)."""
    os.environ[LOCK_ENV] = str(Path(root).resolve())
    if kind == "notebooks":
        return payload()
    cfg = load(repo_path(params_file))
    paths = run_paths(cfg, root)
    if kind == "prepare":
        info = make_domain(cfg, paths).prepare(force=force, progress=False)
        return "prepared" if info else "already prepared"
    if kind == "train":
        names = [payload] if isinstance(payload, str) else list(payload)  # a chain: one trajectory, shortest first
        stage_train(cfg, paths, force=force, progress=False, names=names, prepare=False)
        return f"trained {', '.join(names)}"
    if kind == "sample":
        return stage_sample_parts(cfg, paths, list(payload), force=force).to_dict("records")
    raise ValueError(f"unknown unit kind {kind!r}")


class ClusterError(RuntimeError):
    """A job failed or could not be submitted (names the job, its id and its log)."""


@contextlib.contextmanager
def _threads(opts: ClusterOptions) -> Iterator[None]:
    """Local jobs inherit OMP_NUM_THREADS = CPUs // parallel (at least 1) where the environment leaves it unset."""
    unset = opts.launcher == "local" and "OMP_NUM_THREADS" not in os.environ
    if unset:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // opts.parallel))
    try:
        yield
    finally:
        if unset:
            os.environ.pop("OMP_NUM_THREADS", None)


def executor(opts: ClusterOptions, folder: Path) -> Any:
    """The submitit executor of these options (SLURM needs sbatch/srun on this machine)."""
    import submitit

    if opts.launcher == "slurm" and not shutil.which("sbatch"):
        raise ConfigError("--launcher slurm: no `sbatch` on this machine; run the command on the cluster's login "
                          "node (or use --launcher local)")
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=opts.launcher)
    params = dict(timeout_min=opts.timeout_min, cpus_per_task=opts.cpus)
    if opts.gpus:
        params["gpus_per_node"] = opts.gpus
    if opts.mem_gb:
        params["mem_gb"] = opts.mem_gb
    if opts.launcher == "slurm" and opts.partition:
        params["slurm_partition"] = opts.partition
    ex.update_parameters(**params)
    return ex


def sweep(params_file: str, run_dir: Optional[str | Path], opts: ClusterOptions,
          notebooks: Optional[Callable[[], Any]] = None, force: bool = False, ex: Any = None,
          log: Callable[[str], None] = print) -> list[dict]:
    """Run the sweep of a params file as jobs (module docstring); `notebooks`, a picklable callable, is the last
    job (the runner over the notebooks). Returns one record per job: unit, job id, state, result."""
    cfg = load(repo_path(params_file))
    paths = run_paths(cfg, run_dir)
    layers = plan(cfg, opts.shards, opts.per_job)
    if notebooks is not None:
        layers.append([Unit("notebooks", "notebooks", notebooks)])
    folder = paths.root / "cluster"
    ex = ex or executor(opts, folder)  # refused (no sbatch) before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    with run_lock(paths.root), _threads(opts):
        args = (str(params_file), str(paths.root.resolve()))
        driver = _Chained if opts.launcher == "slurm" else _Layered
        return driver(ex, opts, args, force, log).run(layers, cfg.run)


class _Driver:
    def __init__(self, ex, opts: ClusterOptions, args: tuple, force: bool, log):
        self.ex, self.opts, self.args, self.force, self.log = ex, opts, args, force, log
        self.jobs: list[tuple[Unit, Any]] = []

    def submit(self, unit: Unit, run: str, after: list = ()) -> Any:
        params: dict[str, Any] = dict(name=f"aig-{run}-{unit.name}")
        if self.opts.launcher == "slurm":
            extra = dict(self.opts.slurm)
            if after:
                extra["dependency"] = "afterok:" + ":".join(str(j.job_id) for j in after)
            params["slurm_additional_parameters"] = extra
        self.ex.update_parameters(**params)
        try:
            job = self.ex.submit(run_unit, unit.kind, *self.args, unit.payload, self.force)
        except Exception as e:  # noqa: BLE001 - submitit raises several types for a refused submission
            raise ClusterError(f"submitting {unit.name}: {type(e).__name__}: {e}") from None
        self.jobs.append((unit, job))
        return job

    def result(self, unit: Unit, job) -> Any:
        try:
            return job.result()
        except Exception as e:  # noqa: BLE001 - submitit's FailedJobError and UncompletedJobError
            tail = " ".join(str(e).strip().splitlines()[-3:])[-400:]
            raise ClusterError(f"job {job.job_id} ({unit.name}) failed: {tail} (log: {job.paths.stderr})") from None

    def cancel(self) -> None:
        for unit, job in self.jobs:
            if not job.done():
                job.cancel(check=False)
                self.log(f"cancelled job {job.job_id} ({unit.name})")

    def records(self, results: dict) -> list[dict]:
        return [dict(unit=u.name, job_id=str(j.job_id), state=j.state, result=results.get(id(j)))
                for u, j in self.jobs]

    def run(self, layers: list[list[Unit]], run: str) -> list[dict]:
        try:
            return self._run(layers, run)
        except BaseException:
            self.cancel()
            raise


class _Chained(_Driver):
    """SLURM: every layer submitted at once, each job `afterok` on the whole layer before; then wait."""

    def _run(self, layers, run):
        before: list = []
        for layer in layers:
            before = [self.submit(u, run, before) for u in layer]
            self.log(f"submitted {', '.join(u.name for u in layer)} as {', '.join(str(j.job_id) for j in before)}")
        results = {}
        for unit, job in self.jobs:
            results[id(job)] = self.result(unit, job)
            self.log(f"{unit.name} ({job.job_id}) done")
        return self.records(results)


class _Layered(_Driver):
    """Local executor: a layer is submitted when the one before has finished, `parallel` jobs at a time."""

    def _run(self, layers, run):
        results = {}
        for layer in layers:
            queue, running = list(layer), []
            while queue or running:
                while queue and len(running) < self.opts.parallel:
                    unit = queue.pop(0)
                    running.append((unit, self.submit(unit, run)))
                finished = [(u, j) for u, j in running if j.done()]
                for unit, job in finished:
                    running.remove((unit, job))
                    results[id(job)] = self.result(unit, job)
                    self.log(f"{unit.name} ({job.job_id}) done: {_short(results[id(job)])}")
                if not finished:
                    time.sleep(self.opts.poll_s)
        return self.records(results)


def _short(result: Any) -> str:
    if isinstance(result, list):  # sampling rows
        states = [r["status"].split(",")[0] for r in result]
        return ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
    return str(result)


def notebooks_job(run: Callable[..., Path], params_file: str, numbers: list[str], force: bool, run_dir: str) -> str:
    """The last job of a sweep: the notebooks `numbers` through the runner `run` (lib.reproduce.run). 01 and 02
    find the jobs' training and samples done and show them (never forced: the jobs did that work, and --force
    already reached them); --force reaches the later stages."""
    early, late = [n for n in numbers if n <= "02"], [n for n in numbers if n > "02"]
    if early:
        run(params_file, early, False, run_dir=Path(run_dir))
    if late:
        run(params_file, late, force, run_dir=Path(run_dir))
    return f"notebooks {','.join(early + late)} done"


def launch(args: argparse.Namespace, run: Callable[..., Path], numbers: list[str]) -> Path:
    """lib.reproduce's `--launcher` path: the sweep of `args.params` as jobs, the notebooks `numbers` (run by the
    runner `run`) as the last one; returns the run folder."""
    root = run_paths(load(repo_path(args.params)), None).root
    job = functools.partial(notebooks_job, run, args.params, numbers, args.force, str(root))
    sweep(args.params, None, main_options(args), notebooks=job, force=args.force)
    return root


def main_options(args: argparse.Namespace) -> ClusterOptions:
    """ClusterOptions from lib.reproduce's parsed command line."""
    return ClusterOptions(launcher=args.launcher, partition=args.partition, shards=args.shards, per_job=args.per_job,
                          gpus=args.gpus, cpus=args.cpus, mem_gb=args.mem_gb, timeout_min=args.timeout_min,
                          parallel=args.parallel, slurm=dict(args.slurm or []))


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE (an sbatch option), e.g. account=lab")
    return key, value


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The launcher options of lib.reproduce's command line."""
    g = ap.add_argument_group("sweeps past one machine (lib.cluster)")
    g.add_argument("--launcher", choices=LAUNCHERS, default=None,
                   help="run training, sampling parts and the notebooks as submitit jobs")
    g.add_argument("--partition", default=None, help="SLURM partition")
    g.add_argument("--shards", type=int, default=1, help="parts of each sample set, sampled by separate jobs")
    g.add_argument("--per-job", type=int, default=1, help="sampling parts per job")
    g.add_argument("--gpus", type=int, default=0, help="GPUs per job")
    g.add_argument("--cpus", type=int, default=4, help="CPUs per job")
    g.add_argument("--mem-gb", type=int, default=None, help="memory per job (GB; default: the cluster's)")
    g.add_argument("--timeout-min", type=int, default=24 * 60, help="time limit per job (minutes)")
    g.add_argument("--parallel", type=int, default=2, help="local launcher: jobs at a time")
    g.add_argument("--slurm", type=_key_value, action="append", metavar="KEY=VALUE",
                   help="another sbatch option for every job (repeatable), e.g. --slurm account=lab --slurm qos=high")


if __name__ == "__main__":
    sys.exit("run sweeps with: python -m lib.reproduce <params> --launcher local|slurm ...")
