"""The catalogue of bad inputs: what a user can get wrong, and what they are told.

One list for the tests and the README: ``tests/test_bad_inputs.py`` runs every command-line and
engine case, ``tests/e2e/test_comfyui_host.py`` every node case on each ComfyUI host, and
``tools/build_bad_input_table.py`` writes the README's table from the same entries (a test
checks that the README holds it). A case passes when the call is refused with one message that
contains ``answer``, before any model loads or the sampler runs, or, where ``answer`` is empty,
when it gives the correct result.

``change`` says how the case differs from a good call, in the surface's own terms:
- command line: options to set (``None`` removes one); values in braces name files the test
  prepares (``{source}``, ``{empty_mask}``, ...);
- engine: keyword arguments of ``MimicBrushPipeline.edit``; a string value names a prepared input;
- node: ``"<class_type>.<input>"`` of the shipped part-composition workflow set to a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CLI, ENGINE, NODE = "command line", "engine (Python)", "ComfyUI node"


@dataclass(frozen=True)
class BadInput:
    surface: str
    given: str
    answer: str
    change: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.surface.split()[0]}: {self.given}"


NOT_FINITE_GUIDANCE = "guidance must be a finite number of 0 or more"
SEED_RANGE = "seed must be a whole number from 0 to 18446744073709551615"

CASES = [
    BadInput(CLI, "--guidance nan", "--" + NOT_FINITE_GUIDANCE, {"--guidance": "nan"}),
    BadInput(CLI, "--guidance inf", "--" + NOT_FINITE_GUIDANCE, {"--guidance": "inf"}),
    BadInput(CLI, "--guidance -2", "--" + NOT_FINITE_GUIDANCE, {"--guidance": "-2"}),
    BadInput(CLI, "--seed 2**64 (above ComfyUI's range)", "--" + SEED_RANGE, {"--seed": str(2**64)}),
    BadInput(CLI, "--seed -1", "--" + SEED_RANGE, {"--seed": "-1"}),
    BadInput(CLI, "--steps 0", "--steps must be at least 1", {"--steps": "0"}),
    BadInput(CLI, "--steps ten", "argument --steps: invalid int value: 'ten'", {"--steps": "ten"}),
    BadInput(CLI, "--working-size 100", "--working-size must be a multiple of 64 from 64 to 1024",
             {"--working-size": "100"}),
    BadInput(CLI, "--samples 0", "--samples must be at least 1", {"--samples": "0"}),
    BadInput(CLI, "--guided-fraction 1.5", "--guided-fraction must be a finite number from 0 to 1",
             {"--guided-fraction": "1.5"}),
    BadInput(CLI, "--reference-every -1", "--reference-every must be at least 0", {"--reference-every": "-1"}),
    BadInput(CLI, "--deep-features-every 0", "--deep-features-every must be at least 1",
             {"--deep-features-every": "0"}),
    BadInput(CLI, "--quality turbo", "argument --quality: invalid choice: 'turbo'", {"--quality": "turbo"}),
    BadInput(CLI, "--quality fast with --deep-features-every 0 (an option beside the preset wins, and is checked)",
             "--deep-features-every must be at least 1", {"--quality": "fast", "--deep-features-every": "0"}),
    BadInput(CLI, "--device cuda on a machine without a CUDA GPU", "use --device cpu", {"--device": "cuda"}),
    BadInput(CLI, "--device tpu", "--device 'tpu' is not a device", {"--device": "tpu"}),
    BadInput(CLI, "--out edited.txt (no image format)", "does not end in an image format this can write",
             {"--out": "{folder}/edited.txt"}),
    BadInput(CLI, "--out naming a folder", "is a folder; give a file name in it", {"--out": "{folder}"}),
    BadInput(CLI, "--out the same file as --source", "is one of the input images; choose another name",
             {"--out": "{source}"}),
    BadInput(CLI, "--out a file that exists, without --overwrite", "exists; choose another --out or pass --overwrite",
             {"--out": "{existing}"}),
    BadInput(CLI, "--out inside a path that is a file", "is a file, not a folder",
             {"--out": "{existing}/edited.png"}),
    BadInput(CLI, "--source that does not exist", "does not exist: check the path", {"--source": "{folder}/missing.png"}),
    BadInput(CLI, "--reference that is not an image (a text file)", "Give a picture this can open (a PNG, JPEG",
             {"--reference": "{text_file}"}),
    BadInput(CLI, "--mask all black", "The mask is empty: paint the region", {"--mask": "{empty_mask}"}),
    BadInput(CLI, "--mask painted faintly (grey 100 of 255 at most)", "The mask is too faint: its strongest value is 0.392",
             {"--mask": "{faint_mask}"}),
    BadInput(CLI, "--mask left out, and the source has no transparent part to read one from",
             "has no transparent part to read a mask from: give --mask", {"--mask": None}),
    BadInput(CLI, "--mask drawn on an image of another shape", "another aspect ratio",
             {"--mask": "{wide_mask}"}),
    BadInput(CLI, "--reference-strength 3", "--reference-strength must be a finite number from 0 to 2",
             {"--reference-strength": "3"}),
    BadInput(CLI, "--denoise 0", "--denoise must be above 0", {"--denoise": "0"}),
    BadInput(CLI, "--denoise 0.01 with --steps 20 (a 2000-step schedule)", "raise denoise to at least 0.02",
             {"--denoise": "0.01", "--steps": "20"}),
    BadInput(CLI, "--reference-mask all black", "The reference mask is empty: paint the part of the reference",
             {"--reference-mask": "{empty_mask}"}),
    BadInput(CLI, "--checkpoint that does not exist", "does not exist",
             {"--checkpoint": "{folder}/mimicbrush.safetensors"}),

    BadInput(ENGINE, "source as a uint8 tensor (0..255)", "", {"source": "uint8 source"}),
    BadInput(ENGINE, "source as floats 0..255", "floats must be in 0..1: divide a 0..255 picture by 255",
             {"source": "0..255 float source"}),
    BadInput(ENGINE, "source as a numpy array", "", {"source": "numpy source"}),
    BadInput(ENGINE, "source as a PIL image", "The source image must be a torch tensor (or numpy array)",
             {"source": "PIL source"}),
    BadInput(ENGINE, "reference as a file's path", "read a file with mimic_core.image_files.read_image",
             {"reference": "path reference"}),
    BadInput(ENGINE, "mask as None", "The mask must be a torch tensor (or numpy array)", {"mask": "no mask"}),
    BadInput(ENGINE, "source channels-first [1, 3, H, W]", "is channels-first", {"source": "channels-first source"}),
    BadInput(ENGINE, "source with NaN pixels", "NaN or infinite", {"source": "NaN source"}),
    BadInput(ENGINE, "reference with infinite pixels", "NaN or infinite", {"reference": "inf reference"}),
    BadInput(ENGINE, "a batch of two sources", "Expected one source image, got a batch of 2",
             {"source": "two sources"}),
    BadInput(ENGINE, "mask as a uint8 tensor (0..255)", "", {"mask": "uint8 mask"}),
    BadInput(ENGINE, "mask shaped [H, W, 1]", "", {"mask": "[H, W, 1] mask"}),
    BadInput(ENGINE, "mask at twice the source's resolution", "", {"mask": "double-size mask"}),
    BadInput(ENGINE, "mask as floats 0..255", "The mask has values up to 255, but floats must be in 0..1",
             {"mask": "0..255 float mask"}),
    BadInput(ENGINE, "a batch of two masks", "Expected one mask, got a batch of 2", {"mask": "two masks"}),
    BadInput(ENGINE, "an empty mask", "The mask is empty", {"mask": "empty mask"}),
    BadInput(ENGINE, "a label mask (uint8 0 and 1)", "holds only 0 and 1 (of 255): a label mask?",
             {"mask": "label mask"}),
    BadInput(ENGINE, "a faint mask (0.5 at most)", "The mask is too faint: its strongest value is 0.5,",
             {"mask": "faint mask"}),
    BadInput(ENGINE, "guidance=float('nan')", NOT_FINITE_GUIDANCE, {"guidance": float("nan")}),
    BadInput(ENGINE, "steps=2.5", "steps must be a whole number, got 2.5", {"steps": 2.5}),
    BadInput(ENGINE, "seed=2**64", SEED_RANGE, {"seed": 2**64}),
    BadInput(ENGINE, "working_size=100", "working_size must be a multiple of 64 from 64 to 1024",
             {"working_size": 100}),
    BadInput(ENGINE, "region='top'", "region must be one of whole, crop, crop_each", {"region": "top"}),
    BadInput(ENGINE, "context=float('inf') with region='crop'", "context must be a finite number of 1 or more",
             {"region": "crop", "context": float("inf")}),
    BadInput(ENGINE, "sampler='ddpm'", "sampler must be one of ddim, dpmpp_2m, unipc, euler", {"sampler": "ddpm"}),
    BadInput(ENGINE, "reference_strength=float('nan')", "reference_strength must be a finite number from 0 to 2",
             {"reference_strength": float("nan")}),
    BadInput(ENGINE, "denoise=1.5", "denoise must be a finite number above 0 and at most 1", {"denoise": 1.5}),
    BadInput(ENGINE, "steps=1001", "steps must be at most 1000 (the model's noise schedule)", {"steps": 1001}),
    BadInput(ENGINE, "depth_map with NaN", "The depth map holds NaN or infinite values",
             {"keep_shape": True, "depth_map": "NaN depth map"}),
    BadInput(ENGINE, "an EncodedReference made by a model of another architecture",
             "The encoded reference was made by a MimicBrush model of another architecture",
             {"reference": "another architecture's encoded reference"}),

    BadInput(NODE, "Sampler guidance NaN (API prompt)", NOT_FINITE_GUIDANCE,
             {"MimicBrushSampler.guidance": float("nan")}),
    BadInput(NODE, "Sampler working_size 100 (API prompt)", "working_size must be a multiple of 64",
             {"MimicBrushSampler.working_size": 100}),
    BadInput(NODE, "Sampler context NaN (API prompt)", "context must be a finite number of 1 or more",
             {"MimicBrushSampler.context": float("nan")}),
    BadInput(NODE, "Sampler guided_fraction NaN (API prompt)", "guided_fraction must be a finite number from 0 to 1",
             {"MimicBrushSampler.guided_fraction": float("nan")}),
    BadInput(NODE, "Sampler seed 2**64 (API prompt)", "bigger than max", {"MimicBrushSampler.seed": 2**64}),
    BadInput(NODE, "Sampler steps 0 (API prompt)", "smaller than min", {"MimicBrushSampler.steps": 0}),
    BadInput(NODE, "Sampler quality 'turbo' (API prompt)", "turbo", {"MimicBrushSampler.quality": "turbo"}),
    BadInput(NODE, "Sampler reference_strength NaN (API prompt)", "reference_strength must be a finite number from 0",
             {"MimicBrushSampler.reference_strength": float("nan")}),
]
