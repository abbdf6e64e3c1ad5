"""Nothing lost, nothing silent: the battery of bad inputs, interruptions, corrupted artefacts, a diverging training
and untrusted files. Each bad input is a one-line error naming the key, the value and the rule (or the file); each
corruption is detected and recomputed, or a one-line error naming the file; Ctrl-C stops a run with exit 130 and
the run resumes; a second run into a locked folder is refused; nothing is ever written outside results/."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lib import reproduce
from lib.config import from_dict, load
from lib.domains.sd import hub
from lib.domains.toy import ToyConfig, ToyDomain
from lib.errors import ArtefactError, ConfigError, TrainingDiverged
from lib.files import LOCK_NAME, run_lock
from lib.runs import ROOT
from lib.store import mark_done, read_samples, why_not_done, write_samples
from lib.train import TrainConfig, is_trained, train, trained_adapter
from helpers import write_notebook

TOY = ("domain: toy\ndevice: cpu\ntoy:\n  pretrain_steps: 150\n  num_steps: 4\n"
       "train:\n  steps: 4\n  batch_size: 8\n  checkpoint_every: 2\n"
       "sweep:\n  kl_lambdas: [1]\n  lora_scales: [0.5]\n  aig: ['power:2']\n  combined: [0.5]\n"
       "  samples_per_prompt: 12\n  batch_size: 64\nmetrics:\n  kl_samples: 2\n")
GOOD = {"run": "ok", "toy": {"pretrain_steps": 150, "num_steps": 4}, "sweep": {"samples_per_prompt": 12}}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _params(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _with(section: str, key: str, value) -> dict:
    data = json.loads(json.dumps(GOOD))
    if section:
        data.setdefault(section, {})[key] = value
    else:
        data[key] = value
    return data


# ------------------------------------------------------------------------------------------------- bad inputs
BAD = [  # (params mapping, text the one-line error must hold)
    (_with("", "run", ".."), "run = '..'"),
    (_with("", "run", "."), "run = '.'"),
    (_with("", "run", "a/b"), "run = 'a/b'"),
    (_with("", "run", "a\0b"), "run = 'a\\x00b'"),
    (_with("", "run", ""), "run = ''"),
    (_with("", "device", "banana"), "device = 'banana'"),
    (_with("", "device", 3), "device = 3"),
    (_with("metrics", "kl_samples", 0), "metrics.kl_samples = 0"),
    (_with("metrics", "kl_samples", -5), "metrics.kl_samples = -5"),
    (_with("metrics", "k", 1000), "metrics.k = 1000"),
    (_with("metrics", "diversity", []), "metrics.diversity"),
    (_with("sweep", "eval_samples_per_prompt", -1), "sweep.eval_samples_per_prompt = -1"),
    (_with("sweep", "seed_offset", -10**12), "sweep.seed_offset = -1000000000000"),
    (_with("sweep", "seed_offset", 2**60), "sweep.seed_offset"),
    (_with("sweep", "prompt_sets", ["coverage", "file:../.."]), "sweep.prompt_sets = 'file:../..'"),
    (_with("sweep", "prompt_sets", ["coverage", "../../x"]), "sweep.prompt_sets = '../../x'"),
    (_with("sweep", "prompt_sets", ["coverage", "partiprompts"]), "sweep.prompt_sets = 'partiprompts'"),
    (_with("sweep", "kl_lambdas", [float("inf")]), "sweep.kl_lambdas = inf"),
    (_with("sweep", "guidance", [[float("inf"), 1]]), "sweep.guidance = inf"),
    ({**GOOD, "sweep": {**GOOD["sweep"], "kl_lambdas": [], "lora_scales": [], "aig": [], "combined": []}},
     "sweep.lora_scales, sweep.aig, sweep.combined, sweep.kl_lambdas"),
    (_with("train", "grad_clip", float("inf")), "train.grad_clip = inf"),
    (_with("train", "kl_lambda", float("inf")), "train.kl_lambda = inf"),
    (_with("train", "lr", float("nan")), "train.lr = nan"),
    (_with("train", "seed", -1), "train.seed = -1"),
    (_with("toy", "seed", -1), "toy.seed = -1"),
    (_with("toy", "hidden", 0), "toy.hidden = 0"),
    ({"run": "x", "domain": "diffusers", "sd": {"model": "tiny", "eval_prompts": ["file:../../etc/passwd"]}},
     "sd.eval_prompts = 'file:../../etc/passwd'"),
    ({"run": "x", "domain": "diffusers", "sd": {"model": "tiny", "revisions": {"modle": "main"}}},
     "sd.revisions.modle"),
    ({"run": "x", "domain": "diffusers", "sd": {"model": "tiny", "revisions": {"model": "main; rm -rf"}}},
     "sd.revisions.model"),
]


@pytest.mark.parametrize("data, text", BAD, ids=[t for _, t in BAD])
def test_bad_values_are_refused_at_load_naming_key_value_and_rule(data, text):
    with pytest.raises(ConfigError) as e:
        from_dict(data, machine=True)
    msg = str(e.value)
    assert text in msg and "\n" not in msg and ("expected" in msg or "allowed" in msg), msg


MEMORY = [  # settings whose memory need exceeds any machine: the message says how much is needed and there is
    (_with("sweep", "samples_per_prompt", 10**9), "sweep.samples_per_prompt = 1000000000"),
    (_with("sweep", "batch_size", 10**9), "sweep.batch_size = 1000000000"),
    (_with("train", "batch_size", 10**12), "train.batch_size = 1000000000000"),
    (_with("toy", "hidden", 10**6), "toy.hidden = 1000000"),
    ({"run": "x", "domain": "diffusers", "sd": {"model": "tiny", "resolution": 8192},
      "sweep": {"samples_per_prompt": 100000}}, "sweep.samples_per_prompt = 100000"),
]


@pytest.mark.parametrize("data, text", MEMORY, ids=[t for _, t in MEMORY])
def test_settings_that_cannot_fit_in_memory_are_refused_saying_how_much(data, text):
    with pytest.raises(ConfigError) as e:
        from_dict(data, machine=True)
    msg = str(e.value)
    assert text in msg and "needs at least" in msg and "this machine has" in msg and "\n" not in msg, msg
    from_dict(data, machine=False)  # the same params are structurally fine: only this machine cannot run them


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_device_without_cuda_is_refused_at_load(tmp_path):
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=f"device = '{device}' is not allowed here: this machine has no CUDA"):
            load(_params(tmp_path, f"run: x\ndevice: {device}\n"))
    assert load(_params(tmp_path, "run: x\ndevice: cuda\n"), machine=False).device == "cuda"


FILES = [  # (file content or a path-producing callable, text of the one-line error)
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("{}\n", "is empty"),
    ("toy:\n  num_steps: 5\n", "no `run:` key"),
    ("run: a\nrun: b\n", "key 'run' appears twice in one mapping (lines 1 and 2)"),
    ("run: a\ntrain:\n  lr: 0.1\n  K: 2\n  lr: 0.2\n", "key 'lr' appears twice in one mapping (lines 3 and 5)"),
    ("run: a\ntrain: [1, 2\n", "is not valid YAML"),
    ("- run: a\n", "expected a mapping"),
    (b"run: caf\xe9\n", "is not UTF-8 text"),
]


@pytest.mark.parametrize("content, text", FILES, ids=[t for _, t in FILES])
def test_bad_params_files_are_one_line_errors_naming_the_file(tmp_path, content, text):
    p = tmp_path / "p.yaml"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as e:
        load(p)
    assert text in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_directory_dev_null_or_missing_file_is_refused(tmp_path):
    for path, text in ((tmp_path, "is a directory"), (Path("/dev/null"), "is empty"),
                       (tmp_path / "nope.yaml", "does not exist"), (Path("a\0b.yaml"), "not a usable path")):
        with pytest.raises(ConfigError) as e:
            load(path)
        assert text in str(e.value) and "\n" not in str(e.value)


def _main(capsys, *args) -> tuple[int, str]:
    code = reproduce.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_the_command_line_gives_one_line_and_exit_2_for_each_bad_input(tmp_path, capsys):
    cases = [(tmp_path, "is a directory"), ("/dev/null", "is empty"),
             (_params(tmp_path, "run: a\nrun: b\n", "dup.yaml"), "appears twice"),
             (_params(tmp_path, 'run: "a\\0b"\n', "nul.yaml"), "run = 'a\\x00b'"),
             (_params(tmp_path, "run: x\ndevice: banana\n", "dev.yaml"), "device = 'banana'")]
    for arg, text in cases:
        code, err = _main(capsys, arg)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and text in err, err
        assert "Traceback" not in err


def test_run_dotdot_is_refused_and_nothing_is_written_outside_results(tmp_path):
    before_root = {p.name for p in ROOT.iterdir()}
    before_nb = {p: p.stat().st_mtime_ns for p in (ROOT / "notebooks").glob("*.ipynb")}
    p = _params(tmp_path, "run: '..'\n")
    out = subprocess.run([sys.executable, "-m", "lib.reproduce", str(p)], cwd=ROOT, capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert out.returncode == 2 and "run = '..' is not allowed" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    for name in (".", "../notebooks", "results/../.."):
        assert reproduce.main([str(_params(tmp_path, f"run: '{name}'\n"))]) == 2
    assert {p.name for p in ROOT.iterdir()} == before_root  # no config.yaml, manifest.json, artefacts/ at the root
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "notebooks").glob("*.ipynb")} == before_nb


def test_a_run_folder_outside_results_or_over_the_repository_is_refused(tmp_path):
    cfg = from_dict(GOOD)
    from lib.runs import run_paths

    for bad in (ROOT, ROOT.parent, ROOT / "notebooks", ROOT / "results"):
        with pytest.raises(ConfigError, match="run_dir"):
            run_paths(cfg, bad)
    link = ROOT / "results" / "reliability-link-test"
    try:  # a run folder that is a symlink out of results/
        link.symlink_to(tmp_path, target_is_directory=True)
        with pytest.raises(ConfigError, match="run = 'reliability-link-test'"):
            run_paths(from_dict({**GOOD, "run": "reliability-link-test"}))
    finally:
        link.unlink(missing_ok=True)
    assert run_paths(cfg, tmp_path / "elsewhere").root == tmp_path / "elsewhere"


def test_sample_keys_cannot_leave_the_samples_folder(tmp_path):
    x = np.zeros((2, 2), np.float32)
    for key in ("../../escape/base", "..", "coverage/../../x"):
        with pytest.raises(ArtefactError, match="outside"):
            write_samples(tmp_path / "samples", key, x, [(0, 0), (0, 1)], "s")
    assert not (tmp_path / "escape").exists()


def test_a_file_prompt_set_is_read_from_its_prompt_paths_entry(tmp_path):
    from lib.domains.sd.prompts import prompt_set

    f = tmp_path / "mine.txt"
    f.write_text("a cat\na dog\n")
    assert prompt_set("file:mine", path=str(f)) == ["a cat", "a dog"]
    cfg = from_dict({"run": "x", "domain": "diffusers", "sd": {"model": "tiny", "prompt_paths": {"file:mine": str(f)}},
                     "sweep": {"prompt_sets": ["coverage", "file:mine"]}})
    assert cfg.sweep.prompt_sets == ("coverage", "file:mine")


# ------------------------------------------------------------------------------------- divergence and NaNs
@pytest.fixture(scope="module")
def toy20(tmp_path_factory) -> ToyDomain:
    """A toy with 20 sampling steps (where lr 0.5 diverges, as params/toy.yaml did), in a run folder."""
    root = tmp_path_factory.mktemp("results") / "nanrun"
    d = ToyDomain(ToyConfig(pretrain_steps=150, num_steps=20), root=root)
    d.prepare(progress=False)
    return d


def test_a_diverging_training_stops_at_the_first_nan_naming_run_step_and_quantity(toy20):
    out = toy20.base_path.parent.parent / "train" / "draft"
    cfg = TrainConfig(steps=12, batch_size=16, lr=0.5, grad_clip=1.0, checkpoint_every=100)
    with pytest.raises(TrainingDiverged) as e:
        train(toy20, cfg, out, progress=False, run="nanrun")
    msg = str(e.value)
    assert "run nanrun" in msg and "training draft" in msg and "the loss is nan at step 3 of 12" in msg, msg
    assert "train.lr" in msg and "\n" not in msg
    assert not (out / "adapter.safetensors").exists() and not (out / "train.json").exists()
    assert not is_trained(out, cfg, toy20)


def test_non_finite_samples_are_refused_when_written_and_when_read(tmp_path):
    x = np.zeros((4, 2), np.float32)
    x[1, 0] = np.nan
    pairs = [(0, i) for i in range(4)]
    with pytest.raises(ArtefactError, match=r"the samples of coverage/draft__-: 1 of 4 samples are not finite"):
        write_samples(tmp_path, "coverage/draft__-", x, pairs, "s")
    folder = tmp_path / "coverage" / "draft__-"  # shards written by an older version, then read by notebook 03
    folder.mkdir(parents=True)
    np.savez(folder / "shard_r000_00000.npz", x=x, prompt=np.zeros(4, int), seed=np.arange(4), position=np.arange(4))
    mark_done(tmp_path, "coverage/draft__-", "s", 4, dict(method="draft", setting="-", prompt_set="coverage"))
    with pytest.raises(ArtefactError, match=r"stored samples of draft - on coverage: 1 of 4 samples are not finite"):
        read_samples(tmp_path, "coverage/draft__-")




HEAD = "from lib.config import load\nfrom lib.runs import run_paths\ncfg = load(params_file)\npaths = run_paths(cfg, run_dir)\n"
STAGES = {"01_train": HEAD + "from lib.stages import stage_train\nstage_train(cfg, paths, progress=False)",
          "02_sample": HEAD + "from lib.stages import stage_sample\nstage_sample(cfg, paths, progress=False)",
          "03_metrics": HEAD + "from lib.stages import stage_metrics\nstage_metrics(cfg, paths, progress=False)"}


@pytest.fixture
def stage_notebooks(tmp_path) -> Path:
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    for name, code in STAGES.items():
        write_notebook(nbs / f"{name}.ipynb", code)
    return nbs


def test_the_runner_marks_a_diverging_stage_failed_and_never_done(tmp_path, stage_notebooks):
    params = _params(tmp_path, "run: diverge\n" + TOY.replace("num_steps: 4", "num_steps: 20")
                     .replace("  steps: 4\n", "  steps: 12\n  lr: 0.5\n  grad_clip: 1.0\n")
                     .replace("batch_size: 8", "batch_size: 16"))
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError) as e:
        reproduce.run(str(params), notebook_dir=stage_notebooks, run_dir=run_dir)
    assert "stage 01_train failed (TrainingDiverged: run diverge, training draft: the loss is nan at step" in str(e.value)
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert stages["01_train"]["status"] == "failed" and set(stages) == {"01_train"}  # 02 and 03 never ran
    assert not (run_dir / "train" / "draft" / "adapter.safetensors").exists()
    assert not (run_dir / "artefacts" / "01_train.json").exists()


# -------------------------------------------------------------------- corrupted artefacts, through the runner
def _lines(out: str, stage: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"[{stage}]")]


def test_stages_are_skipped_only_when_every_artefact_verifies(tmp_path, stage_notebooks, capsys):
    params = _params(tmp_path, "run: verify\n" + TOY)
    run_dir = tmp_path / "run"
    reproduce.run(str(params), notebook_dir=stage_notebooks, run_dir=run_dir)
    metrics = (run_dir / "metrics.csv").read_bytes()
    records = {s: json.loads((run_dir / "artefacts" / f"{s}.json").read_text()) for s in STAGES}
    files = {f["path"] for f in records["02_sample"]["files"]}
    assert "notebooks/02_sample.ipynb" in files and any(f.endswith(".npz") for f in files)
    assert {"models/base.safetensors", "train/draft/adapter.safetensors"} <= {f["path"] for f in records["01_train"]["files"]}
    capsys.readouterr()

    reproduce.run(str(params), notebook_dir=stage_notebooks, run_dir=run_dir)  # nothing changed: all skipped
    out = capsys.readouterr().out
    assert all("up to date" in _lines(out, s)[0] for s in STAGES), out

    # a fresh clone's models (git-ignored, absent), a truncated shard, and a valid shard of another method in the
    # place of a third: 01 trains again, 02 names the first bad file and samples both again; the retrained models are
    # the same bit for bit, so 03's inputs are unchanged and it is skipped, its metrics.csv verified
    for folder in ("models", "train"):
        shutil.rmtree(run_dir / folder)
    samples = run_dir / "samples" / "coverage"
    truncated = samples / "aig__power-2" / "shard_r000_00000.npz"
    truncated.write_bytes(truncated.read_bytes()[:100])
    swapped = samples / "lora_scale__alpha-0.5" / "shard_r000_00000.npz"
    shutil.copy(samples / "draft__-" / "shard_r000_00000.npz", swapped)
    with pytest.raises(ArtefactError, match="lora_scale__alpha-0.5/shard_r000_00000.npz does not match the sha256"):
        read_samples(run_dir / "samples", "coverage/lora_scale__alpha-0.5")  # notebook 03 on its own refuses it
    reproduce.run(str(params), notebook_dir=stage_notebooks, run_dir=run_dir)
    out = capsys.readouterr().out
    line = _lines(out, "01_train")[0]
    assert "running (models/" in line and "is missing" in line, out
    assert "running (samples/coverage/aig__power-2/shard_r000_00000.npz has 100 bytes" in _lines(out, "02_sample")[0]
    assert "up to date" in _lines(out, "03_metrics")[0] and (run_dir / "metrics.csv").read_bytes() == metrics
    assert why_not_done(run_dir / "samples", "coverage/lora_scale__alpha-0.5",
                        json.loads((swapped.parent / "done.json").read_text())["stamp"]) is None
    for needed in ("models/base.safetensors", "train/draft/adapter.safetensors", "train/kl_lambda-1/adapter.safetensors"):
        assert (run_dir / needed).is_file()  # what the explorer (notebook 05) needs
    reproduce.run(str(params), notebook_dir=stage_notebooks, run_dir=run_dir)
    out = capsys.readouterr().out
    assert all("up to date" in _lines(out, s)[0] for s in STAGES), out

    # a truncated manifest: one line naming the file (and nothing run)
    (run_dir / "manifest.json").write_text('{"stages": {"01_tr')
    with pytest.raises(ArtefactError) as e:
        reproduce.run(str(params), notebook_dir=stage_notebooks, run_dir=run_dir)
    assert str(run_dir / "manifest.json") in str(e.value) and "unreadable or truncated" in str(e.value)


# --------------------------------------------------------------------- corrupted artefacts, inside a stage
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    d = ToyDomain(ToyConfig(pretrain_steps=150, num_steps=4), root=root)
    d.prepare(progress=False)
    cfg = TrainConfig(steps=4, batch_size=8, checkpoint_every=2)
    train(d, cfg, root / "train" / "draft", progress=False)
    return d, cfg, root / "train" / "draft"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_truncated_adapter_is_retrained_and_never_loaded(trained, tmp_path, capsys):
    d, cfg, out = trained
    out = _copy(out, tmp_path / "draft")
    adapter = out / "adapter.safetensors"
    good = adapter.read_bytes()
    adapter.write_bytes(good[: len(good) // 2])
    with pytest.raises(ArtefactError, match=f"{adapter} has {len(good) // 2} bytes where {len(good)} were recorded"):
        trained_adapter(out)
    with pytest.raises(ArtefactError, match=f"{adapter}: unreadable"):
        d.load_adapter(adapter)  # a load without the record still names the file
    assert not is_trained(out, cfg, d)
    assert f"{adapter} has" in capsys.readouterr().err
    train(d, cfg, out, progress=False)  # resumes from the final checkpoint and writes the adapter again
    assert adapter.read_bytes() == good and is_trained(out, cfg, d)


def test_a_truncated_or_planted_checkpoint_is_not_loaded_and_training_starts_again(trained, tmp_path, capsys):
    d, cfg, out = trained
    reference = (out / "adapter.safetensors").read_bytes()
    marker = tmp_path / "pwned"

    class Payload:  # what a planted checkpoint would run on a pickle load
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name, content in (("truncated", (out / "checkpoint.pt").read_bytes()[:200]), ("planted", None)):
        run = _copy(out, tmp_path / name)
        (run / "adapter.safetensors").unlink()
        if content is None:
            torch.save({"key": "x", "step": 2, "evil": Payload()}, run / "checkpoint.pt")
        else:
            (run / "checkpoint.pt").write_bytes(content)
        train(d, cfg, run, progress=False)
        err = capsys.readouterr().err
        assert f"{run / 'checkpoint.pt'}: cannot resume from this checkpoint" in err and "from step 0" in err, err
        assert (run / "adapter.safetensors").read_bytes() == reference
    assert not marker.exists()


def test_a_truncated_base_model_is_pretrained_again_and_never_loaded(trained, tmp_path, capsys):
    d, _, out = trained
    root = _copy(d.base_path.parent.parent, tmp_path / "run")
    copy = ToyDomain(d.cfg, root=root)
    good = copy.base_path.read_bytes()
    copy.base_path.write_bytes(good[:64])
    with pytest.raises(ArtefactError, match=f"{copy.base_path}: unreadable"):
        copy.base_model()
    assert copy.prepare(progress=False) is not None  # retrained
    assert f"{copy.base_path} has 64 bytes" in capsys.readouterr().out
    assert copy.base_path.read_bytes() == good and copy.prepare(progress=False) is None


def test_checkpoints_load_with_weights_only(trained):
    _, _, out = trained
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and all(torch.is_tensor(r) for r in state["rngs"])


def test_no_pickle_loads_in_lib():
    hits = [f"{p}:{i}" for p in (ROOT / "lib").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if "weights_only=False" in line]
    assert hits == []


# ------------------------------------------------------------------------------------ interruption and locks
def _start(params: Path, nbs: Path, run_dir: Path) -> subprocess.Popen:
    code = ("import sys; from pathlib import Path; from lib import reproduce; "
            f"sys.argv = ['lib.reproduce', {str(params)!r}]; "
            f"reproduce.run = (lambda f=reproduce.run: lambda p, *a, **k: f(p, *a, notebook_dir=Path({str(nbs)!r}), "
            f"run_dir=Path({str(run_dir)!r}), **k))(); sys.exit(reproduce.main())")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.1)


def test_ctrl_c_stops_the_run_within_seconds_marks_it_interrupted_and_exits_130(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_notebook(nbs / "00_slow.ipynb", "import time\nfrom pathlib import Path\nfrom lib.files import write_text\n"
              "write_text(Path(run_dir) / 'finished.txt', 'kept')\n(Path(run_dir) / 'started').write_text('')\n"
              "for _ in range(600):\n    time.sleep(0.1)\n(Path(run_dir) / 'ran-to-the-end').write_text('')")
    params = _params(tmp_path, "run: slow\n")
    run_dir = tmp_path / "run"
    proc = _start(params, nbs, run_dir)
    _wait_for(run_dir / "started", proc)
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert time.time() - t0 < 15 and "interrupted" in err and "Traceback" not in err, err
    stage = json.loads((run_dir / "manifest.json").read_text())["stages"]["00_slow"]
    assert stage["status"] == "interrupted" and not (run_dir / "ran-to-the-end").exists()
    assert (run_dir / "finished.txt").read_text() == "kept" and not (run_dir / LOCK_NAME).exists()
    time.sleep(1)
    assert not (run_dir / "ran-to-the-end").exists()  # the kernel is gone, not left running


def test_ctrl_c_during_training_resumes_from_the_checkpoint(tmp_path, stage_notebooks):
    params = _params(tmp_path, "run: resume\n" + TOY.replace("  steps: 4\n", "  steps: 120\n")
                     .replace("checkpoint_every: 2", "checkpoint_every: 5").replace("kl_lambdas: [1]", "kl_lambdas: []"))
    run_dir = tmp_path / "run"
    proc = _start(params, stage_notebooks, run_dir)
    first = run_dir / "train" / "draft" / "checkpoints" / "adapter-step000005.safetensors"
    _wait_for(first, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = torch.load(run_dir / "train" / "draft" / "checkpoint.pt", weights_only=True)["step"]
    assert 5 <= done < 120 and not (run_dir / "train" / "draft" / "adapter.safetensors").exists()
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["01_train"]["status"] == "interrupted"
    stamp = first.stat().st_mtime_ns
    reproduce.run(str(params), only=["01"], notebook_dir=stage_notebooks, run_dir=run_dir)
    assert first.stat().st_mtime_ns == stamp  # steps before the checkpoint were not trained again
    assert (run_dir / "train" / "draft" / "log.csv").read_text().count("\n") == 121
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["01_train"]["status"] == "done"


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lib.files import run_lock\n"
                               f"with run_lock({str(run_dir)!r}):\n    print('held', flush=True); time.sleep(120)"],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        params = _params(tmp_path, "run: locked\n")
        monkeypatch.setattr(reproduce, "run", (lambda f: lambda p, *a, **k: f(p, *a, run_dir=run_dir, **k))(reproduce.run))
        code, err = _main(capsys, params)
        assert code == 2 and f"is in use by process {holder.pid}" in err and err.count("\n") == 1, err
    finally:
        holder.kill()  # SIGKILL: the holder cannot clean up; its lock file stays behind
        holder.wait()
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "manifest.json").exists()
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == holder.pid
    with run_lock(run_dir):  # the dead holder's lock is free again: taken over, saying so
        assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"taking over the lock of {run_dir} left by process {holder.pid}" in err, err
    assert not (run_dir / LOCK_NAME).exists()


# --------------------------------------------------------------------------------------------- untrusted files
@pytest.fixture
def fake_hub(tmp_path):
    """A hub cache with refs/main of one repository, and the hub policy pointed at a run folder."""
    cache = tmp_path / "hub"
    ref = cache / "models--org--reward" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("a" * 40)
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"stages": {}}))
    hub.configure({"reward": "main"}, {"org/reward": "reward"}, run)
    yield cache, ref, run
    hub.configure({}, {}, None)


def test_hub_loads_record_the_resolved_commit_and_refuse_a_change(fake_hub, monkeypatch):
    cache, ref, run = fake_hub
    calls = []
    loader = lambda src, **kw: calls.append((src, kw)) or "model"  # noqa: E731
    assert hub.load(loader, "org/reward", "reward model", "sd.reward_path", cache_dir=str(cache)) == "model"
    assert calls[0][1]["revision"] == "main"
    entry = json.loads((run / "manifest.json").read_text())["hub"]["reward model org/reward"]
    assert entry == {"repo": "org/reward", "revision": "main", "key": "sd.revisions.reward", "commit": "a" * 40}
    ref.write_text("b" * 40)  # the branch moved on the hub
    with pytest.raises(hub.HubChanged) as e:
        hub.load(loader, "org/reward", "reward model", "sd.reward_path", cache_dir=str(cache))
    msg = str(e.value)
    assert "b" * 40 in msg and "a" * 40 in msg and "sd.revisions.reward" in msg and "--accept-hub-changes" in msg
    monkeypatch.setenv(hub.ACCEPT_ENV, "1")
    hub.load(loader, "org/reward", "reward model", "sd.reward_path", cache_dir=str(cache))
    assert json.loads((run / "manifest.json").read_text())["hub"]["reward model org/reward"]["commit"] == "b" * 40
    hub.POLICY.revisions["reward"] = "c" * 40  # a pinned commit is used as the revision and recorded as is
    hub.load(loader, "org/reward", "reward model", "sd.reward_path", cache_dir=str(cache))
    assert calls[-1][1]["revision"] == "c" * 40


def test_an_offline_hub_load_names_the_override_and_the_revision_key(fake_hub):
    def offline(src, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    with pytest.raises(OSError) as e:
        hub.load(offline, "org/reward", "reward model", "sd.reward_path")
    msg = str(e.value)
    assert "'org/reward' at revision 'main'" in msg and "`sd.reward_path`" in msg and "`sd.revisions.reward`" in msg
    assert "\n" not in msg


def test_data_files_record_their_sha256_and_a_changed_file_is_refused(fake_hub, monkeypatch):
    from lib.domains.sd import prompts

    cache, _, run = fake_hub
    style = cache / "hpdv2" / "main" / "anime.json"
    style.parent.mkdir(parents=True)
    style.write_text(json.dumps([f"p{i}" for i in range(800)]))
    assert len(prompts.hpdv2_prompts("anime", cache_dir=cache)) == 800
    rec = json.loads((run / "manifest.json").read_text())["hub"]["data hpdv2/anime.json"]
    assert rec["url"].endswith("/resolve/main/benchmark/anime.json") and len(rec["sha256"]) == 64
    style.write_text(json.dumps([f"q{i}" for i in range(800)]))
    with pytest.raises(hub.HubChanged, match="data hpdv2/anime.json: resolved to sha256"):
        prompts.hpdv2_prompts("anime", cache_dir=cache)
    hub.POLICY.revisions["hpdv2"] = "d" * 40  # a pinned revision reads its own copy
    with pytest.raises(RuntimeError, match=f"resolve/{'d' * 40}/benchmark/anime.json"):
        monkeypatch.setattr(hub.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
        prompts.hpdv2_prompts("anime", cache_dir=cache)


def _inception_file(tmp_path: Path) -> Path:
    """A weights file in the format of torch-fidelity's InceptionV3 (random weights, a plain state dict)."""
    from torch_fidelity import feature_extractor_inceptionv3 as tfi

    cls = tfi.FeatureExtractorInceptionV3
    with torch.random.fork_rng(devices=[]):
        original, cls.load_state_dict = cls.load_state_dict, lambda self, sd: None
        try:
            with hub.torch_fidelity_weights({}):
                net = cls("inception-v3-compat", ["2048"])
        finally:
            cls.load_state_dict = original
    path = tmp_path / hub.INCEPTION_FILE
    torch.save(net.state_dict(), path)
    return path


def test_inception_weights_are_hash_checked_and_loaded_weights_only(tmp_path, monkeypatch):
    from lib.files import sha256_file
    from torch_fidelity import feature_extractor_inceptionv3 as tfi

    assert hub.INCEPTION_SHA256.startswith(hub.INCEPTION_FILE.split("-")[-1].split(".")[0])  # the file's own prefix
    path = _inception_file(tmp_path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    cached = tmp_path / "torch_hub" / "checkpoints" / hub.INCEPTION_FILE
    monkeypatch.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(RuntimeError, match=r"could not download .* sd.feature_paths\['inception'\]"):
        hub.inception_state_dict()
    cached.parent.mkdir(parents=True)
    shutil.copy(path, cached)  # not the published file: refused, naming the file and the pinned hash
    with pytest.raises(ValueError, match=f"{cached}: sha256 .* does not match the expected {hub.INCEPTION_SHA256}"):
        hub.inception_state_dict()
    state = hub.inception_state_dict(sha256=sha256_file(cached))
    with pytest.warns(UserWarning, match="not comparable with published numbers"):  # a local override is reported
        assert hub.inception_state_dict(path).keys() == state.keys()
    with monkeypatch.context() as m, hub.torch_fidelity_weights(state):
        m.setattr(tfi.torch, "load", lambda *a, **k: pytest.fail("torch-fidelity unpickled a file"))
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    feats = net(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))[0]
    assert feats.shape == (1, 2048)
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"x": Path("/")}, f, protocol=2)
    with pytest.warns(UserWarning), pytest.raises(ArtefactError, match=f"{evil}: not readable as a weights-only"):
        hub.inception_state_dict(evil)
