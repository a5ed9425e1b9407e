"""Write the shipped workflows, UI format (workflows/*.json) and API format (workflows/api/*.json),
from one description each, so the two copies never drift apart.

    python tools/build_workflows.py          # rewrite both copies
    python tools/build_workflows.py --check  # exit 1 if the files differ from what would be written
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "workflows"

# Link slots of every node type used: (inputs, outputs) as (name, type) pairs, in ComfyUI's order.
SLOTS = {
    "MimicBrushExampleImage": ([], [("image", "IMAGE"), ("mask", "MASK")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "MimicBrushDepthAnythingLoader": ([], [("depth_model", "DEPTH_ANYTHING")]),
    "MimicBrushLoader": ([("depth_model", "DEPTH_ANYTHING")], [("mimicbrush", "MIMICBRUSH_MODEL")]),
    "MimicBrushEncodeReference": ([("mimicbrush", "MIMICBRUSH_MODEL"), ("image", "IMAGE"), ("reference_mask", "MASK")],
                                  [("reference", "MIMICBRUSH_REFERENCE")]),
    "MimicBrushJoinReferences": ([("reference_a", "MIMICBRUSH_REFERENCE"), ("reference_b", "MIMICBRUSH_REFERENCE")],
                                 [("reference", "MIMICBRUSH_REFERENCE")]),
    "MimicBrushDepth": ([("depth_model", "DEPTH_ANYTHING"), ("image", "IMAGE")],
                        [("depth_image", "IMAGE"), ("shape_depth", "MIMICBRUSH_DEPTH")]),
    "MimicBrushCropAroundMask": ([("image", "IMAGE"), ("mask", "MASK")],
                                 [("image", "IMAGE"), ("mask", "MASK"), ("crop", "MIMICBRUSH_CROP")]),
    "MimicBrushStitch": ([("crop", "MIMICBRUSH_CROP"), ("image", "IMAGE")], [("image", "IMAGE")]),
    "MimicBrushSampler": ([("mimicbrush", "MIMICBRUSH_MODEL"), ("source", "IMAGE"), ("mask", "MASK"),
                           ("reference", "MIMICBRUSH_REFERENCE"), ("shape_depth", "MIMICBRUSH_DEPTH")],
                          [("image", "IMAGE"), ("latent", "LATENT")]),
}
# Widgets that the page shows but that are not inputs of the node (they follow the named widget).
UI_ONLY_WIDGETS = {("MimicBrushSampler", "seed"): "fixed"}
OPTIONAL_INPUTS = {("MimicBrushSampler", "shape_depth"), ("MimicBrushEncodeReference", "reference_mask")}


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)  # input name -> (source node id, output slot)
    title: str | None = None
    size: tuple[int, int] = (320, 130)


DEMO_CHOICE = "built-in demo (tiny, synthetic)"  # nodes/model_folders.py


def encoder(node_id: int, pos, image, reference_mask=None, title=None) -> Node:
    links = {"mimicbrush": (2, 0), "image": image}
    if reference_mask is not None:
        links["reference_mask"] = reference_mask
    return Node(node_id, "MimicBrushEncodeReference", pos, {"batch": "one reference per image"}, links, title,
                (340, 100))


def loaders(checkpoint_y: int = 80, demo: bool = False) -> list[Node]:
    depth, checkpoint = ("depth_anything_vitb14.pth", "mimicbrush.bin") if not demo else (DEMO_CHOICE, DEMO_CHOICE)
    vae = DEMO_CHOICE if demo else "sd-vae-ft-mse/diffusion_pytorch_model.safetensors"
    return [
        Node(1, "MimicBrushDepthAnythingLoader", (40, checkpoint_y), {"model": depth, "precision": "auto"}),
        Node(2, "MimicBrushLoader", (40, checkpoint_y + 170), {"checkpoint": checkpoint, "vae": vae, "precision": "auto"},
             {"depth_model": (1, 0)}, size=(360, 130)),
    ]


def sampler(node_id: int, pos, source, mask, reference, shape_depth=None, seed=42, title=None,
            region="crop around mask", working_size=512, steps=50, guidance=5.0) -> Node:
    links = {"mimicbrush": (2, 0), "source": source, "mask": mask, "reference": reference}
    if shape_depth is not None:
        links["shape_depth"] = shape_depth
    return Node(node_id, "MimicBrushSampler", pos,
                {"steps": steps, "guidance": guidance, "seed": seed, "batch_size": 1, "region": region,
                 "working_size": working_size, "context": 2.0, "sampler": "ddim (exact)", "reference_every": 1,
                 "guided_fraction": 1.0, "deep_features_every": 1, "reference_strength": 1.0, "denoise": 1.0,
                 "quality": "custom (the options above)"},
                links, title, (340, 430))


WORKFLOWS = {
    "mimicbrush_demo": [
        *loaders(demo=True),
        Node(3, "MimicBrushExampleImage", (40, 440), {"image": "mimicbrush_demo_source.png"},
             title="Source (the masked shape is repainted)", size=(320, 110)),
        Node(4, "MimicBrushExampleImage", (420, 440), {"image": "mimicbrush_demo_reference.png"},
             title="Reference (the same shape, another view)", size=(320, 110)),
        encoder(5, (480, 250), (4, 0)),
        sampler(6, (840, 160), (3, 0), (3, 1), (5, 0), title="Edit with the built-in demo model (128 px)",
                region="whole image (authors)", working_size=128, steps=25, guidance=3.0),
        Node(7, "SaveImage", (1220, 160), {"filename_prefix": "mimicbrush_demo"}, {"images": (6, 0)}, size=(400, 400)),
    ],
    "mimicbrush_demo_two_references": [
        *loaders(demo=True),
        Node(3, "MimicBrushExampleImage", (40, 440), {"image": "mimicbrush_demo_source.png"},
             title="Source (the masked shape is repainted)", size=(360, 110)),
        Node(4, "MimicBrushExampleImage", (40, 600), {"image": "mimicbrush_demo_reference_cluttered.png"},
             title="Reference 1: two shapes, the right one masked", size=(360, 110)),
        Node(8, "MimicBrushExampleImage", (40, 760), {"image": "mimicbrush_demo_reference_other_view.png"},
             title="Reference 2: the shape in another view", size=(360, 110)),
        encoder(5, (460, 580), (4, 0), (4, 1), title="Encode reference 1 (imitate the masked part)"),
        encoder(9, (460, 740), (8, 0), title="Encode reference 2"),
        Node(10, "MimicBrushJoinReferences", (840, 660), links={"reference_a": (5, 0), "reference_b": (9, 0)},
             title="Imitate both together", size=(260, 80)),
        sampler(6, (1160, 160), (3, 0), (3, 1), (10, 0), title="Edit with the built-in demo model (128 px)",
                region="whole image (authors)", working_size=128, steps=25, guidance=3.0),
        Node(7, "SaveImage", (1540, 160), {"filename_prefix": "mimicbrush_demo_two_references"}, {"images": (6, 0)},
             size=(400, 400)),
    ],
    "mimicbrush_part_composition": [
        *loaders(),
        Node(3, "MimicBrushExampleImage", (40, 440), {"image": "mimicbrush_source.png"},
             title="Source (its mask is painted in; use Load Image for your own)",
             size=(320, 110)),
        Node(4, "MimicBrushExampleImage", (420, 440), {"image": "mimicbrush_reference.png"}, title="Reference", size=(320, 110)),
        encoder(5, (480, 250), (4, 0)),
        sampler(6, (840, 160), (3, 0), (3, 1), (5, 0)),
        Node(7, "SaveImage", (1220, 160), {"filename_prefix": "mimicbrush"}, {"images": (6, 0)}, size=(400, 400)),
    ],
    "mimicbrush_texture_transfer": [
        *loaders(),
        Node(3, "MimicBrushExampleImage", (40, 440), {"image": "mimicbrush_source.png"}, title="Source (mask the whole object)",
             size=(320, 110)),
        Node(4, "MimicBrushExampleImage", (420, 440), {"image": "mimicbrush_texture.png"}, title="Texture reference",
             size=(320, 110)),
        encoder(5, (480, 250), (4, 0)),
        Node(8, "MimicBrushDepth", (480, 60), links={"depth_model": (1, 0), "image": (3, 0)}, size=(300, 80)),
        Node(9, "PreviewImage", (1220, 600), links={"images": (8, 0)}, title="Depth (shape control)", size=(320, 300)),
        sampler(6, (840, 160), (3, 0), (3, 1), (5, 0), shape_depth=(8, 1)),
        Node(7, "SaveImage", (1220, 160), {"filename_prefix": "mimicbrush_texture"}, {"images": (6, 0)},
             size=(400, 400)),
    ],
    "mimicbrush_one_reference_many_edits": [
        *loaders(),
        Node(3, "MimicBrushExampleImage", (40, 440), {"image": "mimicbrush_source.png"}, title="Source A", size=(320, 110)),
        Node(10, "MimicBrushExampleImage", (40, 840), {"image": "mimicbrush_source_2.png"}, title="Source B", size=(320, 110)),
        Node(4, "MimicBrushExampleImage", (420, 440), {"image": "mimicbrush_reference.png"}, title="Reference (encoded once)",
             size=(320, 110)),
        encoder(5, (480, 250), (4, 0)),
        sampler(6, (840, 160), (3, 0), (3, 1), (5, 0), title="Edit A"),
        sampler(11, (840, 640), (10, 0), (10, 1), (5, 0), seed=7, title="Edit B"),
        Node(7, "SaveImage", (1220, 160), {"filename_prefix": "mimicbrush_a"}, {"images": (6, 0)}, size=(400, 400)),
        Node(12, "SaveImage", (1220, 640), {"filename_prefix": "mimicbrush_b"}, {"images": (11, 0)}, size=(400, 400)),
    ],
    "mimicbrush_large_image": [
        *loaders(),
        Node(3, "MimicBrushExampleImage", (40, 440), {"image": "mimicbrush_large_source.png"},
             title="Large source (a small masked patch)", size=(320, 110)),
        Node(4, "MimicBrushExampleImage", (420, 440), {"image": "mimicbrush_reference.png"}, title="Reference", size=(320, 110)),
        Node(13, "MimicBrushCropAroundMask", (420, 60), {"working_size": 512, "context": 2.0, "min_side": 256},
             {"image": (3, 0), "mask": (3, 1)}, title="Crop around the mask (any nodes may follow)", size=(340, 150)),
        encoder(5, (480, 250), (4, 0)),
        sampler(6, (840, 160), (13, 0), (13, 1), (5, 0), title="Edit the crop", region="whole image (authors)"),
        Node(14, "MimicBrushStitch", (1220, 30), links={"crop": (13, 2), "image": (6, 0)}, size=(300, 60)),
        Node(7, "SaveImage", (1220, 150), {"filename_prefix": "mimicbrush_large"}, {"images": (14, 0)},
             size=(400, 400)),
    ],
}


def api_format(nodes: list[Node]) -> dict:
    prompt = {}
    for node in sorted(nodes, key=lambda n: n.id):
        inputs = dict(node.widgets)
        inputs.update({name: [str(source), slot] for name, (source, slot) in node.links.items()})
        entry = {"class_type": node.type, "inputs": inputs}
        if node.title:
            entry["_meta"] = {"title": node.title}
        prompt[str(node.id)] = entry
    return prompt


def ui_format(nodes: list[Node]) -> dict:
    links, by_target = [], {}
    for node in nodes:
        for name, (source, slot) in node.links.items():
            link_id = len(links) + 1
            source_type = SLOTS[next(n.type for n in nodes if n.id == source)][1][slot][1]
            links.append([link_id, source, slot, node.id, [n for n, _ in SLOTS[node.type][0]].index(name), source_type])
            by_target[(node.id, name)] = link_id
    ui_nodes = []
    for order, node in enumerate(nodes):
        inputs = [{"name": name, "type": kind, "link": by_target.get((node.id, name))}
                  for name, kind in SLOTS[node.type][0]
                  if (node.id, name) in by_target or (node.type, name) not in OPTIONAL_INPUTS]
        outputs = []
        for slot, (name, kind) in enumerate(SLOTS[node.type][1]):
            out_links = [link[0] for link in links if link[1] == node.id and link[2] == slot]
            outputs.append({"name": name, "type": kind, "links": out_links or None, "shape": 3, "slot_index": slot})
        widgets = []
        for name, value in node.widgets.items():
            widgets.append(value)
            if (node.type, name) in UI_ONLY_WIDGETS:
                widgets.append(UI_ONLY_WIDGETS[(node.type, name)])
        entry = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
                 "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                 "properties": {"Node name for S&R": node.type}, "widgets_values": widgets}
        if node.title:
            entry["title"] = node.title
        ui_nodes.append(entry)
    return {"last_node_id": max(n.id for n in nodes), "last_link_id": len(links), "nodes": ui_nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def rendered() -> dict[Path, str]:
    files = {}
    for name, nodes in WORKFLOWS.items():
        files[ROOT / f"{name}.json"] = json.dumps(ui_format(nodes), indent=2) + "\n"
        files[ROOT / "api" / f"{name}.json"] = json.dumps(api_format(nodes), indent=2) + "\n"
    return files


def main(argv: list[str]) -> int:
    files = rendered()
    if "--check" in argv:
        stale = [str(p) for p, text in files.items() if not p.is_file() or p.read_text() != text]
        for path in stale:
            print(f"out of date: {path}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
