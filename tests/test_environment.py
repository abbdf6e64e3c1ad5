"""requirements.txt is the one place dependencies are pinned; environment.yml mirrors it exactly."""
import yaml

from lib.runs import ROOT


def test_environment_yml_mirrors_requirements():
    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [l for l in lines if l]
    assert all("==" in r for r in reqs), "every requirement is pinned to an exact version"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == reqs
