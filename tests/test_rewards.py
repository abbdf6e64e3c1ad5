"""Offline tests of lib.domains.sd.rewards: the real scoring code paths on tiny random CLIP networks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lib.domains.sd import rewards as R

PROMPTS = ["a photo of a cat", "an oil painting of a lighthouse at dusk"]


def smooth_image(size: int = 512, seed: int = 0) -> torch.Tensor:
    """A natural-looking test image (1, 3, size, size) in [0, 1]: smooth colour fields plus a sharp rectangle."""
    g = torch.Generator().manual_seed(seed)
    img = F.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=(size, size), mode="bilinear",
                        align_corners=False)
    img[..., size // 5 : size * 2 // 5, size // 4 : size * 3 // 4] = torch.tensor([0.9, 0.1, 0.2]).view(1, 3, 1, 1)
    return img


def test_tokenizer_files_give_open_clip_ids(cache):
    import open_clip

    tok = R.clip_tokenizer(cache)
    ours = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ref = open_clip.get_tokenizer("ViT-H-14")(PROMPTS)
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    mask = ref != 0  # open_clip pads with 0, CLIP's HF tokenizer with eos
    assert torch.equal(ours[mask], ref[mask])


def test_differentiable_preprocessing_matches_the_pil_clip_processor():
    """Tolerance: 0.02 max / 0.005 mean in normalised units. One uint8 level is 1 / 255 / 0.26 ~ 0.015: PIL
    resizes the 8-bit image and rounds, we resize in float."""
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    img = smooth_image(512)
    u8 = (img * 255).round().to(torch.uint8)
    ref = CLIPImageProcessorPil()(images=Image.fromarray(u8[0].permute(1, 2, 0).numpy()),
                                  return_tensors="pt").pixel_values
    ours = R.clip_preprocess(u8.float() / 255, 224)
    assert ours.shape == ref.shape == (1, 3, 224, 224)
    diff = (ours - ref).abs()
    assert diff.max().item() < 0.02 and diff.mean().item() < 0.005
    # non-square input: shortest side to 224 and a centre crop, like the processor
    wide = F.interpolate(img, size=(256, 384), mode="bilinear", align_corners=False)
    u8w = (wide * 255).round().to(torch.uint8)
    refw = CLIPImageProcessorPil()(images=Image.fromarray(u8w[0].permute(1, 2, 0).numpy()),
                                   return_tensors="pt").pixel_values
    assert (R.clip_preprocess(u8w.float() / 255) - refw).abs().mean().item() < 0.005


def test_pickscore_is_logit_scale_times_cosine_and_reaches_pixels(cache):
    r = R.tiny_reward("tiny-pickscore", cache_dir=cache)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    s = r(x, PROMPTS)
    # reference: the CLIPModel's own forward on the same inputs (logits_per_image = logit_scale * cos)
    tok = r.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = r.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask,
                      pixel_values=R.clip_preprocess(x.detach(), 224))
    torch.testing.assert_close(s.detach(), out.logits_per_image.diagonal(), atol=1e-5, rtol=1e-5)
    s.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in r.parameters())  # the reward network stays frozen


def test_clip_score_is_100_times_cosine(cache):
    pick = R.tiny_reward("tiny-pickscore", seed=3, cache_dir=cache)
    clip = R.CLIPScore(pick.model, pick.tokenizer)
    x = torch.rand(2, 3, 32, 32)
    cos = pick(x, PROMPTS) / pick.model.logit_scale.exp()
    torch.testing.assert_close(clip(x, PROMPTS), 100 * cos)  # not clamped (lib.metrics.clip_score)


def test_hps_scores_cosine_and_reaches_pixels():
    r = R.tiny_reward("tiny-hpsv2")
    x = torch.rand(2, 3, 48, 48, requires_grad=True)
    s = r(x, PROMPTS)
    with torch.no_grad():
        img = r.model.encode_image(R.clip_preprocess(x.detach(), 32), normalize=True)
        txt = r.model.encode_text(r.tokenizer(PROMPTS), normalize=True)
    torch.testing.assert_close(s.detach(), (img * txt).sum(-1))
    assert s.abs().max() <= 1 + 1e-5
    s.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_hps_checkpoint_round_trip_with_strict_load(tmp_path):
    src = R.tiny_open_clip(seed=1)
    ckpt = tmp_path / "HPS_v2_compressed.pt"
    R.save_hps_checkpoint(src, ckpt)
    assert set(torch.load(ckpt, weights_only=True)) == {"state_dict"}
    loaded = R.tiny_reward("tiny-hpsv2", seed=0, path=str(ckpt))  # different init, then the checkpoint
    fresh = R.tiny_reward("tiny-hpsv2", seed=0)
    x = torch.rand(2, 3, 32, 32)
    ref = R.HPS(src, loaded.tokenizer)(x, PROMPTS)
    torch.testing.assert_close(loaded(x, PROMPTS), ref)
    assert not torch.allclose(fresh(x, PROMPTS), ref)
    # a 'module.' prefix (DDP checkpoints) is accepted; a missing key is not
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ddp.pt")
    R.load_hps_checkpoint(R.tiny_open_clip(2), tmp_path / "ddp.pt")
    state = src.state_dict()
    state.pop("logit_scale")
    torch.save({"state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="logit_scale"):
        R.load_hps_checkpoint(R.tiny_open_clip(2), tmp_path / "bad.pt")


def test_rotational_anticorrelation_reward():
    r = R.load_reward("anticorrelation")
    const = torch.full((1, 3, 8, 8), 0.3)
    assert r(const).item() == 0.0  # an image equal to its rotations scores 0
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    s = r(x, PROMPTS)
    torch.testing.assert_close(r(torch.rot90(x, 1, dims=(-2, -1))), s)  # rotating the input changes nothing
    manual = sum(((x - torch.rot90(x, k, dims=(-2, -1))) ** 2).flatten(1).sum(1) for k in (1, 2, 3)) / 3
    torch.testing.assert_close(R.RotationalAntiCorrelation("sum")(x), manual)
    torch.testing.assert_close(s * 3 * 8 * 8, manual)
    s.sum().backward()
    y = (x + 0.1 * x.grad).detach()  # one ascent step raises the reward
    assert (r(y) > s.detach()).all()
    with pytest.raises(ValueError, match="square"):
        r(torch.rand(1, 3, 8, 6))


def test_load_reward_names_and_errors(tmp_path):
    for name in ("tiny-pickscore", "tiny-hpsv2", "tiny-clip", "anticorrelation"):
        assert isinstance(R.load_reward(name, cache_dir=str(tmp_path)), R.Reward)
    with pytest.raises(ValueError, match="pickscore"):
        R.load_reward("imagereward")
    with pytest.raises(ValueError, match="hpsv2.1"):
        R.load_hps("hpsv3")
    with pytest.raises(ValueError, match="images but"):
        R.tiny_reward("tiny-pickscore", cache_dir=str(tmp_path))(torch.rand(1, 3, 32, 32), PROMPTS)


def test_missing_weights_error_names_the_override(tmp_path):
    with pytest.raises(OSError, match="reward_path"):
        R.load_pickscore(path=str(tmp_path / "missing"))


def test_local_pickscore_and_clip_directories_load_through_the_real_loaders(cache, tmp_path):
    tiny = R.tiny_reward("tiny-pickscore", seed=4, cache_dir=cache)
    tiny.model.save_pretrained(tmp_path / "pick")
    tiny.tokenizer.save_pretrained(tmp_path / "pick")
    pick = R.load_pickscore(str(tmp_path / "pick"), processor_path=str(tmp_path / "pick"))
    clip = R.load_clip_score("clip", str(tmp_path / "pick"))
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(pick(x, PROMPTS), tiny(x, PROMPTS))
    torch.testing.assert_close(clip(x, PROMPTS), 100 * tiny(x, PROMPTS) / tiny.model.logit_scale.exp())
