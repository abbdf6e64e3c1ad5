"""Parameters files and the papermill runner."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from lib import reproduce
from lib.config import from_dict, load
from lib.errors import ConfigError
from lib.provenance import relative_paths, shown
from lib.runs import ROOT
from helpers import write_notebook


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "params").glob("*.yaml")))
def test_every_params_file_validates(name):
    cfg = load(ROOT / "params" / name, machine=False)  # GPU settings need not fit this machine to be valid
    assert cfg.run and cfg.domain in ("toy", "diffusers")
    if name in ("toy.yaml", "smoke.yaml", "smoke_sd.yaml"):  # what make reproduce and make test run here
        assert load(ROOT / "params" / name).device == "cpu"


@pytest.mark.parametrize("data, key", [
    ({"train": {"Kk": 1}}, "train.Kk"),
    ({"train": {"lr": -1}}, "train.lr"),
    ({"train": {"variant": "ppo"}}, "train.variant"),
    ({"sweep": {"aig": ["power:0"]}}, "power:0"),
    ({"sweep": {"lora_scales": [1.5]}}, "sweep.lora_scales"),
    ({"toy": {"num_steps": "ten"}}, "toy.num_steps"),
    ({"domain": "jax"}, "domain"),
    ({"colour": "red"}, "colour"),
])
def test_bad_values_name_key_value_and_rule(data, key):
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    msg = str(e.value)
    assert key in msg and "\n" not in msg


@pytest.mark.parametrize("metric, section", [("clip", "alignment"), ("dino_diversity", "diversity")])
def test_a_metric_the_domain_cannot_compute_is_refused_at_load(metric, section):
    with pytest.raises(ConfigError) as e:
        from_dict({"domain": "toy", "metrics": {section: [metric]}})
    msg = str(e.value)
    assert f"'{metric}' cannot be computed on domain 'toy'" in msg and "fid" in msg and "\n" not in msg
    sd = {"domain": "diffusers", "sd": {"model": "tiny"}, "metrics": {section: [metric]}}
    assert metric in from_dict(sd).metrics.names


def test_extends_overrides_a_preset_key_by_key(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "base.yaml").write_text(
        "domain: toy\ntoy:\n  num_steps: 7\n  hidden: 32\nsweep:\n  aig: ['power:1']\n  combined: [0.5]\n")
    (tmp_path / "run.yaml").write_text("extends: presets/base.yaml\nrun: child\ntoy:\n  hidden: 16\n")
    cfg = load(tmp_path / "run.yaml")
    assert (cfg.run, cfg.domain_config.num_steps, cfg.domain_config.hidden) == ("child", 7, 16)
    assert cfg.sweep.aig == ("power:1",) and cfg.sweep.combined == (0.5,)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\nrun: x\n")
    with pytest.raises(ConfigError, match="loops back"):
        load(tmp_path / "loop.yaml")


def test_paper_params_files_differ_from_their_preset_only_in_the_reward():
    a, b = load(ROOT / "params" / "sd14_pickscore.yaml"), load(ROOT / "params" / "sdxl_hpsv2.yaml")
    assert (a.domain_config.kind, a.domain_config.num_steps, a.domain_config.guidance_scale) == ("sd", 25, 7.5)
    assert (b.domain_config.kind, b.domain_config.guidance_scale, b.domain_config.resolution) == ("sdxl", 5.0, 1024)
    assert (a.domain_config.reward, b.domain_config.reward) == ("pickscore", "hpsv2")
    assert a.train == b.train and a.train.lora_rank == 32 and a.train.steps == 1200


def test_sweep_guidance_pairs_add_per_branch_methods():
    from lib.methods import sweep_methods

    cfg = from_dict({"sweep": {"aig": ["power:2"], "combined": [0.5], "guidance": [[7.5, 1]], "kl_lambdas": [],
                               "lora_scales": []}})
    labels = [m.label for m in sweep_methods(cfg.sweep)]
    assert labels == ["base", "draft", "aig power:2", "combined step:0.5", "aig power:2 cfg=7.5/1",
                      "combined step:0.5 cfg=7.5/1"]
    with pytest.raises(ConfigError, match="sweep.guidance"):
        from_dict({"sweep": {"guidance": [[0.5, 1]]}})


def test_bad_params_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: x\ntrain:\n  K: 0\n")
    out = subprocess.run([sys.executable, "-m", "lib.reproduce", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.K = 0" in lines[0] and "Traceback" not in out.stderr




def test_runner_writes_config_manifest_skips_and_keeps_failures(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_notebook(nbs / "00_ok.ipynb", "from pathlib import Path\n(Path(run_dir) / 'ran.txt').open('a').write('x')")
    params = tmp_path / "p.yaml"
    params.write_text("run: runner-test\ntoy:\n  num_steps: 5\n")
    run_dir = tmp_path / "run"
    reproduce.run(str(params), notebook_dir=nbs, run_dir=run_dir)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["toy"]["num_steps"] == 5
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["00_ok"]["status"] == "done" and "torch" in manifest["packages"]
    assert {"start", "end"} <= set(manifest["stages"]["00_ok"])
    assert (run_dir / "notebooks" / "00_ok.ipynb").exists()
    reproduce.run(str(params), notebook_dir=nbs, run_dir=run_dir)  # same config: skipped
    assert (run_dir / "ran.txt").read_text() == "x"
    nb = nbformat.read(nbs / "00_ok.ipynb", as_version=4)  # outputs and metadata do not make a stage stale ...
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="stored output")]
    nb.metadata["papermill"] = {"duration": 1.0}
    nbformat.write(nb, nbs / "00_ok.ipynb")
    reproduce.run(str(params), notebook_dir=nbs, run_dir=run_dir)
    assert (run_dir / "ran.txt").read_text() == "x"
    reproduce.run(str(params), notebook_dir=nbs, run_dir=run_dir, force=True)
    assert (run_dir / "ran.txt").read_text() == "xx"
    nb.cells[1].source += "\n# changed code"  # ... a changed cell does
    nbformat.write(nb, nbs / "00_ok.ipynb")
    reproduce.run(str(params), notebook_dir=nbs, run_dir=run_dir)
    assert (run_dir / "ran.txt").read_text() == "xxx"

    write_notebook(nbs / "01_fail.ipynb", "raise ValueError('boom')")
    with pytest.raises(RuntimeError, match="01_fail failed.*boom"):
        reproduce.run(str(params), only=["01"], notebook_dir=nbs, run_dir=run_dir)
    assert (run_dir / "notebooks" / "01_fail.ipynb").exists()
    with pytest.raises(ConfigError, match="no notebook numbered 07"):
        reproduce.run(str(params), only=["07"], notebook_dir=nbs, run_dir=run_dir)


def test_executed_notebooks_name_paths_inside_the_repository_relative_to_it(tmp_path):
    """An executed notebook's run_dir parameter and papermill's record of its input and output are relative to the
    repository root where they lie inside it (a committed notebook names no machine's folders); others stay."""
    assert shown(ROOT / "results" / "shapes") == Path("results/shapes") and shown(tmp_path) == tmp_path
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": str(ROOT / "notebooks" / "01_training.ipynb"),
                                "output_path": str(tmp_path / "01_training.ipynb")}
    nbformat.write(nb, str(tmp_path / "01_training.ipynb"))
    relative_paths(tmp_path / "01_training.ipynb")
    meta = nbformat.read(str(tmp_path / "01_training.ipynb"), as_version=4).metadata["papermill"]
    assert meta == {"input_path": "notebooks/01_training.ipynb", "output_path": str(tmp_path / "01_training.ipynb")}
