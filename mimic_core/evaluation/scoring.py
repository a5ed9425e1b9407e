"""Scoring edited images: each case gets the paper's metrics for its pairing.

Inner-ID cases get SSIM, PSNR and LPIPS against the source; inter-ID cases get DINO-I and CLIP-I
against the reference and, when the case has a text, CLIP-T against it (on the whole edited
image). A metric whose backbone is missing has the value ``None`` and a reason in
``not_computed``; a metric that does not apply to a case is absent from its ``metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .backbones import Backbones, NotComputed
from .benchmark import Case, CaseImages, load_case_images, read_rgb
from .cropping import inner_id_crops, inter_id_crops
from .metrics import psnr, ssim, to_unit_tensor

logger = logging.getLogger(__name__)

INNER_ID_METRICS = ("SSIM", "PSNR", "LPIPS")
INTER_ID_METRICS = ("DINO-I", "CLIP-I", "CLIP-T")
METRICS = INNER_ID_METRICS + INTER_ID_METRICS
LOWER_IS_BETTER = frozenset({"LPIPS"})


@dataclass
class CaseScore:
    case: Case
    result: Path
    metrics: dict[str, float | None]


def applicable_metrics(case: Case) -> tuple[str, ...]:
    if case.pairing == "inner_id":
        return INNER_ID_METRICS
    return INTER_ID_METRICS if case.text else INTER_ID_METRICS[:2]


def not_computed_reasons(backbones: Backbones) -> dict[str, str]:
    owners = {"LPIPS": backbones.lpips, "DINO-I": backbones.dino, "CLIP-I": backbones.clip,
              "CLIP-T": backbones.clip}
    return {metric: model.reason for metric, model in owners.items() if isinstance(model, NotComputed)}


def read_result(case: Case, path: Path, source: np.ndarray) -> np.ndarray:
    edited = read_rgb(path)
    if edited.shape != source.shape:
        raise InputError(f"The result for case '{case.id}' ({path}) is {edited.shape[1]}x{edited.shape[0]} but its "
                         f"source is {source.shape[1]}x{source.shape[0]}: resize results back to the source's size.")
    return edited


def score_cases(cases: list[Case], result_path: Callable[[Case], Path], backbones: Backbones,
                batch_size: int = 8, visit: Callable[[Case, CaseImages, np.ndarray], None] | None = None,
                ) -> list[CaseScore]:
    """Every case's metrics; images are read ``batch_size`` cases at a time and the DINO and CLIP
    image embeddings of those cases are computed in one batch. ``visit(case, images, edited)``
    is called for each case with its pixels (to draw its contact sheet without reading them twice)."""
    scores = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        images = [load_case_images(case) for case in chunk]
        edited = [read_result(case, result_path(case), image.source) for case, image in zip(chunk, images)]
        metrics = [dict.fromkeys(applicable_metrics(case)) for case in chunk]
        if visit is not None:
            for case, image, result in zip(chunk, images, edited):
                visit(case, image, result)
        for case, image, result, values in zip(chunk, images, edited, metrics):
            if case.pairing == "inner_id":
                values.update(_inner_id(image, result, backbones))
            elif case.text and not isinstance(backbones.clip, NotComputed):
                values["CLIP-T"] = backbones.clip.text_score(result, case.text)
        _inter_id_batch([(image, result, values) for case, image, result, values in zip(chunk, images, edited, metrics)
                         if case.pairing == "inter_id"], backbones)
        scores.extend(CaseScore(case, result_path(case), values) for case, values in zip(chunk, metrics))
        logger.info("scored %d/%d cases", len(scores), len(cases))
    return scores


def _inner_id(images: CaseImages, edited: np.ndarray, backbones: Backbones) -> dict[str, float | None]:
    edited_crop, source_crop = (to_unit_tensor(crop) for crop in inner_id_crops(edited, images.source,
                                                                                images.source_mask))
    lpips = None if isinstance(backbones.lpips, NotComputed) else backbones.lpips(edited_crop, source_crop)
    return {"SSIM": ssim(edited_crop, source_crop), "PSNR": psnr(edited_crop, source_crop), "LPIPS": lpips}


def _inter_id_batch(items: list[tuple[CaseImages, np.ndarray, dict]], backbones: Backbones) -> None:
    if not items:
        return
    crops = [inter_id_crops(edited, images.source_mask, images.reference, images.reference_mask)
             for images, edited, _ in items]
    edited_crops, reference_crops = [pair[0] for pair in crops], [pair[1] for pair in crops]
    for metric, model in (("DINO-I", backbones.dino), ("CLIP-I", backbones.clip)):
        if isinstance(model, NotComputed):
            continue
        for (_, _, values), value in zip(items, model.image_scores(edited_crops, reference_crops)):
            values[metric] = value
