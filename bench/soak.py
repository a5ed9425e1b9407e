"""Soak ComfyUI hosts with MimicBrush edits: every prompt must succeed, the same seed must give the
same bytes, and resident memory must stay flat after warm-up (goal: under 5% growth from the
peak of the first 5 edits to what the process settles at, the lesser of the last 2).

    python bench/soak.py --host .ci-work/comfy2024 --host .ci-work/comfy0375 [--edits 50]
                         [--workflow demo] [--steps N]

Each ``--host`` is a folder made by ``../shared/comfyui-host/install.sh``; the script starts its
server with this pack, runs the edits through its HTTP API, stops it, and prints one row a host.
The shipped demo workflow (the default) needs nothing but the pack: its model and pictures come
with it; another shipped workflow runs on the golden fixture's tiny models, placed in the host's
model folders as the end-to-end tests place them. The tests run a short soak with the same function.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows" / "api"
WARM_UP = 5  # edits before memory settles (allocator pools, first-use caches)
SETTLED = 2  # the last edits whose least resident memory is what the process keeps (one edit's spike passes)


def _run(client, prompt: dict) -> dict:
    return client.wait(client.queue(prompt), limit_s=1800)


def soak(client, resident_memory_kib, prompt: dict, edits: int = 50) -> dict:
    """Queue ``edits`` copies of ``prompt`` alternating two seeds; return a report (failures, memory
    growth, reproducibility). Outputs of equal seeds are compared byte for byte. ComfyUI caches
    unchanged nodes, so alternating seeds makes every edit really run.
    """
    base = json.loads(json.dumps(prompt))
    sampler = next(nid for nid, node in base.items() if node["class_type"] == "MimicBrushSampler")
    save = next(nid for nid, node in base.items() if node["class_type"] == "SaveImage")
    failures, outputs, rss = 0, {}, []
    for index in range(edits):
        seed = 1000 + index % 2
        base[sampler]["inputs"]["seed"] = seed
        entry = _run(client, base)
        if entry["status"]["status_str"] != "success":
            failures += 1
            continue
        node, name, subfolder, kind = next(o for o in client.output_images(entry) if o[0] == save)
        outputs.setdefault(seed, []).append(client._request("GET", f"/view?filename={name}&subfolder={subfolder}&type={kind}"))
        rss.append(resident_memory_kib())
    if len(rss) < WARM_UP + SETTLED:
        raise ValueError(f"a soak needs at least {WARM_UP + SETTLED} successful edits to measure memory after warm-up")
    # The allocator's pools make resident memory wander by a few percent from edit to edit, and one
    # edit's may rise and fall back (a CI run: 815.6 MiB after warm-up, 863.6 at one later edit, 815.6
    # at the last). A leak keeps what it took: it shows as the memory the process settles at, the least
    # of the last SETTLED edits, climbing above the peak reached while warming up.
    warm, later, settled = max(rss[:WARM_UP]), max(rss[WARM_UP:]), min(rss[-SETTLED:])
    return {
        "edits": edits,
        "failures": failures,
        "rss_warm_up_peak_mib": round(warm / 1024, 1),
        "rss_later_peak_mib": round(later / 1024, 1),
        "rss_settled_mib": round(settled / 1024, 1),
        "rss_final_mib": round(rss[-1] / 1024, 1),
        "rss_growth": (settled - warm) / warm,
        "rss_peak_growth": (later - warm) / warm,
        "same_seed_same_bytes": all(len(set(runs)) == 1 for runs in outputs.values()),
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def soak_host(root: Path, workflow: str, edits: int, steps: int | None) -> dict:
    """Start the host's server with this pack, soak it with the shipped ``workflow``, stop it."""
    from tests.e2e.comfy_host import ComfyHost, for_tiny_host, place_fixture_models

    prompt = json.loads((WORKFLOWS / f"mimicbrush_{workflow}.json").read_text())
    if workflow != "demo":
        prompt = for_tiny_host(prompt)
    if steps is not None:
        for node in prompt.values():
            if node["class_type"] == "MimicBrushSampler":
                node["inputs"]["steps"] = steps
    host = ComfyHost(root.resolve(), _free_port())
    if workflow != "demo":
        place_fixture_models(host.comfy)
    host.start()
    try:
        return {"host": f"ComfyUI {host.version}", **soak(host.client, host.resident_memory_kib, prompt, edits)}
    finally:
        host.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", action="append", required=True, type=Path, help="a host folder (repeatable)")
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--workflow", default="demo", choices=sorted(p.stem.removeprefix("mimicbrush_")
                                                                      for p in WORKFLOWS.glob("mimicbrush_*.json")))
    parser.add_argument("--steps", type=int, help="sampler steps (default: the workflow's own)")
    args = parser.parse_args()
    if args.edits < WARM_UP + SETTLED:
        parser.error(f"--edits must be at least {WARM_UP + SETTLED}: memory is measured after the warm-up edits")
    sys.path.insert(0, str(REPO))
    reports = [soak_host(root, args.workflow, args.edits, args.steps) for root in args.host]
    print("| host | edits | failures | same seed, same bytes | RSS after warm-up, MiB | RSS peak later, MiB "
          f"| RSS settled (lesser of the last {SETTLED}), MiB | growth, settled (peak) |\n|---|---|---|---|---|---|---|---|")
    for r in reports:
        print(f"| {r['host']} | {r['edits']} | {r['failures']} | {'yes' if r['same_seed_same_bytes'] else 'NO'} "
              f"| {r['rss_warm_up_peak_mib']} | {r['rss_later_peak_mib']} | {r['rss_settled_mib']} "
              f"| {100 * r['rss_growth']:.1f}% ({100 * r['rss_peak_growth']:.1f}%) |")
    good = all(r["failures"] == 0 and r["same_seed_same_bytes"] and r["rss_growth"] < 0.05 for r in reports)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
