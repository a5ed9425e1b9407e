"""The networks behind DINO-I, CLIP-I, CLIP-T and LPIPS, loaded only from local paths.

Nothing is downloaded. A backbone the user did not give makes its metrics :class:`NotComputed`
(reported as such, never as a number); a path that is given but unusable is an error, since
the user asked for that metric.

- **DINOv2**: a transformers folder (``config.json``, weights, ``preprocessor_config.json``), e.g.
  ``facebook/dinov2-base`` as downloaded. The embedding is the class token after the final layer
  norm (``Dinov2Model``'s ``pooler_output``).
- **CLIP**: a transformers ``CLIPModel`` folder with its processor (tokenizer and image
  processor), e.g. ``openai/clip-vit-large-patch14``. Image embeddings are the projected
  ``get_image_features``. CLIP-T is torchmetrics' ``clip_score`` on the folder's model.
- **LPIPS**: torchmetrics' LPIPS network: the LPIPS v0.1 linear layers that torchmetrics ships,
  on an ImageNet backbone (AlexNet by default, as LPIPS's authors recommend) whose torchvision
  weights file the user gives (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth`` or
  ``squeezenet1_1-b8a52dc0.pth``). Both torchmetrics and the ``lpips`` package build that backbone
  with torchvision; without an importable torchvision, LPIPS is not computed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError
from .metrics import cosine_score

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class NotComputed:
    """Why a metric has no value."""

    reason: str


def _chw_uint8(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``H x W x 3`` uint8 as a ``3 x H x W`` uint8 tensor, the image form torchmetrics' CLIP score takes."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(device)


class DinoEmbedder:
    """DINOv2 class-token embeddings of a batch of images."""

    def __init__(self, folder: Path, device: torch.device):
        from transformers import AutoImageProcessor, Dinov2Model

        _require_folder(folder, "DINOv2", "facebook/dinov2-base")
        try:
            self.model = Dinov2Model.from_pretrained(folder).to(device).eval()
            self.processor = AutoImageProcessor.from_pretrained(folder)
        except (OSError, ValueError) as err:
            raise ModelFileError(f"Cannot load DINOv2 from '{folder}': {err}. Give a transformers folder holding "
                                 "config.json, the weights and preprocessor_config.json "
                                 "(e.g. facebook/dinov2-base as downloaded).") from err
        self.device = device
        self.source = str(folder)

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        pixels = self.processor(images=[_chw_uint8(image) for image in images], return_tensors="pt")["pixel_values"]
        return self.model(pixel_values=pixels.to(self.device, self.model.dtype)).pooler_output

    def image_scores(self, first: list[np.ndarray], second: list[np.ndarray]) -> list[float]:
        """DINO-I of matching pairs: 100 x cosine of the embeddings."""
        return cosine_score(self.embed(first), self.embed(second)).tolist()


class _TensorFeatures(torch.nn.Module):
    """A CLIPModel whose ``get_*_features`` return the embedding tensor.

    torchmetrics 1.9's ``clip_score`` expects tensors; transformers 5 returns an output object
    holding them in ``pooler_output`` (torchmetrics issue 3407, fixed after 1.9.0). Handing this
    wrapper to torchmetrics through its documented callable hook lets both versions work.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


class ClipScorer:
    """CLIP image embeddings (CLIP-I) and torchmetrics' CLIP score against a text (CLIP-T)."""

    def __init__(self, folder: Path, device: torch.device):
        from transformers import CLIPModel, CLIPProcessor

        _require_folder(folder, "CLIP", "openai/clip-vit-large-patch14")
        try:
            model = CLIPModel.from_pretrained(folder).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(folder)
        except (OSError, ValueError, TypeError) as err:
            raise ModelFileError(f"Cannot load CLIP from '{folder}': {err}. Give a transformers CLIPModel folder "
                                 "with its tokenizer and preprocessor_config.json "
                                 "(e.g. openai/clip-vit-large-patch14 as downloaded).") from err
        self.model = _TensorFeatures(model)
        self.device = device
        self.source = str(folder)

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        """Projected image embeddings, preprocessed as torchmetrics' CLIP score does it."""
        pixels = self.processor(images=[_chw_uint8(image) for image in images],
                                return_tensors="pt", padding=True)["pixel_values"]
        return self.model.get_image_features(pixels.to(self.device, self.model.model.dtype))

    def image_scores(self, first: list[np.ndarray], second: list[np.ndarray]) -> list[float]:
        """CLIP-I of matching pairs: 100 x cosine of the image embeddings."""
        return cosine_score(self.embed(first), self.embed(second)).tolist()

    @torch.inference_mode()
    def text_score(self, image: np.ndarray, text: str) -> float:
        """CLIP-T: torchmetrics' ``clip_score``, ``max(100 * cos(image, text), 0)``."""
        from torchmetrics.functional.multimodal import clip_score

        # torchmetrics moves the model to the image's device: hand it the image where the model is
        return float(clip_score(_chw_uint8(image, self.device), text,
                                model_name_or_path=lambda: (self.model, self.processor)))


class LpipsScorer:
    """torchmetrics' LPIPS network with its backbone's weights read from a local file."""

    def __init__(self, network: torch.nn.Module, net: str, backbone_file: Path, device: torch.device):
        self.network = network.to(device)
        self.device = device
        self.source = f"{net}: {backbone_file}"

    @torch.inference_mode()
    def __call__(self, edited: torch.Tensor, target: torch.Tensor) -> float:
        """LPIPS of two ``[1, 3, H, W]`` 0..1 images."""
        return float(self.network(edited.to(self.device, torch.float32), target.to(self.device, torch.float32),
                                  normalize=True).squeeze())


def torchvision_features_for(backbone_keys: list[str], state: dict[str, torch.Tensor], source: Path) -> dict:
    """The entries of a torchvision state dict (``features.<i>.<param>``) that fill torchmetrics'
    LPIPS backbone, whose layers keep their torchvision index inside slices (``slice<k>.<i>.<param>``)."""
    picked, missing = {}, []
    for key in backbone_keys:
        _, index, param = key.split(".", 2)
        name = f"features.{index}.{param}"
        if name in state:
            picked[key] = state[name]
        else:
            missing.append(name)
    if missing:
        raise ModelFileError(f"'{source}' is not the torchvision weights file of this LPIPS backbone: it lacks "
                             f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}. Give e.g. "
                             "alexnet-owt-7be5be79.pth with --lpips-net alex.")
    return picked


def load_lpips(net: str, backbone_file: Path | None, device: torch.device) -> LpipsScorer | NotComputed:
    if backbone_file is None:
        return NotComputed("no --lpips-backbone given (torchvision's ImageNet weights of the LPIPS backbone)")
    if not backbone_file.is_file():
        raise ModelFileError(f"The LPIPS backbone file '{backbone_file}' does not exist. Give torchvision's "
                             "ImageNet weights, e.g. alexnet-owt-7be5be79.pth for --lpips-net alex.")
    try:
        import torchvision  # noqa: F401  (torchmetrics builds the LPIPS backbone with it)
    except (ImportError, RuntimeError, OSError) as err:  # one built for another torch fails with RuntimeError
        return NotComputed(f"needs torchvision, which cannot be imported here ({type(err).__name__}: {err}); "
                           "install the torchvision build that matches your torch")
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    network = _NoTrainLpips(net=net, pretrained=True, pnet_rand=True)  # random backbone: nothing is downloaded
    try:
        state = torch.load(backbone_file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelFileError(f"Cannot read the LPIPS backbone '{backbone_file}' as a weights-only torch file: "
                             f"{err}") from err
    network.net.load_state_dict(torchvision_features_for(list(network.net.state_dict()), state, backbone_file))
    return LpipsScorer(network.eval(), net, backbone_file, device)


def _require_folder(folder: Path, what: str, example: str) -> None:
    if not folder.is_dir():
        raise ModelFileError(f"The {what} folder '{folder}' does not exist. Give a transformers folder "
                             f"such as {example} as downloaded.")


@dataclass
class Backbones:
    """The loaded metric backbones, each either ready or :class:`NotComputed`."""

    dino: DinoEmbedder | NotComputed
    clip: ClipScorer | NotComputed
    lpips: LpipsScorer | NotComputed
    sources: dict[str, str]
    """What was loaded, for the report: metric family -> folder or file."""


def load_backbones(dino: Path | None, clip: Path | None, lpips_backbone: Path | None, lpips_net: str,
                   device: torch.device) -> Backbones:
    dino_model = DinoEmbedder(dino, device) if dino is not None else NotComputed("no --dino folder given")
    clip_model = ClipScorer(clip, device) if clip is not None else NotComputed("no --clip folder given")
    lpips_model = load_lpips(lpips_net, lpips_backbone, device)
    for name, model in (("DINOv2", dino_model), ("CLIP", clip_model), ("LPIPS", lpips_model)):
        if isinstance(model, NotComputed):
            logger.warning("%s metrics will not be computed: %s", name, model.reason)
    sources = {name: model.source for name, model in
               (("DINO", dino_model), ("CLIP", clip_model), ("LPIPS", lpips_model))
               if not isinstance(model, NotComputed)}
    return Backbones(dino_model, clip_model, lpips_model, sources)
