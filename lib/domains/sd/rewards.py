"""Differentiable rewards r(x0, c) by name: PickScore, HPSv2 / HPSv2.1, CLIP score, rotational anti-correlation.

Every reward is an nn.Module `(images, prompts) -> (B,)` with images (B, 3, H, W) in [0, 1]. Preprocessing is done
in torch (bicubic resize with antialias, centre crop, CLIP mean/std) so gradients reach the pixels (DRaFT needs
grad_x r(x, c)). The reward networks are frozen. Loaders take a local path (override) and fall back to the
Hugging Face hub; `tiny_*` builders make small random networks that run the very same scoring code offline.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from lib.domains.sd import hub
from lib.files import cache_root

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"hpsv2": "HPS_v2_compressed.pt", "hpsv2.1": "HPS_v2.1_compressed.pt"}
CLIP_SCORE_MODEL = "openai/clip-vit-large-patch14"  # torchmetrics' CLIPScore default

REWARDS = ("pickscore", "hpsv2", "hpsv2.1", "clip", "anticorrelation", "tiny-pickscore", "tiny-hpsv2", "tiny-clip")


# ----------------------------------------------------------------------------------------------- tokenizer files
def clip_tokenizer_dir(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """A directory with CLIP `vocab.json` + `merges.txt` written from open_clip's bundled BPE vocabulary.

    `CLIPTokenizer.from_pretrained(dir, model_max_length=77)` then gives open_clip's token ids (49408 tokens,
    bos 49406, eos/pad 49407); used by the offline tiny pipelines and tiny reward models.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    out = cache_root(cache_dir) / "clip_tokenizer"
    if (out / "vocab.json").is_file() and (out / "merges.txt").is_file():
        return out
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    units = list(bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("vocab.json", json.dumps({t: i for i, t in enumerate(vocab)})),
                       ("merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")):
        tmp = out / f".{name}.{os.getpid()}.part"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
    return out


def clip_tokenizer(cache_dir=None, **kwargs):
    """transformers CLIPTokenizer over open_clip's vocabulary (offline)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir(cache_dir)), model_max_length=77, **kwargs)


# ------------------------------------------------------------------------------------------------ preprocessing
def clip_preprocess(images: torch.Tensor, size: int = 224, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, size, size): shortest side to `size` (bicubic, antialias), centre crop,
    normalise. Differentiable; matches the PIL CLIP processor to about one uint8 level (tests)."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(images.float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)  # PIL clips to the uint8 range too
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def pooled(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features: its pooled (projected) embedding."""
    return out if torch.is_tensor(out) else out.pooler_output


def _freeze(m: torch.nn.Module) -> torch.nn.Module:
    m.eval()
    m.requires_grad_(False)
    return m


def _param(m: torch.nn.Module) -> torch.Tensor:
    return next(m.parameters())


# ---------------------------------------------------------------------------------------------------- rewards
class Reward(torch.nn.Module):
    """Base class: forward(images (B, 3, H, W) in [0, 1], prompts) -> (B,) rewards, differentiable in images."""

    name: str = "reward"

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class _HFClip(Reward):
    """A transformers CLIPModel scored on cos(image, text) with the model's own tokenizer."""

    def __init__(self, model, tokenizer, name: str):
        super().__init__()
        self.model, self.tokenizer, self.name = _freeze(model), tokenizer, name
        self.image_size = int(model.config.vision_config.image_size)

    def cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """cos(image embedding, text embedding): (B,)."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        p = _param(self.model)
        pix = clip_preprocess(images, self.image_size).to(p.dtype)  # (B, 3, 224, 224)
        length = min(int(getattr(self.tokenizer, "model_max_length", 77) or 77), 77)  # 77 for the real CLIPs
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").to(p.device)
        with torch.no_grad():
            txt = pooled(self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask))
        img = pooled(self.model.get_image_features(pixel_values=pix))  # (B, D)
        return F.cosine_similarity(img.float(), txt.float(), dim=-1)


class PickScore(_HFClip):
    """PickScore (Kirstain et al. 2023): logit_scale.exp() * cos(image, text)."""

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer, "pickscore")

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.model.logit_scale.exp().float() * self.cosine(images, prompts)


class CLIPScore(_HFClip):
    """CLIP score = 100 * cos(image, text) (lib.metrics.clip_score: ImageReFL's cosine, x 100, not clamped)."""

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer, "clip")

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return 100.0 * self.cosine(images, prompts)


class HPS(Reward):
    """HPSv2 / HPSv2.1 (Wu et al. 2023): cos(image, text) of a fine-tuned open_clip ViT-H-14."""

    def __init__(self, model, tokenizer, name: str = "hpsv2"):
        super().__init__()
        self.model, self.tokenizer, self.name = _freeze(model), tokenizer, name
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        p = _param(self.model)
        pix = clip_preprocess(images, self.image_size).to(p.dtype)
        with torch.no_grad():
            txt = self.model.encode_text(self.tokenizer(list(prompts)).to(p.device), normalize=True)
        img = self.model.encode_image(pix, normalize=True)
        return (img.float() * txt.float()).sum(-1)


class RotationalAntiCorrelation(Reward):
    """DRaFT appendix B.9: 1/3 sum_{k=1..3} ||x - Rot(x, 90k)||^2, weight-free; `mean` divides by C*H*W."""

    name = "anticorrelation"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction = {reduction!r} must be 'mean' or 'sum'")
        self.reduction = reduction

    def forward(self, images: torch.Tensor, prompts: Sequence[str] = ()) -> torch.Tensor:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"rotational anti-correlation needs square images, got {tuple(images.shape[-2:])}")
        x = images.float()
        d = sum(((x - torch.rot90(x, k, dims=(-2, -1))) ** 2).flatten(1) for k in (1, 2, 3)) / 3  # (B, CHW)
        return d.mean(1) if self.reduction == "mean" else d.sum(1)


# ------------------------------------------------------------------------------------------------------ loaders
def load_pickscore(path: Optional[str] = None, processor_path: Optional[str] = None, device="cpu",
                   dtype=torch.float32, cache_dir=None) -> PickScore:
    """PickScore_v1 (transformers CLIPModel) with the laion ViT-H-14 tokenizer; local paths override the hub. A local
    model directory that holds its own tokenizer files (a model trained here) is read with that tokenizer."""
    from transformers import AutoTokenizer, CLIPModel

    model = hub_load(CLIPModel.from_pretrained, path or PICKSCORE_MODEL, "PickScore model", "reward_path",
                 dtype=dtype, cache_dir=cache_dir)
    if processor_path is None and path is not None and has_tokenizer(path):
        processor_path = path
    tok = hub_load(AutoTokenizer.from_pretrained, processor_path or PICKSCORE_PROCESSOR, "PickScore tokenizer",
               "processor_path", cache_dir=cache_dir)
    return PickScore(model.to(device), tok)


def load_clip_score(name: str = "clip", path: Optional[str] = None, device="cpu", dtype=torch.float32,
                    cache_dir=None) -> CLIPScore:
    """CLIP score with openai/clip-vit-large-patch14 (or a local CLIPModel directory); "tiny-clip" offline."""
    from transformers import AutoTokenizer, CLIPModel

    if name.startswith("tiny"):
        return tiny_reward("tiny-clip", cache_dir=cache_dir).to(device)
    src = path or CLIP_SCORE_MODEL
    model = hub_load(CLIPModel.from_pretrained, src, "CLIP model", "path", dtype=dtype, cache_dir=cache_dir)
    tok = hub_load(AutoTokenizer.from_pretrained, src, "CLIP tokenizer", "path", cache_dir=cache_dir)
    return CLIPScore(model.to(device), tok)


def has_tokenizer(path: str | os.PathLike) -> bool:
    """Whether a local directory holds tokenizer files (tokenizer.json, or vocab.json + merges.txt)."""
    p = Path(path)
    return p.is_dir() and ((p / "tokenizer.json").is_file() or (p / "vocab.json").is_file())


def open_clip_arch(arch: str) -> str:
    """An open_clip architecture name; a path to a model-config JSON is registered with open_clip first (its name
    is the file's stem), so models trained here load like the named ones."""
    import open_clip

    if arch.endswith(".json"):
        if not Path(arch).is_file():
            raise FileNotFoundError(f"open_clip model config {arch} does not exist (sd.reward_arch)")
        open_clip.add_model_config(arch)
        return Path(arch).stem
    return arch


def load_hps(version: str = "hpsv2", path: Optional[str] = None, device="cpu", dtype=torch.float32,
             cache_dir=None, arch: str = "ViT-H-14") -> HPS:
    """HPSv2 / v2.1: open_clip ViT-H-14 (pretrained=None) + the xswu/HPSv2 checkpoint's state_dict (strict);
    `arch` names another open_clip architecture or the path of its model-config JSON."""
    import open_clip

    if version not in HPS_FILES:
        raise ValueError(f"HPS version {version!r} is not one of {tuple(HPS_FILES)}")
    if path is None:
        from huggingface_hub import hf_hub_download

        path = hub_load(lambda repo, **kw: hf_hub_download(repo, HPS_FILES[version], **kw), HPS_REPO,
                    f"HPS checkpoint {HPS_FILES[version]}", "reward_path", cache_dir=cache_dir)
    name = open_clip_arch(arch)
    model = open_clip.create_model(name, pretrained=None)
    load_hps_checkpoint(model, path)
    return HPS(model.to(device=device, dtype=dtype), open_clip.get_tokenizer(name), version)


def load_hps_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load an HPS checkpoint ({"state_dict": ...}, open_clip key names, optional 'module.' prefix) strictly."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model


def save_hps_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Write `model` in the HPS checkpoint format {"state_dict": ...} (tests, fine-tuned reward models)."""
    torch.save({"state_dict": model.state_dict()}, path)


def hub_load(fn, src: str, what: str, override: str, **kwargs):
    """Call a from_pretrained-style loader at the revision the params pin (sd.revisions), recording the commit it
    resolved to in the run's manifest (lib.domains.sd.hub.load); offline failures name the source, the override
    and the revision key."""
    return hub.load(fn, src, what, override, **kwargs)


# --------------------------------------------------------------------------------------- tiny offline networks
def tiny_clip_model(seed: int = 0, image_size: int = 224, patch_size: int = 32):
    """A tiny random transformers CLIPModel with CLIP's 49408-token vocabulary (offline tests)."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                  image_size=image_size, patch_size=patch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))


def tiny_open_clip(seed: int = 0):
    """A tiny random open_clip.CLIP (the shape of diffusers' and open_clip's test models): embed 16, ViT 32px / patch 8, text width 32."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.CLIP(
            embed_dim=16,
            vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2),
        )


def tiny_reward(name: str, seed: int = 0, path: Optional[str] = None, cache_dir=None) -> Reward:
    """tiny-pickscore / tiny-clip (transformers) or tiny-hpsv2 (open_clip, optionally from an HPS checkpoint)."""
    if name in ("tiny-pickscore", "tiny-clip"):
        cls = PickScore if name == "tiny-pickscore" else CLIPScore
        return cls(tiny_clip_model(seed), clip_tokenizer(cache_dir))
    if name == "tiny-hpsv2":
        import open_clip

        model = tiny_open_clip(seed)
        if path is not None:
            load_hps_checkpoint(model, path)
        return HPS(model, open_clip.get_tokenizer("ViT-B-32"), "tiny-hpsv2")  # open_clip's default BPE tokenizer
    raise ValueError(f"unknown tiny reward {name!r}")


def load_reward(name: str, path: Optional[str] = None, device="cpu", dtype=torch.float32,
                cache_dir=None, arch: str = "ViT-H-14") -> Reward:
    """A reward by name (see REWARDS); `path` is the local override of the reward network's weights, `arch` the
    open_clip architecture of an HPS checkpoint (a name, or the path of a model-config JSON)."""
    if name == "pickscore":
        return load_pickscore(path, device=device, dtype=dtype, cache_dir=cache_dir)
    if name in HPS_FILES:
        return load_hps(name, path, device=device, dtype=dtype, cache_dir=cache_dir, arch=arch)
    if name == "clip":
        return load_clip_score("clip", path, device=device, dtype=dtype, cache_dir=cache_dir)
    if name == "anticorrelation":
        return RotationalAntiCorrelation()
    if name.startswith("tiny-"):
        return tiny_reward(name, path=path, cache_dir=cache_dir).to(device)
    raise ValueError(f"unknown reward {name!r}; allowed: {', '.join(REWARDS)}")
