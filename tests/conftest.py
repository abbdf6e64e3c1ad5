"""Shared fixtures: a small pre-trained toy domain and a DRaFT model fine-tuned on it (built once per session).

Tests run torch on one thread (also in the notebook kernels they start): the toy MLP and the tiny pipelines are
far too small to gain from two, and on a busy 2-core machine two threads per process thrash.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lib.train import TrainConfig
from lib.domains.toy import ToyConfig, ToyDomain
from lib.train import train

torch.set_num_threads(1)

TOY = ToyConfig(pretrain_steps=1000, num_steps=10)
DRAFT = TrainConfig(steps=300, batch_size=64, lr=2e-3, grad_clip=1.0, checkpoint_every=100)


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> ToyDomain:
    d = ToyDomain(TOY)
    d.pretrain(tmp_path_factory.mktemp("toy") / "base.safetensors", progress=False)
    return d


@pytest.fixture(scope="session")
def draft_run(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("draft")
    model, log = train(toy, DRAFT, out, progress=False)
    return model, log, Path(out)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> str:
    """A cache folder for tokenizer files and features written by the SD tests."""
    return str(tmp_path_factory.mktemp("cache"))
