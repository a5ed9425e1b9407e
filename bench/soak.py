"""Soak a running ComfyUI server with MimicBrush edits: every prompt must succeed, resident memory
must stay flat after warm-up, and the same seed must give the same bytes.

    python bench/soak.py --url http://127.0.0.1:8199 --pid PID --edits 100 [--steps 50] [--tiny]

The server needs this pack and the models the shipped part-composition workflow names (``--tiny``
points it at the fixture names the tests use); the example pictures come with the pack.
The tests run a short version of the same function.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "mimicbrush_part_composition.json"
WARM_UP = 5  # edits before memory settles (allocator pools, first-use caches)


def _run(client, prompt: dict) -> dict:
    return client.wait(client.queue(prompt), limit_s=1800)


def soak(client, resident_memory_kib, adapt=lambda prompt, steps: prompt, edits: int = 100, steps: int = 50) -> dict:
    """Queue ``edits`` edits alternating two seeds; return a report (failures, memory growth, reproducibility).

    ``adapt(prompt, steps)`` points the shipped workflow at the server's models; outputs of equal
    seeds are compared byte for byte. ComfyUI caches unchanged nodes, so alternating seeds makes
    every edit really run.
    """
    base = adapt(json.loads(WORKFLOW.read_text()), steps)
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
    if len(rss) <= WARM_UP:
        raise ValueError(f"a soak needs more than {WARM_UP} successful edits to measure memory after warm-up")
    # The allocator's pools make resident memory wander by a few percent from edit to edit; a leak
    # shows as the later peak climbing above the peak reached while warming up.
    warm, later = max(rss[:WARM_UP]), max(rss[WARM_UP:])
    return {
        "edits": edits,
        "failures": failures,
        "rss_warm_up_peak_mib": round(warm / 1024, 1),
        "rss_later_peak_mib": round(later / 1024, 1),
        "rss_final_mib": round(rss[-1] / 1024, 1),
        "rss_growth": (later - warm) / warm,
        "same_seed_same_bytes": all(len(set(runs)) == 1 for runs in outputs.values()),
    }


def _rss_of(pid: int):
    def read() -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
    return read


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8199")
    parser.add_argument("--pid", type=int, required=True, help="the server's process id (for its memory)")
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--host-scripts", default=str(Path(__file__).resolve().parents[2] / "shared" / "comfyui-host"),
                        help="folder of the ComfyUI host's client.py")
    parser.add_argument("--tiny", action="store_true", help="use the fixture model names of the tests")
    args = parser.parse_args()
    sys.path.insert(0, args.host_scripts)
    from client import ComfyClient

    adapt = lambda prompt, steps: prompt  # noqa: E731
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.e2e.comfy_host import for_tiny_host as adapt
    report = soak(ComfyClient(args.url), _rss_of(args.pid), adapt, args.edits, args.steps)
    print(json.dumps(report, indent=2))
    return 0 if report["failures"] == 0 and report["same_seed_same_bytes"] and report["rss_growth"] < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
