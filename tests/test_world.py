"""The miniature SD world's generator, annotators and config (seconds; no training)."""
from __future__ import annotations

import numpy as np
import pytest

from lib.domains.world import annotators as A
from lib.domains.world.config import SHAPES, WorldConfig, colour_of, shape_of, world_config
from lib.domains.world.layout import key_of
from lib.domains.world.pairs import accuracy, corrupt, make_pairs, mix_backgrounds
from lib.domains.world.render import (NUM_MODES, SAT_RANGE, SHADE_RANGE, VAL_RANGE, make_dataset, mode_name,
                                      mode_parts, render, sample_labels)
from lib.errors import ConfigError

CFG = WorldConfig()


@pytest.fixture(scope="module")
def data():
    return make_dataset(CFG, 1500, seed=3)


def test_prompts_and_labels():
    assert len(CFG.prompts) == 16 and CFG.prompts[0] == "a red circle" and CFG.prompts[5] == "a yellow square"
    assert all(SHAPES[shape_of(p)] == p.split()[-1] for p in CFG.prompts)
    assert [colour_of(p) for p in CFG.prompts[::4]] == [0, 1, 2, 3]
    assert NUM_MODES == 16 and mode_name(7) == "top-right large dark"
    p, z, b = mode_parts(np.arange(16))
    assert (4 * p + 2 * z + b == np.arange(16)).all()


def test_render_is_deterministic_and_in_range(data):
    again = make_dataset(CFG, 1500, seed=3)
    assert data.images.shape == (1500, 3, 32, 32) and data.images.dtype == np.float32
    assert np.array_equal(data.images, again.images)
    assert 0 <= data.images.min() and data.images.max() <= 1
    assert np.bincount(data.labels.mode, minlength=16).min() > 50  # every mode is drawn


def test_mode_reader_reads_the_generator(data):
    r = A.read(data.images, data.labels.shape)
    assert (r.background == data.labels.background).mean() == 1.0
    assert (r.position == data.labels.position).mean() == 1.0
    assert (r.size == data.labels.size).mean() > 0.98
    assert not r.empty.any() and r.artifact.max() < 0.04
    u8 = (data.images * 255).round().astype(np.uint8)  # stored samples read the same
    assert (A.read(u8, data.labels.shape).mode == r.mode).mean() > 0.99


def test_style_measurements_follow_the_style_variables(data):
    r = A.read(data.images, data.labels.shape)
    big = data.labels.size == 1
    assert np.corrcoef(r.saturation[big], data.labels.sat[big])[0, 1] > 0.9
    assert np.corrcoef(r.value[big], data.labels.val[big])[0, 1] > 0.85
    assert np.corrcoef(r.shading[big], data.labels.shading[big])[0, 1] > 0.7


def test_annotators_pull_toward_one_mode_with_style_near_every_mode(data):
    r = A.read(data.images, data.labels.shape)
    lab = data.labels
    ua, ub = A.utility(r, "pickscore", 32), A.utility(r, "hpsv2", 32)
    # A: dark backgrounds and large objects; B: the top-left quadrant
    assert ua[lab.background == 1].mean() > ua[lab.background == 0].mean() + 0.4
    assert ua[lab.size == 1].mean() > ua[lab.size == 0].mean() + 0.2
    assert ub[lab.position == 0].mean() > ub[lab.position != 0].mean() + 0.6
    # Lemma 1's collapse: one mode is best on average; A.5: in every mode the most stylish image of the data's style
    # ranges beats that best mode's average (a high-reward region close to every mode)
    for name, u, style in (("pickscore", ua, dict(sat=SAT_RANGE[1], val=VAL_RANGE[1])),
                           ("hpsv2", ub, dict(sat=SAT_RANGE[0], shading=SHADE_RANGE[1]))):
        styled = sample_labels(np.random.default_rng(1), 16 * 16, prompt=np.repeat(np.arange(16), 16))
        modes = np.tile(np.arange(16), 16)
        styled.position, styled.size, styled.background = mode_parts(modes)
        for key, v in style.items():
            setattr(styled, key, np.full(len(modes), v, np.float32))
        us = A.utility(A.read(render(styled), styled.shape), name, 32)
        means = [u[lab.mode == m].mean() for m in range(16)]
        assert min(us[modes == m].mean() for m in range(16)) > max(means), name
    with pytest.raises(ValueError, match="annotator"):
        A.utility(r, "nobody", 32)


def test_artifacts_are_disliked(data):
    rng = np.random.default_rng(0)
    x = data.images[:200]
    bad = corrupt(x, rng)
    for ann in A.ANNOTATORS:
        u0 = A.utility(A.read(x, data.labels.shape[:200]), ann, 32)
        u1 = A.utility(A.read(bad, data.labels.shape[:200]), ann, 32)
        assert (u1 < u0).mean() > 0.9


def test_pairs_and_accuracy():
    pairs = make_pairs(CFG, "pickscore", 300, seed=1)
    assert pairs.a.shape == pairs.b.shape == (300, 3, 32, 32)
    perfect = accuracy(pairs.ua, pairs.ub, pairs)
    assert perfect["vs_truth"] == 1.0 and 0.6 < perfect["vs_choices"] == perfect["annotator_vs_choices"] < 1.0
    assert accuracy(pairs.ub, pairs.ua, pairs)["vs_truth"] == 0.0


def test_empty_images_are_flagged():
    lab = sample_labels(np.random.default_rng(0), 4)
    x = render(lab)
    x[:] = x[:, :, :1, :1]  # flat images: the background only
    r = A.read(x, lab.shape)
    assert r.empty.all() and (A.utility(r, "pickscore", 32) < 2).all()


def test_world_config_validation():
    assert world_config({"shapes": ["circle", "cross"], "unet_steps": 5}).shapes == ("circle", "cross")
    with pytest.raises(ConfigError, match="sd.world.shapes"):
        world_config({"shapes": ["hexagon"]})
    with pytest.raises(ConfigError, match="unknown key sd.world.colour "):
        world_config({"colour": ["red"]})
    with pytest.raises(ConfigError, match="sd.world.unet_batch"):
        world_config({"unet_batch": 63, "processes": 2})
    with pytest.raises(ConfigError, match="sd.world.vae_lr"):
        world_config({"vae_lr": "fast"})


def test_background_mix_shows_the_rewards_the_path_between_backgrounds():
    """The hardening bt_background_mix: backgrounds moved part of the way toward the other one, scored by the
    annotator from the pixels (A's pull toward dark is continuous along the path); share 0 draws nothing."""
    lab = sample_labels(np.random.default_rng(0), 400)
    lab.background[:] = 0
    rng = np.random.default_rng(1)
    before = rng.bit_generator.state
    assert mix_backgrounds(lab, rng, 0.0) is lab and rng.bit_generator.state == before
    mixed = sample_labels(np.random.default_rng(0), 400)
    mixed.background[:] = 0
    mix_backgrounds(mixed, np.random.default_rng(1), 1.0)
    r0, r1 = A.read(render(lab), lab.shape), A.read(render(mixed), mixed.shape)
    moved = r0.bg_luminance - r1.bg_luminance
    assert moved.min() > -0.05 and moved.max() > 0.4 and 0.1 < moved.mean() < 0.5
    gain = A.utility(r1, "pickscore", 32) - A.utility(r0, "pickscore", 32)
    bins = np.digitize(moved, [0.1, 0.2, 0.3, 0.4, 0.5])
    assert np.all(np.diff([gain[bins == b].mean() for b in range(6)]) > 0) and (gain > -0.05).mean() > 0.95
    assert (r1.position == r0.position).all() and (r1.size == r0.size).mean() > 0.98 and not r1.empty.any()
    pairs = make_pairs(WorldConfig(bt_background_mix=0.5), "pickscore", 200, seed=1)
    assert not np.array_equal(pairs.a, make_pairs(CFG, "pickscore", 200, seed=1).a)


def test_build_keys_keep_old_worlds_and_rebuild_only_what_a_setting_changes():
    old = key_of(CFG)
    assert all(key_of(CFG, s) == old for s in ("data", "vae", "unet", "pickscore", "check"))
    hardened = WorldConfig(bt_background_mix=0.3)  # a reward setting: only the rewards and the world's key change
    assert key_of(hardened) != old and key_of(hardened, "pickscore") != old and key_of(hardened, "hpsv2") != old
    assert all(key_of(hardened, s) == old for s in ("data", "clip", "cnn", "dino", "vae", "unet", "check"))
    assert key_of(WorldConfig(unet_steps=5), "unet") != old


def test_position_pull_favours_the_bottom_right_quadrant_and_rebuilds_only_pickscore(data):
    """sd.world.position_pull: annotator A's extra utility is `position_pull` at the bottom-right quadrant's centre,
    falling to 0 half a side away (the top-left quadrant gets none, the two beside it a little through the objects'
    jitter); only the PickScore stage (trained on A's pairs) and the world's key change."""
    r = A.read(data.images, data.labels.shape)
    gain = A.utility(r, "pickscore", 32, position_pull=1.0) - A.utility(r, "pickscore", 32)
    bottom_right = data.labels.position == 3
    assert gain[bottom_right].min() > 0.75 and gain.max() <= 1.0 and gain.min() >= 0
    assert np.allclose(gain[data.labels.position == 0], 0) and gain[~bottom_right].max() < 0.3
    assert np.array_equal(A.utility(r, "hpsv2", 32, position_pull=1.0), A.utility(r, "hpsv2", 32))
    pulled, old = WorldConfig(position_pull=1.0), key_of(CFG)
    assert key_of(pulled) != old and key_of(pulled, "pickscore") != key_of(CFG, "pickscore")
    assert all(key_of(pulled, s) == old for s in ("data", "clip", "cnn", "dino", "vae", "unet", "hpsv2", "check"))
    with pytest.raises(ConfigError, match="sd.world.position_pull"):
        world_config({"position_pull": -1})


HALVES = WorldConfig(layout="halves")


def test_halves_layout_puts_four_of_the_sixteen_modes_in_the_background():
    """sd.world.layout halves: 2 positions x 2 sizes x 4 backgrounds from light to dark, mode = 8 p + 4 z + b; the
    generator draws every mode, the mode reader reads them back, and stored (uint8) images read the same."""
    assert mode_name(15, "halves") == "right large dark" and mode_name(5, "halves") == "left large mid-light"
    p, z, b = mode_parts(np.arange(16), "halves")
    assert (8 * p + 4 * z + b == np.arange(16)).all() and set(b) == {0, 1, 2, 3} and set(p) == {0, 1}
    data = make_dataset(HALVES, 1500, seed=3)
    assert data.labels.layout == "halves" and data.labels.take(slice(0, 3)).layout == "halves"
    assert np.bincount(data.labels.mode, minlength=16).min() > 50
    r = A.read(data.images, data.labels.shape, "halves")
    assert (r.background == data.labels.background).mean() == 1.0
    assert (r.position == data.labels.position).mean() == 1.0
    assert (r.size == data.labels.size).mean() > 0.98 and not r.empty.any()
    u8 = (data.images * 255).round().astype(np.uint8)
    assert (A.read(u8, data.labels.shape, "halves").mode == r.mode).mean() > 0.99
    lum = [np.median(r.bg_luminance[data.labels.background == k]) for k in range(4)]
    assert np.all(np.diff(lum) < -0.15)  # evenly spaced from light to dark
    quad = A.read(data.images, data.labels.shape)  # read as quadrants, the same images give other labels
    assert (quad.mode != r.mode).mean() > 0.5


def test_halves_annotators_pull_toward_dark_and_left_with_style_near_every_mode():
    """Annotator A's utility rises with every step of the background toward dark (the pull the collapse follows);
    B prefers the left object (the layout's first position); a styled image of every mode beats that mode's
    average, so every mode keeps a high-reward region (A.5)."""
    data = make_dataset(HALVES, 3000, seed=4)
    lab, r = data.labels, A.read(data.images, data.labels.shape, "halves")
    ua, ub = A.utility(r, "pickscore", 32), A.utility(r, "hpsv2", 32)
    by_bg = [ua[lab.background == k].mean() for k in range(4)]
    assert np.all(np.diff(by_bg) > 0.1) and by_bg[3] - by_bg[0] > 0.4
    assert ub[lab.position == 0].mean() > ub[lab.position == 1].mean() + 0.4
    best = ua.copy()
    vivid = (lab.sat > 0.75) & (lab.val > 0.88)
    for m in range(16):
        assert best[(lab.mode == m) & vivid].mean() > ua[lab.mode == m].mean()
    with pytest.raises(ConfigError, match="sd.world.layout"):
        world_config({"layout": "thirds"})


def test_layout_rebuilds_every_stage_and_keeps_quadrant_worlds():
    """The layout changes the data, so every stage's key changes; the default (quadrants) leaves the key of a
    world built before the setting existed as it was."""
    assert key_of(WorldConfig(layout="quadrants")) == key_of(CFG)
    assert all(key_of(HALVES, s) != key_of(CFG, s) for s in ("data", "clip", "vae", "unet", "pickscore", "check"))
    lab = sample_labels(np.random.default_rng(0), 400, layout="halves")
    lab.background[:] = 0
    mix_backgrounds(lab, np.random.default_rng(1), 1.0)  # light moves toward the darkest of the four
    r = A.read(render(lab), lab.shape, "halves")
    assert r.bg_luminance.min() < 0.35 and (r.position == lab.position).all()
