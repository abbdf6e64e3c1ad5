"""Feature extractors for the coverage metrics, batched, with a per-run cache.

- `inception`: torch-fidelity's InceptionV3 pool3 (2048-d; the AIG paper's FID / recall / SCD / LSCD features).
- `dino`: transformers `facebook/dino-vits16`, CLS token (DinoDiversity, ImageReFL).
- `clip`: CLIP image embeddings (transformers CLIPModel, projected).
- `world-cnn`: the miniature SD world's small CNN (lib.domains.world), trained there on shape and colour labels: a
  local folder with config.json + model.safetensors; its pooled features stand in for Inception pool3.
- `tiny`, `tiny-dino`: small random networks for offline tests; any nn.Module mapping images to (B, D) works.

Every extractor maps float images (B, 3, H, W) in [0, 1] to features (B, D). `extract` batches, accepts uint8
(N, H, W, 3) or (N, 3, H, W) arrays, and caches results as npz keyed by a hash of the extractor's
weights and the images.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from lib.domains.sd.hub import inception_state_dict, torch_fidelity_weights
from lib.domains.sd.rewards import hub_load, pooled, clip_preprocess
from lib.files import atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_MODEL = "facebook/dino-vits16"
CLIP_MODEL = "openai/clip-vit-large-patch14"
EXTRACTORS = ("inception", "dino", "clip", "world-cnn", "tiny", "tiny-dino")


def _resize(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, size, size) bicubic (antialias), normalised."""
    x = F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x.clamp(0, 1) - m) / s


class InceptionPool3(torch.nn.Module):
    """torch-fidelity's InceptionV3 ('inception-v3-compat') pool3 features (B, 2048) of [0, 1] images."""

    def __init__(self, weights_path: Optional[str] = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        state = inception_state_dict(weights_path)  # sha256-pinned, read weights-only (lib.domains.sd.hub)
        with torch_fidelity_weights(state):  # so torch-fidelity neither downloads unchecked nor unpickles
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        u8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)  # torch-fidelity expects uint8 (B, 3, H, W)
        return self.net(u8)[0].reshape(images.shape[0], -1)


class DinoCLS(torch.nn.Module):
    """CLS token of a transformers ViT (DINO) on 224x224 ImageNet-normalised images: (B, hidden)."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()
        self.size = int(model.config.image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _resize(images, self.size, IMAGENET_MEAN, IMAGENET_STD).to(next(self.model.parameters()).dtype)
        return self.model(pixel_values=x).last_hidden_state[:, 0]


class CLIPImageEmbedding(torch.nn.Module):
    """Projected CLIP image embedding (B, D) of a transformers CLIPModel."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = int(self.model.config.vision_config.image_size)
        x = clip_preprocess(images, size).to(next(self.model.parameters()).dtype)
        return pooled(self.model.get_image_features(pixel_values=x))


class TinyFeatures(torch.nn.Module):
    """A small random conv net (B, 3, H, W) -> (B, dim) for offline tests and smoke runs."""

    def __init__(self, seed: int = 0, dim: int = 16):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                           torch.nn.Conv2d(8, dim, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1),
                                           torch.nn.Flatten())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() * 2 - 1)


class WorldCNN(torch.nn.Module):
    """A small CNN over (B, 3, image_size, image_size) images in [0, 1]: pooled features (B, 2 * width) (forward),
    and logits of the shape and colour classes (`classify`). Saved as config.json + model.safetensors."""

    def __init__(self, width: int = 32, num_shapes: int = 4, num_colours: int = 4, image_size: int = 32):
        super().__init__()
        self.config = dict(width=width, num_shapes=num_shapes, num_colours=num_colours, image_size=image_size)
        w, nn = width, torch.nn

        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]

        self.body = nn.Sequential(*block(3, w, 1), *block(w, w, 2), *block(w, 2 * w, 2), *block(2 * w, 2 * w, 1),
                                  *block(2 * w, 2 * w, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.shape_head = nn.Linear(2 * w, num_shapes)
        self.colour_head = nn.Linear(2 * w, num_colours)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 2 * width)."""
        s = self.config["image_size"]
        x = images.float()
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return self.body(x * 2 - 1)

    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shape logits (B, num_shapes), colour logits (B, num_colours))."""
        f = self(images)
        return self.shape_head(f), self.colour_head(f)

    def save(self, folder: str | os.PathLike) -> None:
        """Write config.json and model.safetensors into folder."""
        import json

        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "WorldCNN":
        """The CNN stored in folder by `save` (strict)."""
        import json

        from safetensors.torch import load_file

        folder = Path(folder)
        m = cls(**json.loads((folder / "config.json").read_text()))
        m.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
        return m


def tiny_dino(seed: int = 0) -> DinoCLS:
    """DinoCLS over a tiny random ViTModel (offline)."""
    from transformers import ViTConfig, ViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DinoCLS(ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=32, image_size=224, patch_size=32),
                                add_pooling_layer=False))


def load_extractor(name: str, path: Optional[str] = None, device="cpu", cache_dir=None) -> torch.nn.Module:
    """A frozen feature extractor by name (see EXTRACTORS); `path` overrides the weights' location."""
    if name == "inception":
        m = InceptionPool3(path)
    elif name == "dino":
        from transformers import AutoModel

        m = DinoCLS(hub_load(AutoModel.from_pretrained, path or DINO_MODEL, "DINO model", "feature_paths['dino']",
                         cache_dir=cache_dir, add_pooling_layer=False))
    elif name == "clip":
        from transformers import CLIPModel

        m = CLIPImageEmbedding(hub_load(CLIPModel.from_pretrained, path or CLIP_MODEL, "CLIP model",
                                    "feature_paths['clip']", cache_dir=cache_dir))
    elif name == "world-cnn":
        if path is None:
            raise ValueError("the world-cnn extractor needs the folder of a world's CNN (feature_paths['world-cnn'])")
        m = WorldCNN.load(path)
    elif name == "tiny":
        m = TinyFeatures()
    elif name == "tiny-dino":
        m = tiny_dino()
    else:
        raise ValueError(f"unknown feature extractor {name!r}; allowed: {', '.join(EXTRACTORS)}")
    m.name = name
    return m.eval().requires_grad_(False).to(device)


def as_images(images) -> torch.Tensor:
    """uint8 (N, H, W, 3) arrays / tensors or float (N, 3, H, W) tensors in [0, 1] -> float (N, 3, H, W)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        return images.permute(0, 3, 1, 2).float() / 255.0 if images.shape[-1] == 3 else images.float() / 255.0
    return images.float()


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's class and weights: the extractor part of the cache key."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def extract(extractor: torch.nn.Module, images, batch_size: int = 32, device=None,
            cache_dir: Optional[str | os.PathLike] = None) -> np.ndarray:
    """Features (N, D) float32 of images, computed in batches; cached under cache_dir when given."""
    path = None
    if cache_dir is not None:
        arr = images.detach().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
        h = hashlib.sha256(fingerprint(extractor).encode())
        h.update(str((arr.dtype, arr.shape)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
        label = getattr(extractor, "name", type(extractor).__name__)
        path = Path(cache_dir) / f"features-{label}-{h.hexdigest()[:16]}.npz"
        if path.is_file():
            with np.load(path) as z:
                return z["features"]
    if device is None:
        p = next(extractor.parameters(), None)
        device = p.device if p is not None else "cpu"
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = as_images(images[i : i + batch_size]).to(device)
            out.append(extractor(batch).float().reshape(batch.shape[0], -1).cpu().numpy())
    feats = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    if path is not None:
        atomic_write(path, lambda fh: np.savez(fh, features=feats))
    return feats
