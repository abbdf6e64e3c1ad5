"""Tests of lib.domains.sd.features: batching, uint8 / float inputs, the npz cache, and the extractor wrappers offline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.domains.sd import features as Fe


class Counting(torch.nn.Module):
    """Mean colour + a random projection; counts its calls."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 5)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.proj(x.mean((2, 3)))


def images(n=7, size=16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_extract_batches_and_accepts_uint8_or_float():
    m = Counting()
    u8 = images()
    a = Fe.extract(m, u8, batch_size=3)
    assert a.shape == (7, 5) and a.dtype == np.float32 and m.calls == 3
    b = Fe.extract(m, u8, batch_size=100)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    f = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_allclose(Fe.extract(m, f, batch_size=4), a, rtol=1e-6, atol=1e-6)


def test_extract_cache_is_keyed_by_weights_and_images(tmp_path):
    m = Counting()
    u8 = images()
    a = Fe.extract(m, u8, cache_dir=tmp_path)
    calls = m.calls
    b = Fe.extract(m, u8, cache_dir=tmp_path)
    assert m.calls == calls and np.array_equal(a, b)  # served from the npz cache
    assert len(list(tmp_path.glob("features-*.npz"))) == 1
    Fe.extract(m, images(seed=1), cache_dir=tmp_path)  # other images: a new entry
    with torch.no_grad():
        m.proj.weight.add_(1.0)
    c = Fe.extract(m, u8, cache_dir=tmp_path)  # other weights: recomputed
    assert m.calls > calls + 1 and not np.allclose(a, c)
    assert len(list(tmp_path.glob("features-*.npz"))) == 3 and not list(tmp_path.glob("*.part"))


def test_tiny_extractors():
    x = torch.rand(3, 3, 64, 64)
    for name, dim in (("tiny", 16), ("tiny-dino", 16)):
        m = Fe.load_extractor(name)
        assert m.name == name and not any(p.requires_grad for p in m.parameters())
        f = Fe.extract(m, x)
        assert f.shape == (3, dim) and np.isfinite(f).all()
    with pytest.raises(ValueError, match="inception"):
        Fe.load_extractor("vgg")


def test_clip_image_embedding_matches_get_image_features():
    from lib.domains.sd.rewards import clip_preprocess, tiny_clip_model

    model = tiny_clip_model(seed=0)
    m = Fe.CLIPImageEmbedding(model)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=clip_preprocess(x, 224)).pooler_output
    np.testing.assert_allclose(Fe.extract(m, x), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_inception_pool3_wrapper_with_local_weights(tmp_path, monkeypatch):
    """torch-fidelity's extractor from a local weights file (random here; the real file is downloaded once)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf

    monkeypatch.setattr(tf, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(tf.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random_net = tf.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    monkeypatch.undo()
    path = tmp_path / "inception.pth"
    torch.save(random_net.state_dict(), path)
    m = Fe.load_extractor("inception", path=str(path))
    x = torch.rand(2, 3, 64, 64)
    f = Fe.extract(m, x)
    assert f.shape == (2, 2048) and np.isfinite(f).all()
    u8 = (x * 255).round().to(torch.uint8)
    with torch.no_grad():
        ref = random_net(u8)[0]
    np.testing.assert_allclose(f, ref.numpy(), rtol=1e-5, atol=1e-5)

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tf, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"feature_paths\['inception'\]"):
        Fe.load_extractor("inception")


def test_dino_loader_from_a_local_directory(tmp_path):
    tiny = Fe.tiny_dino(seed=2)
    tiny.model.save_pretrained(tmp_path / "dino")
    m = Fe.load_extractor("dino", path=str(tmp_path / "dino"))
    x = torch.rand(2, 3, 64, 64)
    np.testing.assert_allclose(Fe.extract(m, x), Fe.extract(tiny.eval(), x), rtol=1e-5, atol=1e-6)
