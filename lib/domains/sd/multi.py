"""Weighted multi-reward specs (DRaFT, Clark et al. 2024, Sec. 5.2): one model fine-tuned on r = sum_k w_k r_k.

A spec is a bare reward name ("pickscore": weight 1, exactly the single reward as before) or comma-separated
`name:weight` terms ("pickscore:10,hpsv2:2", DRaFT 5.2's weighting of PickScore and HPSv2). Names are those of
`lib.domains.sd.rewards.REWARDS` and the weight-free JPEG rewards of `lib.domains.sd.compress`; weights are finite
and > 0; a name appears at most once. `load_spec` turns a spec into one `Reward`: the single reward itself for a
bare name, otherwise a `WeightedReward` over the loaded parts.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from lib.domains.sd.compress import JPEG_REWARDS, load_jpeg_reward
from lib.domains.sd.rewards import REWARDS, Reward, load_reward
from lib.errors import check

ALL_REWARDS = REWARDS + JPEG_REWARDS
KEY = "sd.reward"

Spec = tuple[tuple[str, float], ...]


def parse_reward_spec(value: object, key: str = KEY, allowed: Sequence[str] = ALL_REWARDS) -> Spec:
    """'pickscore:10,hpsv2:2' -> (('pickscore', 10.0), ('hpsv2', 2.0)); a bare name -> ((name, 1.0),).

    Raises ConfigError (one line: key, value, rule) on an unknown name, a weight that is not a finite number > 0,
    a repeated name, or an empty term."""
    names = ", ".join(allowed)
    check(key, value, isinstance(value, str) and value.strip() != "",
          f"a reward name ({names}) or weighted terms 'name:weight,...'")
    terms: list[tuple[str, float]] = []
    for term in value.split(","):
        name, sep, weight = (part.strip() for part in term.partition(":"))
        check(key, value, name != "", f"comma-separated terms 'name:weight' with no empty term (got {term!r})")
        check(key, value, name in allowed, f"reward names from {names} ({name!r} is not one)")
        w = 1.0
        if sep:
            try:
                w = float(weight)
            except ValueError:
                w = math.nan
            check(key, value, math.isfinite(w) and w > 0,
                  f"a finite weight > 0 after 'name:' ({name!r} has weight {weight!r})")
        check(key, value, name not in dict(terms), f"each reward at most once ({name!r} appears twice)")
        terms.append((name, w))
    return tuple(terms)


def is_single(spec: Spec) -> bool:
    """Whether a parsed spec is one reward at weight 1 (the plain single-reward case)."""
    return len(spec) == 1 and spec[0][1] == 1.0


def spec_string(spec: Spec) -> str:
    """The canonical spec string: 'pickscore' for a single reward at weight 1, else 'name:w,name:w' (weights %.12g)."""
    return spec[0][0] if is_single(spec) else ",".join(f"{n}:{w:.12g}" for n, w in spec)


class WeightedReward(Reward):
    """r(x, c) = sum_k w_k r_k(x, c) (DRaFT Sec. 5.2), differentiable in the images like each part; parts are
    (spec name, reward, weight) triples, the spec names key `terms`."""

    def __init__(self, parts: Sequence[tuple[str, Reward, float]], name: Optional[str] = None):
        super().__init__()
        if not parts:
            raise ValueError("WeightedReward needs at least one (name, reward, weight) part")
        self.names = tuple(n for n, _, _ in parts)
        self.parts = torch.nn.ModuleList([r for _, r, _ in parts])
        self.weights = tuple(float(w) for _, _, w in parts)
        self.name = name or spec_string(tuple(zip(self.names, self.weights)))

    def terms(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each part's unweighted reward by spec name: images (B, 3, H, W) in [0, 1] -> {name: (B,)}."""
        return {n: r(images, prompts).float() for n, r in zip(self.names, self.parts)}

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], prompts -> (B,) weighted sum sum_k w_k r_k."""
        total = None
        for r, w in zip(self.parts, self.weights):
            term = w * r(images, prompts).float()  # (B,)
            total = term if total is None else total + term
        return total


def load_one(name: str, **kwargs) -> Reward:
    """One reward by name: a JPEG reward of lib.domains.sd.compress (weight-free: kwargs unused), else
    `rewards.load_reward(name, **kwargs)`."""
    if name in JPEG_REWARDS:
        return load_jpeg_reward(name)
    return load_reward(name, **kwargs)


def load_spec(value: str, loader: Callable[[str], Reward] = load_one, key: str = KEY) -> Reward:
    """The reward of a spec: `loader(name)` itself for one reward at weight 1 (the unchanged single reward), else a
    WeightedReward over `loader(name_k)` with weights w_k (`loader` resolves per-name paths, device, cache)."""
    spec = parse_reward_spec(value, key)
    if is_single(spec):  # 'pickscore' and 'pickscore:1' are the plain single reward
        return loader(spec[0][0])
    return WeightedReward([(n, loader(n), w) for n, w in spec], name=spec_string(spec))
