"""Benchmark: what AIG costs per image, relative to the plain model and to the ideal call count.

    python -m lib.bench [--models tiny,world,toy] [--steps 10] [--batch 2] [--world-batch 2,64] [--repeats 5]
    python -m lib.bench --models CompVis/stable-diffusion-v1-4 --steps 25 --batch 1,8      # on a GPU server

Rows, for each model and batch size: the plain model (no LoRA layers), the model with its LoRA adapter as peft runs
it, then `tuned` and `step:0.5` (no step needs both branches) unmerged and merged, and `power:1/2/5` and a spline
(every step after the first needs both) as two calls and as one call on the stacked batch
(`lib.guidance.paired_branches`). `x plain` is the time per image over the plain model's; `ideal` is the call count
of an evaluation that runs each needed branch once at the plain cost, 1 + (steps with 0 < gamma < 1) / N, and
`x ideal` the time over that (one call can go below 1: it is one call where the ideal counts two). `*` marks the
variant the workbook runs by default at that batch (`lib.guidance.pairing_pays`, `lib.domains.sd.unet.AIGUNet`).

SD models run the stock diffusers pipeline with `aig_unet` as its UNet (batch = images per pipeline call, doubled by
classifier-free guidance); the toy runs the workbook's sampler (`lib.methods.method_denoiser`). `--repeats` rounds
run every variant once, interleaved (every other round in reverse order); `ms / image` is the best round, the ratios
are medians over rounds of each round's ratio to its plain run, so load that changes between rounds cancels. On CPU
the timer is this process's CPU time (one thread; other processes still slow it through shared caches), on an
accelerator wall time. Ratios are printed, never compared with thresholds: this is not a timed test. On a GPU server
with a real checkpoint the same command measures what a sweep will cost.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from peft import LoraConfig

from lib.config import load
from lib.domains.sd.pipelines import PAPER_SAMPLING, latents_for, load_pipeline, tiny_pipeline
from lib.domains.sd.unet import aig_unet, using_unet
from lib.domains.toy import ToyConfig, ToyDomain
from lib.guidance import pairing_pays
from lib.methods import Method, method_denoiser
from lib.samplers import sample
from lib.schedules import StepClock, parse

SETTINGS = ("tuned", "step:0.5", "power:1", "power:2", "power:5", "spline:0=0,0.3=0.1,0.7=0.9,1=1")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]  # the SD domain's
ROOT = Path(__file__).resolve().parent.parent
WORLD = ROOT / "results" / "shapes" / "models" / "world" / "pipeline"  # params/shapes.yaml's built world


def mixed_steps(spec: str, steps: int) -> int:
    """Steps i of an N-step chain (s_i = 1 - i / N) at which both branches count: 0 < gamma(s_i) < 1."""
    g = parse(spec)(StepClock(range(steps, 0, -1))(torch.arange(steps, 0, -1)))
    return int(((g > 0) & (g < 1)).sum())


def clock_for(device: str) -> tuple[str, Callable[[], float]]:
    """The timer of a device: this process's CPU time on CPU (what a run costs, robust to other processes sharing
    the cores; it equals wall time for a one-thread run on an idle machine), wall time on an accelerator."""
    return ("CPU time", time.process_time) if device == "cpu" else ("wall time", time.perf_counter)


def _perturb(model: torch.nn.Module, std: float) -> None:
    """Stand-in for a trained adapter: seeded random LoRA B matrices (a fresh adapter equals the base)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g).to(p) * std)


def _variants(settings: Sequence[str], steps: int, pair: bool) -> list[tuple[str, str, dict, bool]]:
    """(setting, variant label, keyword arguments, is the default) of every row after the plain ones; `pair`: whether
    one call is the default at this batch."""
    out = []
    for spec in settings:
        if mixed_steps(spec, steps):
            out += [(spec, "two calls", dict(paired=False), not pair), (spec, "one call", dict(paired=True), pair)]
        else:
            out += [(spec, "unmerged", dict(merged=False), False), (spec, "merged", dict(merged=True), True)]
    return out


def _measure(runs: dict, repeats: int, clock: Callable[[], float]) -> tuple[dict, dict]:
    """Seconds of each run in each of `repeats` rounds (rounds interleaved, every other one in reverse order, so a
    change of the machine's load reaches every run alike); the call counts the first round reported."""
    times: dict = {k: [] for k in runs}
    calls: dict = {}
    for r in range(repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t = clock()
            c = runs[name]()
            times[name].append(clock() - t)
            calls.setdefault(name, c)
    return times, calls


def _count(calls: dict) -> str:
    return " + ".join(f"{v} {k}" for k, v in sorted(calls.items())) or "-"


def load_for_bench(model: str, kind: str, device: str) -> Any:
    """The pipeline of `model` ('tiny', a pipeline folder or a hub id) on `device`: float32 on CPU, else float16."""
    dtype = torch.float32 if device == "cpu" else torch.float16
    pipe = tiny_pipeline(kind, 0) if model == "tiny" else load_pipeline(model, kind, dtype, device)
    return pipe.to(device)


def pipeline_rows(model: str, steps: int, batch: int, repeats: int, device: str,
                  settings: Sequence[str] = SETTINGS, kind: str = "sd", guidance: Optional[float] = None,
                  pipe: Any = None) -> tuple[str, list[dict]]:
    """Rows for a diffusers pipeline: 'tiny', a local pipeline folder (the miniature world) or a hub id; `pipe`
    reuses one already loaded (its UNet must carry no adapter)."""
    pipe = load_for_bench(model, kind, device) if pipe is None else pipe
    local = model == "tiny" or Path(model).is_dir()
    size = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor if local else PAPER_SAMPLING[kind]["resolution"]
    guidance = PAPER_SAMPLING[kind]["guidance_scale"] if guidance is None else guidance
    prompts = ["an astronaut riding a rainbow unicorn, cinematic, dramatic"] * batch
    lat = latents_for(pipe, list(range(batch)), size, size)
    kw = dict(prompt=prompts, latents=lat, num_inference_steps=steps, height=size, width=size,
              guidance_scale=guidance, output_type="latent")
    plain = pipe.unet
    tuned = copy.deepcopy(plain)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tuned.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS), adapter_name="draft")
    _perturb(tuned, 0.05)
    counter = {"calls": 0}
    hooks = [u.register_forward_hook(lambda *_: counter.__setitem__("calls", counter["calls"] + 1))
             for u in (plain, tuned)]

    def once(unet) -> Callable[[], str]:
        def run() -> str:
            counter["calls"] = 0
            if hasattr(unet, "calls"):
                unet.calls.clear()
            with using_unet(pipe, unet), torch.no_grad():
                pipe(**kw)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return _count(unet.calls) if hasattr(unet, "calls") else str(counter["calls"])
        return run

    n = sum(p.numel() for p in plain.parameters())
    rows = (2 if guidance > 1 else 1) * batch  # the pipeline doubles the batch for classifier-free guidance
    pair = pairing_pays(sum(p.numel() for p in tuned.parameters()), rows * lat[0].numel(), device)  # AIGUNet's
    runs = {("plain", ""): once(plain), ("+ LoRA", "peft"): once(tuned)}
    for spec, label, kwargs, _ in _variants(settings, steps, pair):
        runs[(spec, label)] = once(aig_unet(pipe, spec, unet=tuned, **kwargs))
    with torch.no_grad():
        pipe(**{**kw, "num_inference_steps": 1})  # warm-up
    timer, clock = clock_for(device)
    times, calls = _measure(runs, repeats, clock)
    for h in hooks:
        h.remove()
    shown = str(Path(model).resolve().relative_to(ROOT)) if local and Path(model).resolve().is_relative_to(ROOT) \
        else model
    head = (f"{shown} ({kind}) on {device}: {steps} steps, batch {batch} ({rows} rows per UNet call with CFG "
            f"{guidance:g}), {size}px; UNet {n / 1e6:.2f} M parameters; {repeats} interleaved rounds, {timer}")
    return head, _rows(times, calls, batch, steps, settings, pair)


def toy_rows(steps: int, batch: int, repeats: int, settings: Sequence[str] = SETTINGS,
             chains: int = 4) -> tuple[str, list[dict]]:
    """Rows for the toy domain through the workbook's sampler (random base weights: the cost does not depend on them);
    each timed run is one method context sampling `chains` batches, as a sweep point samples many."""
    dom = ToyDomain(ToyConfig(num_steps=steps))
    base = dom.new_model().requires_grad_(False).eval()
    tuned = dom.add_adapter(copy.deepcopy(base), rank=4, seed=0).requires_grad_(False).eval()
    _perturb(tuned, 0.3)
    names = dom.prompts("coverage")
    cond = dom.encode([names[i % len(names)] for i in range(batch)])
    x_T = dom.noise(range(batch))

    def run_plain() -> str:
        with torch.no_grad():
            for _ in range(chains):
                sample(dom.denoiser(base), dom.scheduler, x_T, cond, steps)
        return str(steps)

    def run(m: Method, **kwargs) -> Callable[[], str]:
        def go() -> str:
            with method_denoiser(dom, m, tuned, **kwargs) as den, torch.no_grad():
                for _ in range(chains):
                    sample(den, dom.scheduler, x_T, cond, steps)
            calls = getattr(den, "calls", None)  # AIG counts its calls; a tuned-only denoiser makes one per step
            return str(steps) if calls is None else _count({k: v // chains for k, v in calls.items()})
        return go

    rows = (2 if dom.guidance_scale != 1 else 1) * batch
    pair = bool(dom.paired_calls) and pairing_pays(sum(p.numel() for p in tuned.parameters()),
                                                   rows * x_T[0].numel(), "cpu")
    runs = {("plain", ""): run_plain, ("+ LoRA", "peft"): run(Method("lora_scale", 1.0), merged=False)}
    for spec, label, kwargs, _ in _variants(settings, steps, pair):
        runs[(spec, label)] = run(Method("aig", spec), **kwargs)
    run_plain()  # warm-up
    timer, clock = clock_for("cpu")
    times, calls = _measure(runs, repeats, clock)
    n = sum(p.numel() for p in base.parameters())
    head = (f"toy (MLP, {n / 1e3:.0f} k parameters) on cpu: {steps} steps, {chains} batches of {batch} per run "
            f"({rows} rows per network call with CFG {dom.guidance_scale:g}); {repeats} interleaved rounds, "
            f"{timer}")
    return head, _rows(times, calls, batch * chains, steps, settings, pair)


def _rows(times: dict, calls: dict, images: int, steps: int, settings: Sequence[str], pair: bool) -> list[dict]:
    """Table rows: the best time per image, and the ratios to plain as the median over rounds of each round's ratio
    (robust to load that changes from round to round, which a ratio of two minima is not)."""
    plain = times[("plain", "")]
    defaults = {(s, v) for s, v, _, d in _variants(settings, steps, pair) if d}
    rows = []
    for (setting, variant), sec in times.items():
        ideal = 1.0 + mixed_steps(setting, steps) / steps if setting in settings else 1.0
        ratio = statistics.median(t / p for t, p in zip(sec, plain))
        rows.append(dict(setting=setting, variant=variant + ("*" if (setting, variant) in defaults else ""),
                         seconds=min(sec) / images, x_plain=ratio, ideal=ideal, x_ideal=ratio / ideal,
                         calls=calls[(setting, variant)], times=sec))
    return rows


def table(head: str, rows: list[dict]) -> str:
    """The printed table of one model, with the saving of one call over two per AIG setting (median over rounds)."""
    lines = [head, f"{'setting':<32}{'variant':<12}{'ms / image':>10}{'x plain':>9}{'ideal':>7}{'x ideal':>9}  calls"]
    for r in rows:
        lines.append(f"{r['setting']:<32}{r['variant']:<12}{r['seconds'] * 1e3:>10.3f}{r['x_plain']:>9.2f}"
                     f"{r['ideal']:>7.2f}{r['x_ideal']:>9.2f}  {r['calls']}")
    by = {(r["setting"], r["variant"].rstrip("*")): r["times"] for r in rows}
    saved = [f"{s} {1 - statistics.median(a / b for a, b in zip(by[(s, 'one call')], by[(s, 'two calls')])):+.0%}"
             for s, v in by if v == "one call"]
    if saved:
        lines.append("one call instead of two saves per image: " + ", ".join(saved))
    return "\n".join(lines)


def find_world() -> Optional[Path]:
    """A built miniature world's pipeline folder: params/shapes.yaml's, else the first built under results/."""
    found = [WORLD / "model_index.json", *sorted(ROOT.glob("results/*/models/world/pipeline/model_index.json"))]
    return next((p.parent for p in found if p.exists()), None)


def world_guidance(folder: Path) -> Optional[float]:
    """The guidance scale of the run that built a world (results/<run>/models/world/pipeline: params/<run>.yaml)."""
    params = ROOT / "params" / f"{Path(folder).resolve().parents[2].name}.yaml"
    return float(load(params).domain_config.guidance_scale) if params.exists() else None


def main(argv: Optional[list[str]] = None) -> None:
    """Command-line entry point: print the tables of the chosen models."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,world,toy",
                    help="comma-separated: tiny, world (a built miniature world), toy, or a hub id / pipeline folder")
    ap.add_argument("--kind", default="sd", choices=sorted(PAPER_SAMPLING))
    ap.add_argument("--world", default=None, help="the world's pipeline folder (default: find_world)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", default="2", help="images per pipeline call, comma-separated (SD pipelines)")
    ap.add_argument("--world-batch", default="2,64",
                    help="the same for the miniature world (64: past where one call pays on CPU; its sweep: 256)")
    ap.add_argument("--toy-batch", type=int, default=256)
    ap.add_argument("--guidance", type=float, default=None,
                    help="CFG scale (default: the paper's; a world's from the params file that built it)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (tiny nets are overhead-bound)")
    a = ap.parse_args(argv)
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    print(f"device {a.device}" + (f", {a.threads} thread(s)" if a.device == "cpu" else "") +
          "; * marks the default variant at that batch")

    def pipelines(model: str, title: str = "", guidance: Optional[float] = None, batches: str = a.batch) -> None:
        pipe = load_for_bench(model, a.kind, a.device)
        for batch in (int(b) for b in batches.split(",")):
            head, rows = pipeline_rows(model, a.steps, batch, a.repeats, a.device, kind=a.kind, pipe=pipe,
                                       guidance=a.guidance if a.guidance is not None else guidance)
            print(f"\n{title}{table(head, rows)}", flush=True)

    def world() -> None:
        folder = Path(a.world) if a.world else find_world()
        if folder is None:
            print("\nworld: no built miniature world under results/ (notebook 01 of params/shapes.yaml builds it); "
                  "skipped")
            return
        pipelines(str(folder), "miniature world ", world_guidance(folder), a.world_batch)

    targets: dict[str, Callable[[], None]] = {
        "toy": lambda: print("\n" + table(*toy_rows(a.steps, a.toy_batch, a.repeats)), flush=True),
        "world": world,
    }
    for model in a.models.split(","):
        targets.get(model, lambda: pipelines(model))()


if __name__ == "__main__":
    main()
