import pandas as pd
import pytest

from lib.pareto import coverage, dominance_table, dominates, front, front_dominates, front_mask, hypervolume


def test_front_mixed_axes():
    # axis 0 maximised (reward), axis 1 minimised (FID)
    pts = [[1, 5], [2, 6], [2, 4], [0, 1], [1.5, 7]]
    mask = front_mask(pts, [True, False])
    assert mask.tolist() == [False, False, True, True, False]
    assert front(pts, [True, False]).tolist() == [[0, 1], [2, 4]]
    assert dominates([2, 4], [1, 5], [True, False]) and not dominates([1, 5], [2, 4], [True, False])


def test_hypervolume_rectangles():
    assert hypervolume([[1, 1]], [0, 0], [True, True]) == pytest.approx(1.0)
    assert hypervolume([[1, 2], [2, 1]], [0, 0], [True, True]) == pytest.approx(3.0)
    # minimised second axis: reference at worst (large) value
    assert hypervolume([[1, 1]], [0, 3], [True, False]) == pytest.approx(2.0)
    # dominated points add nothing
    assert hypervolume([[1, 2], [2, 1], [0.5, 0.5]], [0, 0], [True, True]) == pytest.approx(3.0)
    assert hypervolume([[1, 1, 1], [2, 0.5, 1]], [0, 0, 0], [True] * 3) == pytest.approx(1 + 0.5)


def test_front_dominance_and_coverage():
    a = [[1, 3], [3, 1], [2, 2.5]]
    b = [[1, 2], [2, 1]]
    assert front_dominates(a, b, [True, True]) and not front_dominates(b, a, [True, True])
    assert coverage(a, b, [True, True]) == 1.0 and coverage(b, a, [True, True]) == 0.0


def test_dominance_table_scaling():
    rows = []
    def add(method, setting, reward, fid):
        rows.append(dict(method=method, setting=setting, prompt_set="coverage", metric="reward", value=reward, n=10))
        rows.append(dict(method=method, setting=setting, prompt_set="coverage", metric="fid", value=fid, n=10))
    add("base", "-", 0.0, 0.0)
    add("draft", "-", 1.0, 1.0)
    add("aig", "power:2", 0.9, 0.1)
    add("lora_scale", "alpha=0.5", 0.5, 0.5)
    t = dominance_table(pd.DataFrame(rows), "fid").set_index("method")
    # unit square: ideal (1, 1), reference (0, 0); base (0, 1) and DRaFT (1, 0) have no area of their own
    assert t.loc["aig", "hypervolume"] == pytest.approx(0.9 * 0.9)
    assert t.loc["lora_scale", "hypervolume"] == pytest.approx(0.5 * 0.5)
    assert bool(t.loc["lora_scale", "aig_dominates"])
