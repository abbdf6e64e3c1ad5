"""The bodies of the world's build stages (lib.domains.world.build runs them in phases). Each takes
(config, paths, show) and returns (the files or folders it wrote, its measurements); it writes into a scratch folder
and moves the result into place, so a stage interrupted half-way leaves nothing that looks finished."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lib.domains.sd.features import WorldCNN
from lib.domains.sd.pipelines import latents_for, load_pipeline
from lib.domains.world import annotators as A
from lib.domains.world.config import COLOURS, SHAPES, WorldConfig, colour_of, shape_of
from lib.domains.world.layout import WorldPaths, place, scratch
from lib.domains.world.pairs import accuracy, make_pairs
from lib.domains.world.render import Dataset, make_dataset
from lib.domains.world.train_clip import (bradley_terry, contrastive, hf_encoders, new_clip, pickscore_fn,
                                          prompt_accuracy_clip, save_clip, scores, text_encoder_of, token_ids,
                                          world_tokenizer)
from lib.domains.world.train_features import classify, train_cnn, train_dino
from lib.domains.world.train_hps import hps_fn, open_clip_ids, save_hps, train_hps
from lib.domains.world.train_unet import caption_states, run_unet, save_pipeline
from lib.domains.world.train_vae import encode, roundtrip, train_vae
from lib.drawing import mosaic

CHECK_STEPS, CHECK_SCALE, CHECK_SEEDS = 20, 3.0, 16  # the build's own look at the base model
Outcome = tuple[list[Path], dict]  # what a stage wrote (files, folders) and what it measured


def _data_file(paths: WorldPaths):
    return paths.work / "data.npz"


def load_data(paths: WorldPaths) -> dict[str, np.ndarray]:
    """The rendered training set: images float32 (N, 3, H, W) in [0, 1], prompt, shape, colour, mode (N,)."""
    with np.load(_data_file(paths)) as z:
        out = {k: z[k] for k in z.files}
    out["images"] = out["images"].astype(np.float32) / 255.0
    return out


def heldout(cfg: WorldConfig, n: int = 1024) -> Dataset:
    """Fresh images of the world (a seed no training set uses)."""
    return make_dataset(cfg, n, seed=cfg.seed + 7777)


def stage_data(cfg: WorldConfig, paths: WorldPaths, show: bool) -> Outcome:
    """Render the training set once (uint8, as images are stored)."""
    ds = make_dataset(cfg)
    tmp = scratch(paths, "data") / "data.npz"
    np.savez(tmp, images=(ds.images * 255).round().astype(np.uint8), prompt=ds.prompt, shape=ds.labels.shape,
             colour=ds.labels.colour, mode=ds.labels.mode)
    place(tmp, _data_file(paths))
    tmp.parent.rmdir()
    return [_data_file(paths)], {"images": len(ds), "prompts": cfg.prompts}


def stage_clip(cfg: WorldConfig, paths: WorldPaths, show: bool) -> Outcome:
    """Contrastive CLIP (transformers) with the world's tokenizer."""
    d = load_data(paths)
    tok, clip = world_tokenizer(cfg), new_clip(cfg)
    ids = token_ids(tok, cfg.prompts)
    image, text, scale = hf_encoders(clip)
    losses = contrastive("CLIP", cfg, image, text, scale, clip.parameters(), d["images"], d["prompt"], ids,
                         cfg.clip_steps, show)
    clip.eval().requires_grad_(False)
    test = heldout(cfg)
    tmp = scratch(paths, "clip")
    save_clip(clip, tok, tmp)
    place(tmp, paths.clip)
    return [paths.clip], {"loss": float(np.mean(losses[-20:])),
                          "caption_accuracy": prompt_accuracy_clip(clip, test.images, test.prompt, ids)}


def stage_cnn(cfg: WorldConfig, paths: WorldPaths, show: bool) -> Outcome:
    """The Inception stand-in: a CNN classifying shape and colour."""
    d = load_data(paths)
    net, losses = train_cnn(cfg, d["images"], d["shape"], d["colour"], show)
    test = heldout(cfg)
    s, c = classify(net, test.images)
    tmp = scratch(paths, "cnn")
    net.save(tmp)
    place(tmp, paths.cnn)
    return [paths.cnn], {"loss": float(np.mean(losses[-20:])), "shape_accuracy": float((s == test.labels.shape).mean()),
                         "colour_accuracy": float((c == test.labels.colour).mean())}


def stage_dino(cfg: WorldConfig, paths: WorldPaths, show: bool) -> Outcome:
    """The DINO stand-in: a ViTModel trained self-supervised."""
    d = load_data(paths)
    vit, losses = train_dino(cfg, d["images"], show)
    tmp = scratch(paths, "dino")
    vit.save_pretrained(str(tmp), safe_serialization=True)
    place(tmp, paths.dino)
    return [paths.dino], {"loss": float(np.mean(losses[-20:]))}


def _vae(paths: WorldPaths):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(paths.work / "vae")).eval().requires_grad_(False)


def stage_vae(cfg: WorldConfig, paths: WorldPaths, show: bool) -> Outcome:
    """The VAE, and the posterior of every training image (what the UNet trains on)."""
    d = load_data(paths)
    vae, losses = train_vae(cfg, d["images"], show)
    tmp = scratch(paths, "vae")
    vae.save_pretrained(str(tmp / "vae"), safe_serialization=True)
    mean, std = encode(vae, d["images"])
    torch.save({"mean": mean, "std": std}, tmp / "latents.pt")
    test = heldout(cfg)
    rt = roundtrip(vae, test.images)
    r = A.read(rt, test.labels.shape, cfg.layout)
    place(tmp / "vae", paths.work / "vae")
    place(tmp / "latents.pt", paths.work / "latents.pt")
    tmp.rmdir()
    return [paths.work / "vae", paths.work / "latents.pt"], {
        "loss": float(np.mean(losses[-20:])), "heldout_mse": float(((rt - test.images) ** 2).mean()),
        "mode_read_after_roundtrip": float((r.mode == test.labels.mode).mean()),
        "scaling_factor": float(vae.config.scaling_factor)}


def stage_unet(cfg: WorldConfig, paths: WorldPaths, show: bool) -> Outcome:
    """The UNet on the VAE latents, conditioned on the contrastive CLIP's text tower; saves the pipeline."""
    from transformers import AutoTokenizer, CLIPModel

    d = load_data(paths)
    lat = torch.load(paths.work / "latents.pt", weights_only=True)
    tok = AutoTokenizer.from_pretrained(str(paths.clip))
    text = text_encoder_of(CLIPModel.from_pretrained(str(paths.clip)))
    embeds = caption_states(text, tok, cfg.prompts)
    tmp = scratch(paths, "unet")
    losses = run_unet(cfg, lat["mean"], lat["std"], d["prompt"], embeds, tmp / "unet", paths.work, show)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(tmp / "unet"))
    save_pipeline(unet, _vae(paths), text, tok, tmp / "pipeline")
    place(tmp / "pipeline", paths.pipeline)
    (paths.work / "unet_losses.json").write_text(json.dumps(losses))
    return [paths.pipeline], {"loss_first": float(np.mean(losses[:50])), "loss_last": float(np.mean(losses[-50:])),
                              "params": int(sum(p.numel() for p in unet.parameters()))}


def _reward_stage(cfg: WorldConfig, paths: WorldPaths, annotator: str, seed: int):
    vae = _vae(paths)
    train = make_pairs(cfg, annotator, cfg.bt_pairs, seed, vae)
    test = make_pairs(cfg, annotator, max(cfg.bt_pairs // 6, 64), seed + 1, vae)
    clean = make_pairs(cfg, annotator, max(cfg.bt_pairs // 6, 64), seed + 2, vae, corrupt_share=0.0)
    return train, test, clean


def stage_pickscore(cfg: WorldConfig, paths: WorldPaths, show: bool) -> Outcome:
    """PickScore: the contrastive CLIP fine-tuned on annotator A's pairs (Bradley-Terry on logit_scale * cos)."""
    from transformers import AutoTokenizer, CLIPModel

    train, test, clean = _reward_stage(cfg, paths, "pickscore", cfg.seed + 101)
    tok = AutoTokenizer.from_pretrained(str(paths.clip))
    clip = CLIPModel.from_pretrained(str(paths.clip)).train()
    ids = token_ids(tok, cfg.prompts)
    fn = pickscore_fn(clip)
    losses = bradley_terry("PickScore", cfg, fn, clip.parameters(), train, ids, lambda d: d, show)
    clip.eval().requires_grad_(False)
    acc = {name: accuracy(scores(fn, p.a, p.prompt, ids), scores(fn, p.b, p.prompt, ids), p)
           for name, p in (("heldout", test), ("heldout_clean", clean))}
    tmp = scratch(paths, "pickscore")
    save_clip(clip, tok, tmp)
    place(tmp, paths.pickscore)
    return [paths.pickscore], {"loss": float(np.mean(losses[-20:])), **acc}


def stage_hpsv2(cfg: WorldConfig, paths: WorldPaths, show: bool) -> Outcome:
    """HPSv2: an open_clip CLIP pre-trained contrastively, fine-tuned on annotator B's pairs."""
    d = load_data(paths)
    train, test, clean = _reward_stage(cfg, paths, "hpsv2", cfg.seed + 201)
    model, losses = train_hps(cfg, d["images"], d["prompt"], train, show)
    ids = open_clip_ids(cfg)
    fn = hps_fn(model)
    acc = {name: accuracy(scores(fn, p.a, p.prompt, ids), scores(fn, p.b, p.prompt, ids), p)
           for name, p in (("heldout", test), ("heldout_clean", clean))}
    tmp = scratch(paths, "hpsv2")
    save_hps(model, cfg, tmp)
    place(tmp, paths.hpsv2.parent)
    return [paths.hpsv2.parent], {"loss": float(np.mean(losses["bradley_terry"][-20:])), **acc}


def stage_check(cfg: WorldConfig, paths: WorldPaths, show: bool) -> Outcome:
    """The base model as the SD loaders see it: samples per prompt read by the mode reader and the CNN, a grid."""
    pipe = load_pipeline(str(paths.pipeline), "sd", torch.float32, "cpu")
    cnn = WorldCNN.load(paths.cnn)
    test = heldout(cfg)
    vae_rt = roundtrip(pipe.vae, test.images[:512])
    s_rt, c_rt = classify(cnn, vae_rt)
    rows, per_prompt = [], []
    for j, prompt in enumerate(cfg.prompts):
        seeds = [10_000 + j * CHECK_SEEDS + i for i in range(CHECK_SEEDS)]
        with torch.no_grad():
            img = pipe([prompt] * len(seeds), latents=latents_for(pipe, seeds, cfg.resolution, cfg.resolution),
                       num_inference_steps=CHECK_STEPS, guidance_scale=CHECK_SCALE, output_type="pt").images
        u8 = (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        s, c = classify(cnn, u8)
        r = A.read(u8, [shape_of(prompt)] * len(u8), cfg.layout)
        per_prompt.append({"prompt": prompt, "shape_ok": float((s == shape_of(prompt)).mean()),
                           "prompt_ok": float(((s == shape_of(prompt)) & (c == colour_of(prompt))).mean()),
                           "colour_ok": float((c == colour_of(prompt)).mean()),
                           "modes": int(len(np.unique(r.mode[~r.empty]))), "empty": float(r.empty.mean())})
        rows.append(mosaic(u8[:8], cols=8))
    from PIL import Image

    grid = np.concatenate([np.pad(r, ((0, 1), (0, 0), (0, 0)), constant_values=255) for r in rows])
    tmp = scratch(paths, "check")
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(tmp / "base_samples.png")
    place(tmp / "base_samples.png", paths.root / "base_samples.png")
    tmp.rmdir()
    return [paths.root / "base_samples.png"], {
        "steps": CHECK_STEPS, "guidance_scale": CHECK_SCALE, "seeds_per_prompt": CHECK_SEEDS,
        "prompt_accuracy": float(np.mean([p["prompt_ok"] for p in per_prompt])),
        "shape_accuracy": float(np.mean([p["shape_ok"] for p in per_prompt])),
        "colour_accuracy": float(np.mean([p["colour_ok"] for p in per_prompt])),
        "modes_per_prompt": float(np.mean([p["modes"] for p in per_prompt])),
        "cnn_on_vae_roundtrip": {"shape": float((s_rt == test.labels.shape[:512]).mean()),
                                 "colour": float((c_rt == test.labels.colour[:512]).mean())},
        "per_prompt": per_prompt, "shapes": list(SHAPES), "colours": list(COLOURS)}
