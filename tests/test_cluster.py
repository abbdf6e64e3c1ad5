"""Sweeps past one machine (lib.cluster, lib.shards): the smoke sweep fanned out into submitit jobs (real separate
processes, submitit's local executor) gives the in-process run's metrics.csv byte for byte, a half-finished sweep
resumes from the next submission and from a local run, and on SLURM every job waits for its layer (afterok).

The local-executor test runs its last job as the metrics stage itself: the CLI's last job runs the notebooks through
the runner (notebook 03 calls the same `stage_metrics`); that wiring is tested without a kernel below."""
from __future__ import annotations

import functools
import os
import types
from pathlib import Path

import numpy as np
import pytest

import lib.runs
from lib.cluster import ClusterError, ClusterOptions, _threads, notebooks_job, plan, sweep
from lib.config import load
from lib.errors import ConfigError
from lib.reproduce import main, run
from lib.runs import ROOT, run_paths
from lib.shards import part_positions
from lib.stages import stage_metrics, stage_sample, stage_sample_parts, stage_train
from lib.store import read_samples

SMOKE = ROOT / "params" / "smoke.yaml"


def _params(tmp_path: Path) -> Path:
    """params/smoke.yaml made smaller (one KL run, shorter training) and with several batches per sample set."""
    p = tmp_path / "smoke_jobs.yaml"
    p.write_text(f"extends: {SMOKE}\ntoy:\n  pretrain_steps: 300\ntrain:\n  steps: 20\n  checkpoint_every: 10\n"
                 "sweep:\n  kl_lambdas: [1]\n  batch_size: 64\n")
    return p


def test_parts_are_contiguous_whole_batches():
    for n, batch, world in ((240, 64, 2), (240, 64, 3), (10, 64, 3), (129, 64, 2)):
        parts = [part_positions(n, batch, r, world) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(n))
        assert all(p.start % batch == 0 for p in parts)
    with pytest.raises(ValueError, match="rank"):
        part_positions(10, 4, 2, 2)


def test_local_jobs_give_the_in_process_metrics_and_resume(tmp_path):
    params = _params(tmp_path)
    cfg = load(params)
    ref = run_paths(cfg, tmp_path / "in_process")
    stage_train(cfg, ref, progress=False)
    stage_sample(cfg, ref, progress=False)
    stage_metrics(cfg, ref, progress=False)

    root = tmp_path / "jobs"
    paths = run_paths(cfg, root)
    opts = ClusterOptions(launcher="local", shards=2, per_job=9, parallel=2, timeout_min=15, poll_s=0.5)
    records = sweep(str(params), root, opts, log=lambda line: None,
                    notebooks=functools.partial(stage_metrics, cfg, paths, progress=False))
    units = [u.name for layer in plan(cfg, 2, 9) for u in layer] + ["notebooks"]
    assert [r["unit"] for r in records] == units and len(units) == 1 + 2 + 2 + 1  # 9 methods x 2 parts / 9
    assert all(r["state"] == "FINISHED" for r in records), records
    assert len({r["job_id"] for r in records}) == len(records)  # one process each
    statuses = [row["status"] for r in records if r["unit"].startswith("sample") for row in r["result"]]
    assert len(statuses) == 18 and all(s.startswith("sampled") for s in statuses)  # 9 sets x 2 parts
    assert statuses.count("sampled, completed the set") >= 9  # each set's last part completed it
    assert (root / "metrics.csv").read_bytes() == (ref.metrics).read_bytes()
    for name in ("draft", "kl_lambda-1"):
        assert (root / "train" / name / "adapter.safetensors").read_bytes() == \
            (ref.root / "train" / name / "adapter.safetensors").read_bytes()
    assert not (root / ".run.lock").exists()  # the driver held the run's lock until the last job, and released it

    # a job that died after writing its shard but before its part record: the next submission samples that part
    # again (and only it), and the job completing the set writes done.json
    key = "coverage/aig__power-2"
    folder = paths.samples / key
    (folder / "done.json").unlink()
    (folder / "part_r001_of_002.json").unlink()
    parts = [(ps, k, r, w) for layer in plan(cfg, 2, 100)[2:] for u in layer for ps, k, r, w in u.payload]
    rows = stage_sample_parts(cfg, paths, parts)
    status = dict(zip(rows.method + " " + rows.setting + " " + rows.part, rows.status))
    assert status["aig power:2 2/2"] == "sampled, completed the set" and status["aig power:2 1/2"] == "skipped"
    assert sum(s == "reused" for s in status.values()) == len(status) - 2
    for k in (key, "coverage/draft__-"):
        for a, b in zip(read_samples(paths.samples, k), read_samples(ref.samples, k)):
            assert np.array_equal(a, b)

    # a local run on the half-finished folder samples an incomplete set again, in one process
    (paths.samples / "coverage" / "draft__-" / "done.json").unlink()
    summary = stage_sample(cfg, paths, progress=False)
    assert summary.network_calls.ne("-").sum() >= 1
    stage_metrics(cfg, paths, progress=False)
    assert paths.metrics.read_bytes() == ref.metrics.read_bytes()


class _FakeJob:
    def __init__(self, n: int, kind: str, fail: bool):
        self.job_id, self.kind, self.fail = str(1000 + n), kind, fail
        self.finished = self.cancelled = False
        self.paths = types.SimpleNamespace(stderr=f"/logs/{1000 + n}.err")

    def done(self) -> bool:
        return self.finished

    def result(self):
        self.finished = True
        if self.fail:
            raise RuntimeError("Traceback ...\nValueError: out of memory")
        return "ok"

    def cancel(self, check: bool = True) -> None:
        self.cancelled = True

    @property
    def state(self) -> str:
        return "CANCELLED" if self.cancelled else "COMPLETED"


class _FakeSlurm:
    """Records what the driver asks of submitit's SLURM executor (no cluster here)."""

    def __init__(self, fail_kind: str = ""):
        self.params, self.jobs, self.fail_kind = {}, [], fail_kind

    def update_parameters(self, **kw):
        self.params.update(kw)

    def submit(self, fn, kind, *args):
        job = _FakeJob(len(self.jobs), kind, kind == self.fail_kind)
        job.dependency = self.params.get("slurm_additional_parameters", {}).get("dependency")
        job.account = self.params.get("slurm_additional_parameters", {}).get("account")
        self.jobs.append(job)
        return job


def test_slurm_jobs_depend_on_the_layer_before_and_a_failure_cancels_the_rest(tmp_path):
    params = _params(tmp_path)
    opts = ClusterOptions(launcher="slurm", partition="gpu", shards=2, per_job=8, gpus=1, slurm={"account": "lab"})
    ex = _FakeSlurm()
    sweep(str(params), tmp_path / "run", opts, notebooks=functools.partial(str, "nb"), ex=ex, log=lambda line: None)
    ids = {}
    for job in ex.jobs:
        ids.setdefault(job.kind, []).append(job.job_id)
    assert [len(ids[k]) for k in ("prepare", "train", "sample", "notebooks")] == [1, 2, 3, 1]
    after = {"prepare": None, "train": "afterok:" + ids["prepare"][0], "sample": "afterok:" + ":".join(ids["train"]),
             "notebooks": "afterok:" + ":".join(ids["sample"])}
    assert all(job.dependency == after[job.kind] and job.account == "lab" for job in ex.jobs)
    assert not (tmp_path / "run" / ".run.lock").exists()  # the lock was held while waiting, and released

    ex = _FakeSlurm(fail_kind="train")
    with pytest.raises(ClusterError, match=r"job 1001 \(train-draft\) failed: .*out of memory.*1001.err"):
        sweep(str(params), tmp_path / "run", opts, notebooks=functools.partial(str, "nb"), ex=ex, log=lambda line: None)
    assert [j.cancelled for j in ex.jobs] == [False, False] + [True] * (len(ex.jobs) - 2)


def test_launcher_options_are_checked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lib.runs, "RESULTS", tmp_path / "results")
    with pytest.raises(ConfigError, match="--shards"):
        ClusterOptions(shards=0)
    with pytest.raises(ConfigError, match="--mem-gb"):
        ClusterOptions(mem_gb=0)
    assert main([str(_params(tmp_path)), "--launcher", "slurm"]) == 2  # this machine has no sbatch
    assert "sbatch" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # refused before anything was written
    with pytest.raises(SystemExit):
        main([str(_params(tmp_path)), "--launcher", "local", "--slurm", "account"])
    assert "KEY=VALUE" in capsys.readouterr().err


class _FakeLocal(_FakeSlurm):
    """submitit's local executor as the driver sees it: jobs that have finished when it polls them."""

    def __init__(self, opts, folder):
        super().__init__()
        self.opts, self.folder, self.calls = opts, folder, []

    def submit(self, fn, kind, *args):
        job = super().submit(fn, kind, *args)
        job.finished = True
        self.calls.append((fn, kind, args))
        return job


def test_the_command_line_submits_the_sweep_with_the_notebooks_last(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lib.runs, "RESULTS", tmp_path / "results")
    made = []
    monkeypatch.setattr("lib.cluster.executor", lambda opts, folder: made.append(_FakeLocal(opts, folder)) or made[-1])
    params = str(_params(tmp_path))
    argv = [params, "--launcher", "local", "--shards", "2", "--per-job", "9", "--mem-gb", "8", "--slurm", "qos=high"]
    assert main(argv + ["--only", "03,04", "--force"]) == 0
    ex = made[0]
    root = tmp_path / "results" / "smoke"
    assert ex.folder == root / "cluster" and ex.opts.mem_gb == 8 and ex.opts.slurm == {"qos": "high"}
    assert [kind for _, kind, _ in ex.calls] == ["prepare", "train", "train", "sample", "sample", "notebooks"]
    assert all(args[:2] == (params, str(root.resolve())) and args[-1] is True for _, _, args in ex.calls)  # --force
    job = ex.calls[-1][2][2]
    assert job.func is notebooks_job and job.args == (run, params, ["03", "04"], True, str(root))
    assert f"results in {root}" in capsys.readouterr().out

    assert main(argv + ["--only", "99"]) == 2 and len(made) == 1  # an unknown notebook: refused, nothing submitted
    assert "no notebook numbered 99" in capsys.readouterr().err


def test_the_notebooks_job_shows_the_jobs_work_and_forces_only_the_later_stages():
    calls = []

    def fake_run(params_file, only, force, run_dir):
        calls.append((params_file, only, force, run_dir))

    assert notebooks_job(fake_run, "p.yaml", ["00", "01", "02", "03", "05"], True, "/r") == \
        "notebooks 00,01,02,03,05 done"
    assert calls == [("p.yaml", ["00", "01", "02"], False, Path("/r")), ("p.yaml", ["03", "05"], True, Path("/r"))]
    calls.clear()
    notebooks_job(fake_run, "p.yaml", ["04"], False, "/r")
    assert calls == [("p.yaml", ["04"], False, Path("/r"))]


def test_local_jobs_get_one_share_of_the_cores_unless_the_environment_says(monkeypatch):
    """Without OMP_NUM_THREADS (a bare `python -m lib.reproduce`, not `make`), the local launcher's jobs inherit
    CPUs // parallel threads, and the variable is unset again afterwards; a value the user set is kept; SLURM jobs
    are left to the cluster."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    with _threads(ClusterOptions(launcher="local", parallel=2)):
        assert os.environ["OMP_NUM_THREADS"] == "4"
    assert "OMP_NUM_THREADS" not in os.environ
    with _threads(ClusterOptions(launcher="local", parallel=16)):
        assert os.environ["OMP_NUM_THREADS"] == "1"
    with _threads(ClusterOptions(launcher="slurm", parallel=2)):
        assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with _threads(ClusterOptions(launcher="local", parallel=2)):
        assert os.environ["OMP_NUM_THREADS"] == "3"
    assert os.environ["OMP_NUM_THREADS"] == "3"
