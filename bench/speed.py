"""Speed and memory of the engine against the authors' computation order, side by side in one run.

    python bench/speed.py [--size full|tiny] [--steps 3] [--work DIR]
    python bench/speed.py --options [--size full|tiny] [--steps 3]   # what each edit option costs
    python bench/speed.py --presets [--size full|tiny] [--steps 3]   # each quality preset's whole edit
    python bench/speed.py ... --dtype bf16                           # ours in bf16, the authors' in fp32
    python bench/speed.py --exact-only ...                           # the authors' order and exact mode alone

``full`` builds SD-1.5-size components with random weights (860M-parameter U-Nets, CLIP ViT-H/14,
Depth Anything ViT-B, the SD VAE), writes them once as an authors'-format ``.bin`` and as our
``.safetensors``, then measures each thing in a fresh process, so that its peak memory is its own.
The authors' order and exact mode run at the same time in two processes that take turns step by
step (:class:`Turns`: only one computes at a time), so that each pair of steps meets the same
machine: this CPU's speed drifts by 10-20% over minutes, more than the difference being measured.
Their outputs are checked to agree. The authors' order has read every weight before its edit, as
their ``torch.load`` of the ``.bin`` has; ours pages its weights in from the mapped file as it uses
them. Fast mode takes turns in the same way with an exact run of its
own, against which its speed-up is reckoned; loading each file runs alone. fp32 on the CPU, 512².
Prints one Markdown table. ``tiny`` does the same on
the fixture's tiny architecture in seconds (a smoke test of this script, not a measurement).
``--options`` instead times each option beyond the authors (:data:`OPTION_MODES`) taking turns
with a plain exact edit, and prints what it adds per step and per edit. ``--presets`` runs the
whole edit of each quality preset (:data:`mimic_core.edit_options.QUALITY_PRESETS`) taking turns
with an exact edit, and prints its measured time against exact 50-step DDIM's. ``--dtype`` sets
the precision of ours (the authors' order stays fp32): bf16 is the CPU's fast precision where it
has native bf16 (AVX512-BF16 or AMX; :func:`mimic_core.cpu_precision.native_cpu_precision`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.authors_order import AuthorsOrderPipeline, read_every_weight  # noqa: E402
from mimic_core.checkpoint import PARTS, convert_checkpoint, default_config  # noqa: E402
from mimic_core.command_options import DTYPES  # noqa: E402
from mimic_core.deep_cache import whole_steps  # noqa: E402
from mimic_core.edit_options import QUALITY_PRESETS, describe_quality  # noqa: E402
from mimic_core.models import load_models  # noqa: E402
from mimic_core.pipeline import MimicBrushPipeline  # noqa: E402

FAST_STEPS = 20
FAST_SETTINGS = ((1.0, 1), (1.0, 2), (1.0, 3), (1.0, 5), (0.5, 1), (0.5, 3), (0.5, 5), (0.0, 1))
"""Fast-mode per-edit times are printed for these (guided_fraction, deep_features_every): the share
of guided steps (1: guidance at every step as exact mode; 0: the conditional branch alone) and how
often the imitative U-Net runs whole (1: every step; k: every k-th, its outermost level between)."""
FAST_DEEP_EVERY = 2
"""The measured fast run reuses deep features every 2nd step, so it times all four kinds of step."""
FIXTURE = Path(os.environ.get("MIMICBRUSH_FIXTURE_DIR", REPO.parent / "shared" / "fixtures" / "mimicbrush_tiny"))
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


def _inputs(mode: str = "exact", seed: int = 0):
    """Source, mask and reference of the timed edit (random images drawn with ``seed``), and the
    edit options of ``mode``."""
    rng = np.random.default_rng(seed)
    source = torch.from_numpy(rng.random((1, 480, 640, 3), dtype=np.float32))
    mask = torch.zeros(480, 640)
    mask[120:360, 200:440] = 1
    reference = torch.from_numpy(rng.random((1, 400, 300, 3), dtype=np.float32))
    if mode == "two references":
        reference = [reference, reference.flip(2)]
    if mode.startswith("quality "):
        return source, mask, reference, dict(QUALITY_PRESETS[mode[len("quality "):]])
    return source, mask, reference, dict(OPTION_MODES.get(mode, {}))


OPTION_MODES = {"two references": {}, "reference mask": {}, "reference strength 0.5": {"reference_strength": 0.5},
                "denoise 0.5": {"denoise": 0.5}}
"""The options beyond the authors, each timed beside an exact edit: a second reference image (the
same one mirrored), a reference mask on the reference's left half, and two sampler settings."""


def reference_of(pipeline, mode: str, reference):
    """The reference as the edit takes it: a mask is given at encoding, so the encoding is timed."""
    if mode != "reference mask":
        return reference
    left_half = torch.zeros(reference.shape[1:3])
    left_half[:, : reference.shape[2] // 2] = 1
    return pipeline.encode_reference(reference, left_half)


class Turns:
    """A child's side of taking turns with another child: it computes only while it holds the turn.

    The parent hands the turn over by writing a line to the child's standard input; the child
    hands it back after each sampling step by writing ``step`` to its standard output. Each child
    computes on its own main thread and holds its own memory, as it would alone; the time it
    waits for the turn is left out of every time it reports."""

    def __init__(self) -> None:
        self.waited = 0.0

    def wait(self) -> float:
        """Block until this child holds the turn; returns the time it got it."""
        asked = time.perf_counter()
        sys.stdin.readline()
        got = time.perf_counter()
        self.waited += got - asked
        return got

    def give(self) -> None:
        print("step", flush=True)


FIXED_PARTS = ("VAE encode", "VAE decode", "image encoder", "depth model", "packing the U-Nets' weights")
"""What an edit runs outside its sampling loop, each timed on its own (:func:`time_fixed_parts`): the
networks, and ours packing the U-Nets' weights before its first step (the first edit at a size only)."""


def time_fixed_parts(models) -> tuple[dict[str, list[float]], list]:
    """Seconds of each call of each of the :data:`FIXED_PARTS`, filled as the edit runs, and the
    hooks to remove. The VAE's ``encode``/``decode`` and the models' ``pack_for`` are wrapped on the
    instance for good (they are methods, not a forward; a measuring child keeps them for its one or two
    edits); the two encoders are timed by forward hooks."""
    spent: dict[str, list[float]] = {part: [] for part in FIXED_PARTS}
    for part, owner, method in (("VAE encode", models.vae, "encode"), ("VAE decode", models.vae, "decode"),
                                ("packing the U-Nets' weights", models, "pack_for")):
        def timed(*args, _call=getattr(owner, method), _part=part, **kwargs):
            started = time.perf_counter()
            result = _call(*args, **kwargs)
            spent[_part].append(time.perf_counter() - started)
            return result
        setattr(owner, method, timed)
    hooks = []
    # the bench always loads a depth model (shape control is on in every timed edit)
    for part, network in (("image encoder", models.image_encoder), ("depth model", models.depth_model)):
        begun = []
        hooks.append(network.register_forward_pre_hook(lambda *args, _begun=begun: _begun.append(time.perf_counter())))
        hooks.append(network.register_forward_hook(
            lambda *args, _begun=begun, _part=part: spent[_part].append(time.perf_counter() - _begun.pop())))
    return spent, hooks


LATER_STEPS = 2
"""Steps of the later edit (``--later-edit``): enough to tell its fixed cost from its steady steps."""


def measure_edit(files: dict, mode: str, steps: int, out: Path, turns: Turns | None = None,
                 dtype: torch.dtype = torch.float32, later_edit: bool = False) -> dict:
    """One edit, timed step by step; with ``turns``, one step at a time while another child waits.
    ``dtype`` is ours; the authors' order runs fp32. With ``later_edit``, a second edit follows in
    the same process on other images (:data:`LATER_STEPS` steps), as in a ComfyUI session with the
    models loaded: its report is the first's ``later_edit``."""
    torch.manual_seed(0)
    # their U-Nets run stock convolutions; ours run on weights packed once for oneDNN
    models = load_models(files["safetensors"], files["vae"], files["depth"], inference_layers=mode != "authors",
                         dtype=torch.float32 if mode == "authors" else dtype)
    if mode == "authors":  # their torch.load has read every weight before the edit; ours pages them in during it
        read_every_weight(models.modules().values())
    # ours as the CLI runs it: the image encoder's and depth model's memory released once used
    pipeline = AuthorsOrderPipeline(models) if mode == "authors" else MimicBrushPipeline(models, release_encoders=True)
    parts, part_hooks = time_fixed_parts(pipeline.models)
    report = timed_edit(pipeline, mode, steps, _inputs(mode), parts, turns)
    torch.save(report.pop("latents"), out)
    if later_edit:
        # it holds the turn already: the first edit's last step handed it back and got it again
        report["later_edit"] = timed_edit(pipeline, mode, LATER_STEPS, _inputs(mode, seed=1), parts, turns,
                                          holds_turn=True)
        report["later_edit"].pop("latents")
    for hook in part_hooks:
        hook.remove()
    return report


def timed_edit(pipeline, mode: str, steps: int, inputs: tuple, parts: dict[str, list[float]], turns: Turns | None,
               holds_turn: bool = False) -> dict:
    """Run one edit of ``inputs`` (:func:`_inputs`), timing each step and each :data:`FIXED_PARTS`
    call it makes (``parts`` is filled as it runs, for the whole process); with ``turns``, it begins
    when it gets the turn unless it ``holds_turn`` already."""
    source, mask, reference, edit_options = inputs
    # fast mode runs twice the steps, guided for the first half only, the whole U-Net every 2nd step
    # (and at the first unguided one), to time guided and unguided, whole and shallow steps
    options = ({"sampler": "dpmpp_2m", "reference_every": 0, "guided_fraction": 0.5,
                "deep_features_every": FAST_DEEP_EVERY} if mode == "fast" else edit_options)
    run_steps = 2 * steps if mode == "fast" else options.pop("steps", steps)
    kinds, current = [], {}
    unet = pipeline.models.unet
    calls_before = {part: len(calls) for part, calls in parts.items()}
    hooks = [unet.conv_in.register_forward_hook(lambda module, args, output: current.update(rows=output.shape[0])),
             unet.mid_block.register_forward_hook(lambda *args: current.update(whole=True))]

    def loop_begins(*args) -> None:  # at the first U-Net call: the first step's time holds what comes before
        current.setdefault("loop_began", time.perf_counter())

    hooks += [network.register_forward_pre_hook(loop_begins) for network in (unet, pipeline.models.referencenet)]
    started = resumed = turns.wait() if turns and not holds_turn else time.perf_counter()
    waited_before = turns.waited if turns else 0.0

    def step_done(step, total, latents):
        nonlocal resumed
        now = time.perf_counter()
        kinds.append(("guided" if current["rows"] == 2 else "unguided", "whole" if current.pop("whole", False)
                      else "shallow", now - resumed))
        if turns:
            turns.give()
            resumed = turns.wait()
        else:
            resumed = now

    result = pipeline.edit(source, mask, reference_of(pipeline, mode, reference), keep_shape=True, steps=run_steps,
                           seed=1, **options, callback=step_done)
    total = time.perf_counter() - started - ((turns.waited - waited_before) if turns else 0.0)
    for hook in hooks:
        hook.remove()
    # steps 2.. are steady; step 1 also holds what the loop does once (fast mode's only reference pass)
    durations = [duration for _, _, duration in kinds]
    steady = {}
    for guided, whole, duration in kinds[1:]:
        steady.setdefault(f"{guided}_{whole}", []).append(float(duration))
    report = {"mode": mode, "total_s": total, "steps": run_steps, "first_step_s": durations[0],
              "before_loop_s": current["loop_began"] - started,
              "loop_s": sum(durations), "steady_steps_s": durations[1:],
              "step_s": {kind: float(np.mean(values)) for kind, values in steady.items()},
              "fixed_parts_s": {part: [float(seconds) for seconds in calls[calls_before[part]:]]
                                for part, calls in parts.items()},
              "latents": result.latents}
    report["steady_step_s"] = report["step_s"].get("guided_whole", float("nan"))
    report["peak_rss_gib"] = peak_resident_gib()  # the process's peak so far: with a later edit, over both
    return report


def take_turns(commands: list[list[str]]) -> list[dict]:
    """Run child processes a sampling step each in turn (:class:`Turns`); their final reports."""
    logs = [tempfile.TemporaryFile("w+") for _ in commands]
    children = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
                for command, log in zip(commands, logs)]
    reports: dict[int, dict] = {}
    try:
        while len(reports) < len(children):
            for index, child in enumerate(children):
                if index in reports:
                    continue
                child.stdin.write("go\n")
                child.stdin.flush()
                line = child.stdout.readline()
                if line.strip() != "step":
                    rest = line + child.stdout.read()
                    if child.wait() != 0:
                        logs[index].seek(0)
                        raise RuntimeError(logs[index].read()[-3000:])
                    reports[index] = json.loads(rest.strip().splitlines()[-1])
    finally:
        for child, log in zip(children, logs):
            if child.poll() is None:
                child.kill()
            log.close()
    return [reports[index] for index in range(len(children))]


LOADERS = {"authors": "bin", "bin": "bin", "safetensors": "safetensors"}
"""Load measurements, each naming the file it reads: the authors' way with the ``.bin``
(:func:`bench.authors_order.load_like_authors`), the engine's reader on the ``.bin`` (memory-mapped
``torch.load``) and on the converted ``.safetensors``."""


def measure_load(files: dict, loader: str) -> dict:
    """One load of the checkpoint's five parts, then every weight read that is not yet in memory, as
    after the authors' ``torch.load``: theirs from the ``.bin``, ours by the engine's reader and
    :func:`build_components` (no VAE, no depth model, no inference layers: loading packs nothing)."""
    from bench.authors_order import load_like_authors
    from mimic_core.checkpoint import read_checkpoint
    from mimic_core.components import build_components

    config_dir = Path(files["safetensors"]).parent / "configs"
    started = time.perf_counter()
    if loader == "authors":
        components = load_like_authors(files["bin"], config_dir)
    else:
        components = build_components(read_checkpoint(files[LOADERS[loader]], config_dir))
    read_every_weight(components.values())
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
    parser.add_argument("--steps", type=int, default=6,
                        help="DDIM steps of the authors' order and exact mode, taking turns (the first is not timed); "
                             "fast mode runs twice as many")
    parser.add_argument("--work", help="folder for the random-weight files (default: a temporary folder)")
    parser.add_argument("--options", action="store_true",
                        help="time each edit option beyond the authors beside a plain exact edit instead")
    parser.add_argument("--presets", action="store_true",
                        help="run each quality preset's whole edit beside a plain exact edit instead")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="precision of ours (the authors' order stays fp32; default %(default)s)")
    parser.add_argument("--exact-only", action="store_true",
                        help="measure the authors' order and exact mode only (no fast mode, no loading)")
    parser.add_argument("--later-edit", action="store_true",
                        help="with --exact-only: a second edit on other images follows in each process, the models "
                             "loaded (as in a ComfyUI session), and its fixed cost is printed too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--turns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.later_edit and not (args.exact_only or args.child):
        parser.error("--later-edit goes with --exact-only")
    torch.set_grad_enabled(True)
    if args.child:
        files = json.loads(args.files)
        if args.child.startswith("load-"):
            report = measure_load(files, args.child[len("load-"):])
        else:
            report = measure_edit(files, args.child, args.steps, Path(args.out), Turns() if args.turns else None,
                                  DTYPES[args.dtype], args.later_edit)
        print(json.dumps(report))
        return 0

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        files = build_files(args.size, work)
        print(f"built {args.size} random-weight files in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        common = ["--size", args.size, "--steps", str(args.steps), "--dtype", args.dtype, "--files", json.dumps(files),
                  *(["--later-edit"] if args.later_edit else [])]
        def in_turns(modes: tuple[str, ...], name: str) -> list[dict]:
            return take_turns([[sys.executable, __file__, "--child", mode, "--turns",
                                "--out", str(work / f"{name}_{index}.pt"), *common] for index, mode in enumerate(modes)])

        if args.options:
            return print_option_costs({mode: in_turns(("exact", mode), f"option_{index}")
                                       for index, mode in enumerate(OPTION_MODES)}, args)
        if args.presets:
            return print_preset_costs({name: in_turns(("exact", f"quality {name}"), f"preset_{name}")
                                       for name in QUALITY_PRESETS if name != "exact"}, args)

        rows = dict(zip(("authors", "exact"), in_turns(("authors", "exact"), "exact_pair")))
        authors, exact = torch.load(work / "exact_pair_0.pt"), torch.load(work / "exact_pair_1.pt")
        relative = ((exact - authors).norm() / authors.norm()).item()
        if args.exact_only:
            return print_exact_pair(rows, relative, args)
        # fast mode is timed beside an exact run of its own, so that its speed-up meets one machine too
        rows["exact beside fast"], rows["fast"] = in_turns(("exact", "fast"), "fast_pair")
        for mode in ("authors", "exact", "exact beside fast", "fast"):
            print(json.dumps(rows[mode]), file=sys.stderr)
        for cached in (True, False):
            for loader, kind in LOADERS.items():
                set_page_cache(files[kind], cached)
                rows[loader, cached] = _child(["--child", f"load-{loader}", *common])
                print(json.dumps(rows[loader, cached]), file=sys.stderr)

    a, e, x, f = rows["authors"], rows["exact"], rows["exact beside fast"], rows["fast"]
    x["fixed_s"] = x["total_s"] - args.steps * x["steady_step_s"]
    step_s = f["step_s"]
    reference_pass = x["steady_step_s"] - step_s["guided_whole"]  # fast mode runs it once, at step 1
    # outside the loop: the edit's time before its first step (less that step) and after its last
    f["fixed_s"] = f["total_s"] - f["loop_s"] + f["first_step_s"] - step_s["guided_whole"] - reference_pass
    exact_50_beside_fast = x["fixed_s"] + 50 * x["steady_step_s"]
    print_exact_rows(a, e, relative, args)
    print(f"| fast mode beside exact mode, taking turns: exact step {x['steady_step_s']:.2f} s, exact 50 DDIM steps "
          f"{exact_50_beside_fast:.0f} s per edit; fast-mode step, s: guided whole / guided shallow / "
          f"conditional-only whole / conditional-only shallow (reference pass {reference_pass:.2f}) | | "
          f"{' / '.join(f'{step_s[kind]:.2f}' for kind in STEP_KINDS)} | |")
    exact_loop = 50 * x["steady_step_s"]
    for fraction, deep_every in FAST_SETTINGS:
        loop = reference_pass + sum(step_s[kind] for kind in fast_step_kinds(fraction, deep_every))
        fast = f["fixed_s"] + loop
        print(f"| fast mode: DPM++ 2M {FAST_STEPS} steps, reference once, guided_fraction {fraction:g}, "
              f"deep_features_every {deep_every}: s per edit (sampling loop alone) | | {fast:.0f} ({loop:.0f}) | "
              f"{exact_50_beside_fast / fast:.1f}x faster than exact ({exact_loop / loop:.1f}x the loop) |")
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
    return exit_status(relative, args)


def print_exact_rows(a: dict, e: dict, relative: float, args) -> None:
    """The heading and first rows of the table: the authors' order against exact mode, taking turns."""
    fixed_a, fixed_e = (row["total_s"] - args.steps * row["steady_step_s"] for row in (a, e))
    authors_50, exact_50 = fixed_a + 50 * a["steady_step_s"], fixed_e + 50 * e["steady_step_s"]
    ratios = [ours / theirs for theirs, ours in zip(a["steady_steps_s"], e["steady_steps_s"])]
    print(f"\n{args.size} size, ours {args.dtype}, the authors' fp32, CPU ({torch.get_num_threads()} threads), 512²; "
          f"the authors' order and exact "
          f"mode {args.steps} steps each, taking turns step by step")
    print(f"exact vs authors' order: relative error of the final latents {relative:.2e} "
          f"({'must be <= 1e-4' if args.dtype == 'fp32' else 'not exact: ours in ' + args.dtype})\n")
    print("| measurement | authors' order | ours | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| s per DDIM step (steady: mean of steps 2-{args.steps}; each pair's ratio "
          f"{' '.join(f'{r:.2f}' for r in ratios)}, median {statistics.median(ratios):.3f}) | "
          f"{a['steady_step_s']:.2f} | {e['steady_step_s']:.2f} | {e['steady_step_s'] / a['steady_step_s']:.3f} |")
    print(f"| fixed s per edit (VAE, depth, CLIP; ours pages in and packs the U-Nets' weights before its first step) | "
          f"{fixed_a:.1f} | {fixed_e:.1f} | {fixed_e / fixed_a:.2f} |")
    for name, theirs, ours in fixed_cost_parts(a, e):
        print(f"| ... {name} | {theirs:.1f} | {ours:.1f} | {ours / theirs if theirs else float('nan'):.2f} |")
    if "later_edit" in a:
        print_later_edit_rows(a, e)
    print(f"| peak resident memory (the first edit), GiB | {a['peak_rss_gib']:.2f} | {e['peak_rss_gib']:.2f} | "
          f"{e['peak_rss_gib'] / a['peak_rss_gib']:.2f} |")
    print(f"| s per edit, 50 DDIM steps | {authors_50:.0f} | {exact_50:.0f} | {exact_50 / authors_50:.2f} |")


def print_later_edit_rows(a: dict, e: dict) -> None:
    """The fixed cost of the later edit (``--later-edit``), reckoned with each side's steady step from
    its first edit (the later edit's own steps are too few), and its parts."""
    later = [dict(row["later_edit"], steady_step_s=row["steady_step_s"]) for row in (a, e)]
    fixed_a, fixed_e = (row["total_s"] - row["steps"] * row["steady_step_s"] for row in later)
    pair_ratios = ' '.join(f'{ours / theirs:.2f}' for theirs, ours in zip(later[0]['steady_steps_s'], later[1]['steady_steps_s']))
    print(f"| fixed s per later edit (other images, the models loaded; {LATER_STEPS} steps, each pair's ratio {pair_ratios}) | "
          f"{fixed_a:.1f} | {fixed_e:.1f} | {fixed_e / fixed_a:.2f} |")
    for name, theirs, ours in fixed_cost_parts(*later):
        print(f"| ... later edit: {name} | {theirs:.1f} | {ours:.1f} | {ours / theirs if theirs else float('nan'):.2f} |")
    print(f"| ... peak resident memory over both edits, GiB | {later[0]['peak_rss_gib']:.2f} | "
          f"{later[1]['peak_rss_gib']:.2f} | {later[1]['peak_rss_gib'] / later[0]['peak_rss_gib']:.2f} |")


def fixed_cost_parts(*rows: dict) -> list[tuple]:
    """The fixed cost's parts, s in each row: each network outside the loop (its calls counted), the
    first step beyond a steady one and the rest of
    the time outside the loop. ``first_step_s`` holds the time before the loop too."""
    parts = []
    for part in FIXED_PARTS:
        calls = [len(row["fixed_parts_s"][part]) for row in rows]
        counted = f"{calls[0]} call{'s' * (calls[0] != 1)}" if len(set(calls)) == 1 else " / ".join(map(str, calls))
        parts.append((f"{part} ({counted})", *(sum(row["fixed_parts_s"][part]) for row in rows)))
    networks = [sum(values) for values in zip(*(part[1:] for part in parts))]
    parts.append(("first step beyond a steady one", *(row["first_step_s"] - row["before_loop_s"] - row["steady_step_s"]
                                                       for row in rows)))
    parts.append(("the rest (preparing inputs, the depth guider, stitching)",
                  *(row["total_s"] - row["loop_s"] + row["before_loop_s"] - spent for row, spent in zip(rows, networks))))
    return parts


def print_exact_pair(rows: dict, relative: float, args) -> int:
    """The table of ``--exact-only``."""
    for mode in ("authors", "exact"):
        print(json.dumps(rows[mode]), file=sys.stderr)
    print_exact_rows(rows["authors"], rows["exact"], relative, args)
    return exit_status(relative, args)


def exit_status(relative: float, args) -> int:
    """Non-zero when fp32 exact mode is not the authors' function (the other precisions are not exact)."""
    return 0 if relative <= 1e-4 or args.dtype != "fp32" else 1


def print_option_costs(pairs: dict[str, list[dict]], args) -> int:
    """The table of ``--options``: each option's step and fixed cost against the exact edit it took
    turns with."""
    print(f"\n{args.size} size, {args.dtype}, CPU ({torch.get_num_threads()} threads), 512²; each option and a plain exact "
          f"edit {args.steps} steps each, taking turns step by step\n")
    print("| option | exact s per step | option s per step | step ratio | exact fixed s | option fixed s |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, (exact, option) in pairs.items():
        for row in (exact, option):
            row["fixed_s"] = row["total_s"] - args.steps * row["steady_step_s"]
        print(f"| {mode} | {exact['steady_step_s']:.2f} | {option['steady_step_s']:.2f} | "
              f"{option['steady_step_s'] / exact['steady_step_s']:.3f} | {exact['fixed_s']:.1f} | "
              f"{option['fixed_s']:.1f} |")
    print("\nFixed cost: the edit's time outside its steady steps (encoding the reference, for the mask, included).")
    return 0


def print_preset_costs(pairs: dict[str, list[dict]], args) -> int:
    """The table of ``--presets``: each preset's measured edit against the exact edit it took turns
    with, reckoned at 50 steps (its fixed cost plus 50 of its steady steps)."""
    print(f"\n{args.size} size, {args.dtype}, CPU ({torch.get_num_threads()} threads), 512²; each preset's whole edit "
          f"and an exact edit of {args.steps} steps, taking turns step by step\n")
    print("| preset | exact s per step | exact 50 steps, s per edit | preset s per edit | faster than exact |")
    print("|---|---:|---:|---:|---:|")
    for name, (exact, preset) in pairs.items():
        exact_50 = exact["total_s"] + (50 - args.steps) * exact["steady_step_s"]
        print(f"| {name}: {describe_quality(name)} | {exact['steady_step_s']:.2f} | {exact_50:.0f} | "
              f"{preset['total_s']:.0f} | {exact_50 / preset['total_s']:.1f}x |")
    print("\nbench/fast_mode_quality.py scores each preset on the demo model.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
