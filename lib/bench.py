"""Benchmark: per-image time of AIG sampling relative to the plain diffusers pipeline, with UNet call counts.

    python -m lib.bench [--kind sd|sdxl] [--model tiny|<hub id or path>] [--steps 4] [--batch 2] [--repeats 3]

On the tiny pipeline (default, CPU) this measures the wrapper's overhead; on a GPU server with a real checkpoint
it measures what the sweep will cost. The expected shape: `tuned` and `step:c` cost one UNet call per step like
the plain pipeline (ratio ~1); `power:p` evaluates both branches at every step (ratio ~2). Ratios, never absolute
thresholds, are reported: this is not a timed test.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from peft import LoraConfig

from lib.domains.sd.pipelines import PAPER_SAMPLING, latents_for, load_pipeline
from lib.domains.sd.unet import aig_unet, using_unet


def _count_calls(unet: torch.nn.Module, counter: dict):
    """Register a forward hook that counts UNet evaluations in counter["calls"]; returns the hook handle."""
    return unet.register_forward_hook(lambda *_: counter.__setitem__("calls", counter["calls"] + 1))


def run(kind: str = "sd", model: str = "tiny", steps: int = 4, batch: int = 2, repeats: int = 5,
        device: str = "cpu", settings=("tuned", "power:2", "step:0.5")) -> list[dict]:
    """Time the plain pipeline and the AIG UNet at each gamma setting; rows of per-image seconds and calls."""
    dtype = torch.float32 if device == "cpu" else torch.float16
    pipe = load_pipeline(model, kind, dtype, device)
    f = pipe.vae_scale_factor
    size = int(pipe.unet.config.sample_size) * f if model.startswith("tiny") else PAPER_SAMPLING[kind]["resolution"]
    prompts = ["an astronaut riding a rainbow unicorn, cinematic, dramatic"] * batch
    lat = latents_for(pipe, list(range(batch)), size, size)
    kw = dict(prompt=prompts, latents=lat, num_inference_steps=steps, height=size, width=size,
              guidance_scale=PAPER_SAMPLING[kind]["guidance_scale"], output_type="latent")

    def once(unet) -> float:
        with using_unet(pipe, unet):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.no_grad():
                pipe(**kw)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return (time.perf_counter() - t) / batch

    plain = pipe.unet
    tuned = copy.deepcopy(plain)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tuned.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
                          adapter_name="draft")
    wrappers = {spec: aig_unet(pipe, spec, unet=tuned) for spec in settings}
    unets = {"plain pipeline": plain, "pipeline + LoRA": tuned, **{f"aig_unet {s}": w for s, w in wrappers.items()}}
    counter = {"calls": 0}
    hooks = [_count_calls(plain, counter), _count_calls(tuned, counter)]
    times: dict[str, list[float]] = {k: [] for k in unets}
    calls: dict[str, str] = {}
    with torch.no_grad():
        pipe(**{**kw, "num_inference_steps": 1})  # warm-up
    for r in range(repeats):  # interleaved rounds, best of `repeats`: robust to a busy machine
        for name, unet in unets.items():
            counter["calls"] = 0
            times[name].append(once(unet))
            if r == 0:
                calls[name] = str(counter["calls"])
    for h in hooks:
        h.remove()
    for s, w in wrappers.items():  # the wrapper's own per-branch counts
        calls[f"aig_unet {s}"] = " + ".join(f"{v // repeats} {k}" for k, v in sorted(w.calls.items()))
    best = {k: min(v) for k, v in times.items()}
    return [dict(setting=k, seconds=best[k], ratio=best[k] / best["plain pipeline"], calls=calls[k]) for k in unets]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="sd", choices=("sd", "sdxl"))
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (tiny nets are overhead-bound)")
    a = ap.parse_args(argv)
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    rows = run(a.kind, a.model, a.steps, a.batch, a.repeats, a.device)
    where = f"{a.device}, {a.threads} thread(s)" if a.device == "cpu" else a.device
    print(f"{a.kind} ({a.model}) on {where}: {a.steps} steps, batch {a.batch} (CFG doubles each UNet call's "
          f"batch), best of {a.repeats} interleaved rounds; UNet calls per pipeline call")
    print(f"{'setting':<24}{'s / image':>12}{'x plain':>10}  UNet calls")
    for r in rows:
        print(f"{r['setting']:<24}{r['seconds']:>12.4f}{r['ratio']:>10.2f}  {r['calls']}")


if __name__ == "__main__":
    main()
