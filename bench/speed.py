"""Speed and memory of the engine against the authors' computation order, side by side in one run.

    python bench/speed.py [--size full|tiny] [--steps 3] [--work DIR]

``full`` builds SD-1.5-size components with random weights (860M-parameter U-Nets, CLIP ViT-H/14,
Depth Anything ViT-B, the SD VAE), writes them once as an authors'-format ``.bin`` and as our
``.safetensors``, then measures. The step-time ratio comes from the authors' order and exact mode
run in one process, taking turns step by step (:class:`TakeTurns`), so that each pair of steps
meets the same machine: this CPU's speed drifts by 10-20% over minutes, more than the difference
being measured. Their outputs are checked to agree first. Each then runs alone in a fresh
process so that its peak memory is its own, and so do fast mode and loading each file. fp32 on
the CPU, 512². Prints one Markdown table. ``tiny`` does the same on
the fixture's tiny architecture in seconds (a smoke test of this script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.authors_order import AuthorsOrderPipeline  # noqa: E402
from mimic_core.checkpoint import PARTS, convert_checkpoint, default_config  # noqa: E402
from mimic_core.deep_cache import whole_steps  # noqa: E402
from mimic_core.models import load_models  # noqa: E402
from mimic_core.pipeline import MimicBrushPipeline  # noqa: E402

FAST_STEPS = 20
FAST_SETTINGS = ((1.0, 1), (1.0, 2), (1.0, 3), (1.0, 5), (0.5, 1), (0.5, 3), (0.5, 5), (0.0, 1))
"""Fast-mode per-edit times are printed for these (guided_fraction, deep_features_every): the share
of guided steps (1: guidance at every step as exact mode; 0: the conditional branch alone) and how
often the imitative U-Net runs whole (1: every step; k: every k-th, its outermost level between)."""
FAST_DEEP_EVERY = 2
"""The measured fast run reuses deep features every 2nd step, so it times all four kinds of step."""
FIXTURE = REPO.parent / "shared" / "fixtures" / "mimicbrush_tiny"
DEPTH_VITB = {"vit": {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 14},
              "head": {"features": 128, "out_channels": [96, 192, 384, 768]}}


def _configs(size: str) -> dict:
    if size == "tiny":
        return {part: json.loads((FIXTURE / f"{part}_config.json").read_text()) for part in PARTS}
    return {part: default_config(part) for part in PARTS}


def build_files(size: str, work: Path) -> dict:
    """Random-weight MimicBrush in both checkpoint formats, a VAE folder and a depth model folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, DepthAnythingConfig
    from transformers import DepthAnythingForDepthEstimation, Dinov2Config

    from mimic_core.components import DepthGuider, ImageProjection, reference_unet_optional_keys

    torch.manual_seed(0)
    configs = _configs(size)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    reference = UNet2DConditionModel.from_config(configs["referencenet"])
    clip_fields = {k: v for k, v in configs["image_encoder"].items() if k not in ("architectures", "transformers_version")}
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_fields))
    projection = ImageProjection(clip.config.hidden_size, unet.config.cross_attention_dim)
    guider_config = configs["depth_guider"]
    guider = DepthGuider(guider_config["conditioning_embedding_channels"], guider_config["conditioning_channels"],
                         tuple(guider_config["block_out_channels"]))
    for module in (unet, reference, guider):  # diffusers zero-initialises some outputs; make every path count
        with torch.no_grad():
            for parameter in module.parameters():
                if not parameter.abs().sum():
                    parameter.normal_(0, 0.02)
    optional = reference_unet_optional_keys(reference)
    parts = {"unet": unet.state_dict(), "referencenet": {k: v for k, v in reference.state_dict().items() if k not in optional},
             "image_encoder": clip.state_dict(), "image_proj": projection.state_dict(), "depth_guider": guider.state_dict()}
    torch.save(parts, work / "mimicbrush.bin")
    config_dir = work / "configs"
    config_dir.mkdir(exist_ok=True)
    for part, config in configs.items():
        (config_dir / f"{part}_config.json").write_text(json.dumps(config))
    convert_checkpoint(work / "mimicbrush.bin", work / "mimicbrush.safetensors", config_dir)
    del parts, unet, reference, clip
    vae_config = json.loads((FIXTURE / "vae_config.json").read_text()) if size == "tiny" else None
    vae = AutoencoderKL.from_config(vae_config) if vae_config else AutoencoderKL.from_config(
        json.loads((REPO / "mimic_core" / "configs" / "sd_vae.json").read_text()))
    vae.save_pretrained(work / "vae")
    if size == "tiny":
        depth_dir = FIXTURE / "depth_anything_tiny_hf"
    else:
        backbone = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14,
                                image_size=518, out_indices=[9, 10, 11, 12], apply_layernorm=True,
                                reshape_hidden_states=False, layerscale_value=1.0)
        depth = DepthAnythingForDepthEstimation(DepthAnythingConfig(
            backbone_config=backbone, neck_hidden_sizes=[96, 192, 384, 768], fusion_hidden_size=128,
            reassemble_hidden_size=768, depth_estimation_type="relative"))
        depth.save_pretrained(work / "depth")
        depth_dir = work / "depth"
    return {"bin": str(work / "mimicbrush.bin"), "safetensors": str(work / "mimicbrush.safetensors"),
            "vae": str(work / "vae"), "depth": str(depth_dir)}


def peak_resident_gib() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent across fork and exec, so every child would report the builder's peak."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 2**20


def _inputs():
    rng = np.random.default_rng(0)
    source = torch.from_numpy(rng.random((1, 480, 640, 3), dtype=np.float32))
    mask = torch.zeros(480, 640)
    mask[120:360, 200:440] = 1
    reference = torch.from_numpy(rng.random((1, 400, 300, 3), dtype=np.float32))
    return source, mask, reference


class TakeTurns:
    """Runs edits in threads that compute one at a time, a sampling step each in turn.

    A thread holds the turn from the start of its edit to its first step's end, then from the end
    of one step to the end of the next; the time it held the turn is that step's time (the first
    also holds the work before the loop). An edit that has finished gives its turns up for good.
    """

    def __init__(self, sides: int) -> None:
        self.sides = sides
        self.turn = 0
        self.finished: set[int] = set()
        self.condition = threading.Condition()
        self.step_s: dict[int, list[float]] = {side: [] for side in range(sides)}
        self.results: dict[int, object] = {}
        self.errors: list[BaseException] = []

    def _wait(self, side: int) -> float:
        with self.condition:
            self.condition.wait_for(lambda: self.turn == side)
        return time.perf_counter()

    def _pass(self, side: int) -> None:
        with self.condition:
            following = [(side + k) % self.sides for k in range(1, self.sides + 1)]
            self.turn = next((s for s in following if s not in self.finished), side)
            self.condition.notify_all()

    def _run(self, side: int, edit) -> None:
        started = [self._wait(side)]

        def step_done(step, total, latents):
            self.step_s[side].append(time.perf_counter() - started[0])
            self._pass(side)
            started[0] = self._wait(side)

        try:
            self.results[side] = edit(step_done)
        except BaseException as err:  # reported by run(), after every side has stopped
            self.errors.append(err)
        finally:
            with self.condition:
                self.finished.add(side)
            self._pass(side)

    def run(self, *edits) -> list:
        """Each ``edit(callback)`` in its own thread, in turns; their results, in order."""
        threads = [threading.Thread(target=self._run, args=(side, edit)) for side, edit in enumerate(edits)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.errors:
            raise self.errors[0]
        return [self.results[side] for side in range(self.sides)]


def measure_in_turns(files: dict, steps: int, out: Path) -> dict:
    """The authors' order and exact mode in one process, one step each in turn; the per-step ratio
    is taken pair by pair over the steady steps (2 onwards)."""
    sides = {"authors": AuthorsOrderPipeline(load_models(files["safetensors"], files["vae"], files["depth"],
                                                         prepack=False)),
             "exact": MimicBrushPipeline(load_models(files["safetensors"], files["vae"], files["depth"]))}
    turns = TakeTurns(len(sides))
    edits = [lambda callback, pipeline=pipeline: pipeline.edit(*_inputs(), keep_shape=True, steps=steps, seed=1,
                                                               callback=callback)
             for pipeline in sides.values()]
    results = turns.run(*edits)
    for (mode, _), result in zip(sides.items(), results):
        torch.save(result.latents, out.parent / f"{mode}_in_turns.pt")
    authors_s, exact_s = (turns.step_s[side][1:] for side in range(2))
    ratios = [e / a for a, e in zip(authors_s, exact_s)]
    return {"mode": "in turns", "authors_step_s": authors_s, "exact_step_s": exact_s, "ratios": ratios,
            "ratio_median": statistics.median(ratios), "ratio_of_sums": sum(exact_s) / sum(authors_s)}


def measure_edit(files: dict, mode: str, steps: int, out: Path) -> dict:
    torch.manual_seed(0)
    # their U-Nets run stock convolutions; ours run on weights packed once for oneDNN
    models = load_models(files["safetensors"], files["vae"], files["depth"], prepack=mode != "authors")
    # ours as the CLI runs it: the image encoder's and depth model's memory released once used
    pipeline = AuthorsOrderPipeline(models) if mode == "authors" else MimicBrushPipeline(models, release_encoders=True)
    # fast mode runs twice the steps, guided for the first half only, the whole U-Net every 2nd step
    # (and at the first unguided one), to time guided and unguided, whole and shallow steps
    options = ({"sampler": "dpmpp_2m", "reference_every": 0, "guided_fraction": 0.5,
                "deep_features_every": FAST_DEEP_EVERY} if mode == "fast" else {})
    run_steps = 2 * steps if mode == "fast" else steps
    kinds, current = [], {}
    unet = pipeline.models.unet
    hooks = [unet.conv_in.register_forward_hook(lambda module, args, output: current.update(rows=output.shape[0])),
             unet.mid_block.register_forward_hook(lambda *args: current.update(whole=True))]

    def step_done(step, total, latents):
        kinds.append(("guided" if current["rows"] == 2 else "unguided", "whole" if current.pop("whole", False)
                      else "shallow", time.perf_counter()))

    started = time.perf_counter()
    result = pipeline.edit(*_inputs(), keep_shape=True, steps=run_steps, seed=1, **options, callback=step_done)
    total = time.perf_counter() - started
    for hook in hooks:
        hook.remove()
    torch.save(result.latents, out)
    # steps 2.. are steady; step 1 also holds what the loop does once (fast mode's only reference pass)
    stamps = [stamp for _, _, stamp in kinds]
    steady = {}
    for (guided, whole, _), duration in zip(kinds[1:], np.diff(stamps)):
        steady.setdefault(f"{guided}_{whole}", []).append(float(duration))
    report = {"mode": mode, "total_s": total, "steps": run_steps, "first_step_s": stamps[0] - started,
              "loop_s": stamps[-1] - started, "peak_rss_gib": peak_resident_gib(),
              "step_s": {kind: float(np.mean(values)) for kind, values in steady.items()}}
    report["steady_step_s"] = report["step_s"]["guided_whole"]
    return report


LOADERS = {"authors": "bin", "bin": "bin", "safetensors": "safetensors"}
"""Load measurements, each naming the file it reads: the authors' way with the ``.bin``
(:func:`bench.authors_order.load_like_authors`), the engine's reader on the ``.bin`` (memory-mapped
``torch.load``) and on the converted ``.safetensors``."""


def measure_load(files: dict, loader: str) -> dict:
    from bench.authors_order import load_like_authors
    from mimic_core.checkpoint import read_checkpoint
    from mimic_core.components import build_components

    config_dir = Path(files["safetensors"]).parent / "configs"
    started = time.perf_counter()
    if loader == "authors":
        components = load_like_authors(files["bin"], config_dir)
    else:
        components = build_components(read_checkpoint(files[LOADERS[loader]], config_dir))
    for module in components.values():  # touch every weight once, as a first forward pass would
        for parameter in module.parameters():
            parameter.data.sum()
    return {"mode": f"load {loader}", "total_s": time.perf_counter() - started,
            "peak_rss_gib": peak_resident_gib()}


def set_page_cache(path: str, cached: bool) -> None:
    """Put a file wholly in the page cache (read it through) or drop it from there (clean pages
    only, which a finished file's are), so every load starts from the same state."""
    with open(path, "rb") as handle:
        if cached:
            while handle.read(1 << 26):
                pass
        else:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


STEP_KINDS = ("guided_whole", "guided_shallow", "unguided_whole", "unguided_shallow")


def fast_step_kinds(guided_fraction: float, deep_every: int) -> list[str]:
    """The kind of each of the FAST_STEPS steps, by the engine's rules: guided for the first
    ``round(f * steps)``; whole where :func:`mimic_core.deep_cache.whole_steps` says."""
    guided_steps = round(guided_fraction * FAST_STEPS)
    return [f"{'guided' if index < guided_steps else 'unguided'}_{'whole' if whole else 'shallow'}"
            for index, whole in enumerate(whole_steps(FAST_STEPS, guided_steps, deep_every))]


def _child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--steps", type=int, default=3, help="DDIM steps of each edit run alone")
    parser.add_argument("--turn-steps", type=int, default=6,
                        help="DDIM steps of the authors' order and exact mode taking turns (the first is not timed)")
    parser.add_argument("--work", help="folder for the random-weight files (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    if args.child:
        files = json.loads(args.files)
        if args.child.startswith("load-"):
            report = measure_load(files, args.child[len("load-"):])
        elif args.child == "in-turns":
            report = measure_in_turns(files, args.turn_steps, Path(args.out))
        else:
            report = measure_edit(files, args.child, args.steps, Path(args.out))
        print(json.dumps(report))
        return 0

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        files = build_files(args.size, work)
        print(f"built {args.size} random-weight files in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        common = ["--size", args.size, "--steps", str(args.steps), "--turn-steps", str(args.turn_steps),
                  "--files", json.dumps(files)]
        turns = _child(["--child", "in-turns", "--out", str(work / "turns.pt"), *common])
        print(json.dumps(turns), file=sys.stderr)
        authors, exact = torch.load(work / "authors_in_turns.pt"), torch.load(work / "exact_in_turns.pt")
        relative = ((exact - authors).norm() / authors.norm()).item()
        rows = {}
        for mode in ("authors", "exact", "fast"):
            rows[mode] = _child(["--child", mode, "--out", str(work / f"{mode}.pt"), *common])
            print(json.dumps(rows[mode]), file=sys.stderr)
        for cached in (True, False):
            for loader, kind in LOADERS.items():
                set_page_cache(files[kind], cached)
                rows[loader, cached] = _child(["--child", f"load-{loader}", *common])
                print(json.dumps(rows[loader, cached]), file=sys.stderr)

    a, e, f = rows["authors"], rows["exact"], rows["fast"]
    steps = args.steps
    for row in (a, e):
        row["fixed_s"] = row["total_s"] - steps * row["steady_step_s"]
    step_s = f["step_s"]
    reference_pass = e["steady_step_s"] - step_s["guided_whole"]  # fast mode runs it once, at step 1
    # outside the loop: the edit's time before its first step (less that step) and after its last
    f["fixed_s"] = f["total_s"] - f["loop_s"] + f["first_step_s"] - step_s["guided_whole"] - reference_pass
    authors_50 = a["fixed_s"] + 50 * a["steady_step_s"]
    exact_50 = e["fixed_s"] + 50 * e["steady_step_s"]
    pairs = len(turns["ratios"])
    print(f"\n{args.size} size, fp32, CPU ({torch.get_num_threads()} threads), 512²; {args.turn_steps} steps taking "
          f"turns, {args.steps} steps alone")
    print(f"exact vs authors' order: relative error of the final latents {relative:.2e} (must be <= 1e-4)\n")
    print("| measurement | authors' order | ours | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| s per DDIM step, taking turns in one process: median of {pairs} pairs' ratios "
          f"(ratio of sums {turns['ratio_of_sums']:.3f}; pairs {min(turns['ratios']):.3f} to {max(turns['ratios']):.3f}) | "
          f"{statistics.median(turns['authors_step_s']):.2f} | {statistics.median(turns['exact_step_s']):.2f} | "
          f"{turns['ratio_median']:.3f} |")
    print(f"| s per DDIM step, each alone in its own process (steady) | {a['steady_step_s']:.2f} | "
          f"{e['steady_step_s']:.2f} | {e['steady_step_s'] / a['steady_step_s']:.2f} |")
    print(f"| fixed s per edit (encode, depth, CLIP, decode) | {a['fixed_s']:.1f} | {e['fixed_s']:.1f} | "
          f"{e['fixed_s'] / a['fixed_s']:.2f} |")
    print(f"| peak resident memory, GiB | {a['peak_rss_gib']:.2f} | {e['peak_rss_gib']:.2f} | "
          f"{e['peak_rss_gib'] / a['peak_rss_gib']:.2f} |")
    print(f"| s per edit, 50 DDIM steps | {authors_50:.0f} | {exact_50:.0f} | {exact_50 / authors_50:.2f} |")
    print(f"| fast-mode step, s: guided whole / guided shallow / conditional-only whole / conditional-only shallow "
          f"(exact step {e['steady_step_s']:.2f}, reference pass {reference_pass:.2f}) | | "
          f"{' / '.join(f'{step_s[kind]:.2f}' for kind in STEP_KINDS)} | |")
    exact_loop = 50 * e["steady_step_s"]
    for fraction, deep_every in FAST_SETTINGS:
        loop = reference_pass + sum(step_s[kind] for kind in fast_step_kinds(fraction, deep_every))
        fast = f["fixed_s"] + loop
        print(f"| fast mode: DPM++ 2M {FAST_STEPS} steps, reference once, guided_fraction {fraction:g}, "
              f"deep_features_every {deep_every}: s per edit (sampling loop alone) | {authors_50:.0f} | "
              f"{fast:.0f} ({loop:.0f}) | {exact_50 / fast:.1f}x faster than exact ({exact_loop / loop:.1f}x the loop), "
              f"{authors_50 / fast:.1f}x than the authors' |")
    for cached, state in ((True, "file in the page cache"), (False, "file not cached")):
        authors = rows["authors", cached]
        for loader, what in (("safetensors", "our .safetensors"), ("bin", "our reader on the .bin")):
            ours = rows[loader, cached]
            print(f"| load checkpoint, {state}: authors' .bin vs {what}, s / peak GiB | "
                  f"{authors['total_s']:.1f} / {authors['peak_rss_gib']:.2f} | "
                  f"{ours['total_s']:.1f} / {ours['peak_rss_gib']:.2f} | "
                  f"{ours['total_s'] / authors['total_s']:.2f} / {ours['peak_rss_gib'] / authors['peak_rss_gib']:.2f} |")
    print(f"\nPer-edit totals for 50 and {FAST_STEPS} steps are the measured fixed cost plus measured per-step costs; "
          "bench/fast_mode_quality.py measures what each fast setting does to the result.")
    return 0 if relative <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
