"""The metrics against hand-computable cases and against the libraries they come from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from mimic_core.errors import ModelFileError
from mimic_core.evaluation.backbones import (
    ClipScorer,
    DinoEmbedder,
    NotComputed,
    _TensorFeatures,
    load_lpips,
    torchvision_features_for,
)
from mimic_core.evaluation.metrics import (
    PSNR_CAP_DB,
    cosine_score,
    psnr,
    ssim,
    to_unit_tensor,
)
from tests.evaluation_support import smooth_image, write_tiny_clip, write_tiny_dino

SSIM_C1 = (0.01 * 1.0) ** 2  # SSIM's luminance constant for data_range 1


def torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def random_images(seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(1, 3, size, size, generator=generator, dtype=torch.float64) for _ in range(2))


def test_identical_images_give_ssim_one_and_the_psnr_cap():
    image = to_unit_tensor(smooth_image(48, 64, 0))
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    assert psnr(image, image) == PSNR_CAP_DB


def test_a_constant_shift_gives_the_hand_computed_values():
    # Flat images: no variance, so SSIM is its luminance term alone; the MSE is the shift squared.
    dark = torch.full((1, 3, 32, 32), 0.5, dtype=torch.float64)
    light = dark + 0.1
    assert psnr(light, dark) == pytest.approx(20.0, abs=1e-5)
    expected = (2 * 0.5 * 0.6 + SSIM_C1) / (0.5**2 + 0.6**2 + SSIM_C1)
    assert ssim(light, dark) == pytest.approx(expected, abs=1e-9)


def test_gaussian_noise_gives_psnr_of_its_variance():
    sigma = 0.05
    generator = torch.Generator().manual_seed(3)
    clean = 0.25 + 0.5 * torch.rand(1, 3, 128, 128, generator=generator, dtype=torch.float64)
    noisy = clean + sigma * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    assert psnr(noisy, clean) == pytest.approx(10 * math.log10(1 / sigma**2), abs=0.1)
    assert ssim(noisy, clean) < ssim(clean + 0.5 * sigma * torch.randn(clean.shape, generator=generator,
                                                                          dtype=torch.float64), clean)


def test_ssim_and_psnr_are_torchmetrics_values():
    first, second = random_images(4)
    assert ssim(first, second) == float(structural_similarity_index_measure(first, second, data_range=1.0))
    assert psnr(first, second) == float(peak_signal_noise_ratio(first, second, data_range=1.0))


def test_to_unit_tensor_maps_uint8_to_zero_one():
    image = np.array([[[0, 128, 255]]], np.uint8)
    tensor = to_unit_tensor(image)
    assert tensor.shape == (1, 3, 1, 1)
    assert tensor.flatten().tolist() == [0.0, 128 / 255, 1.0]


def test_cosine_score_scale():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    scores = cosine_score(vectors, torch.tensor([[2.0, 0.0], [1.0, 0.0], [-3.0, -4.0]]))
    assert scores.tolist() == pytest.approx([100.0, 0.0, -100.0])


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return write_tiny_dino(root / "dino"), write_tiny_clip(root / "clip")


@pytest.fixture(scope="module")
def dino(tiny_backbones):
    return DinoEmbedder(tiny_backbones[0], torch.device("cpu"))


@pytest.fixture(scope="module")
def clip(tiny_backbones):
    return ClipScorer(tiny_backbones[1], torch.device("cpu"))


def test_dino_i_of_identical_images_is_100_and_of_others_less(dino):
    first, second = smooth_image(40, 70, 1), smooth_image(50, 30, 2)
    scores = dino.image_scores([first, first], [first.copy(), second])
    assert scores[0] == pytest.approx(100.0, abs=1e-4)
    assert scores[1] < 99.9


def test_dino_i_is_the_cosine_of_dinov2_class_tokens(dino, tiny_backbones):
    from transformers import AutoImageProcessor, Dinov2Model

    first, second = smooth_image(40, 70, 3), smooth_image(64, 64, 4)
    model, processor = Dinov2Model.from_pretrained(tiny_backbones[0]), AutoImageProcessor.from_pretrained(tiny_backbones[0])
    with torch.no_grad():
        tokens = model(**processor(images=[first, second], return_tensors="pt")).last_hidden_state
    cls = tokens[:, 0]  # the class token, after DINOv2's final layer norm
    expected = 100 * torch.nn.functional.cosine_similarity(cls[0], cls[1], dim=0).item()
    assert dino.image_scores([first], [second])[0] == pytest.approx(expected, abs=1e-4)


def test_clip_i_of_identical_images_is_100(clip):
    image = smooth_image(60, 45, 5)
    assert clip.image_scores([image], [image.copy()])[0] == pytest.approx(100.0, abs=1e-4)


def test_clip_i_matches_torchmetrics_clip_score_between_images(clip):
    from torchmetrics.functional.multimodal import clip_score

    pairs = [(smooth_image(60, 45, seed), smooth_image(33, 80, seed + 10)) for seed in range(6, 10)]
    ours = clip.image_scores([pair[0] for pair in pairs], [pair[1] for pair in pairs])
    assert all(0 < value < 99.9 for value in ours)  # inside the range where torchmetrics' clamp at 0 is idle
    for (first, second), value in zip(pairs, ours):
        with torch.no_grad():
            reference = clip_score(torch.from_numpy(first).permute(2, 0, 1), torch.from_numpy(second).permute(2, 0, 1),
                                   model_name_or_path=lambda: (clip.model, clip.processor))
        assert value == pytest.approx(float(reference), abs=1e-3)


def test_clip_t_is_100_cosine_of_image_and_text_clamped_at_zero(clip, tiny_backbones):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(tiny_backbones[1])
    processor = CLIPProcessor.from_pretrained(tiny_backbones[1])
    image, texts = smooth_image(50, 50, 11), ["a red shoe", "a knitted mug", "green grass"]
    expected_scores = []
    with torch.no_grad():
        image_features = _TensorFeatures(model).get_image_features(
            processor(images=[torch.from_numpy(image).permute(2, 0, 1)], return_tensors="pt")["pixel_values"])
        for text in texts:
            text_features = _TensorFeatures(model).get_text_features(**processor(text=[text], return_tensors="pt"))
            expected = max(100 * torch.nn.functional.cosine_similarity(image_features, text_features).item(), 0.0)
            assert clip.text_score(image, text) == pytest.approx(expected, abs=1e-3)
            expected_scores.append(expected)
    assert max(expected_scores) > 1  # not only clamped zeros


def test_missing_backbone_folder_is_an_error_not_a_silent_skip(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        DinoEmbedder(tmp_path / "nowhere", torch.device("cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="Cannot load CLIP"):
        ClipScorer(tmp_path / "empty", torch.device("cpu"))


def test_lpips_without_a_backbone_is_not_computed():
    result = load_lpips("alex", None, torch.device("cpu"))
    assert isinstance(result, NotComputed) and "--lpips-backbone" in result.reason


@pytest.mark.skipif(torchvision_importable(), reason="torchvision works here: LPIPS is computed (next tests)")
def test_lpips_without_torchvision_is_not_computed_and_says_why(tmp_path):
    weights = tmp_path / "alexnet.pth"
    weights.write_bytes(b"not read: torchvision is checked first")
    result = load_lpips("alex", weights, torch.device("cpu"))
    assert isinstance(result, NotComputed) and "torchvision" in result.reason


def test_torchvision_weights_fill_the_lpips_slices_by_layer_index(tmp_path):
    state = {"features.0.weight": torch.ones(2), "features.0.bias": torch.zeros(2), "features.3.weight": torch.full((3,), 2.0),
             "classifier.1.weight": torch.ones(1)}
    picked = torchvision_features_for(["slice1.0.weight", "slice1.0.bias", "slice2.3.weight"], state, tmp_path)
    assert picked.keys() == {"slice1.0.weight", "slice1.0.bias", "slice2.3.weight"}
    assert picked["slice2.3.weight"] is state["features.3.weight"]
    with pytest.raises(ModelFileError, match="features.6.weight"):
        torchvision_features_for(["slice3.6.weight"], state, tmp_path)


@pytest.fixture
def lpips_with_random_alexnet(tmp_path):
    if not torchvision_importable():
        pytest.skip("torchvision cannot be imported here, so LPIPS is not computed (tested above)")
    import torchvision

    torch.manual_seed(0)
    alexnet = torchvision.models.alexnet(weights=None)
    torch.save(alexnet.state_dict(), tmp_path / "alexnet.pth")
    return load_lpips("alex", tmp_path / "alexnet.pth", torch.device("cpu")), alexnet


def test_lpips_of_identical_images_is_zero(lpips_with_random_alexnet):
    scorer, _ = lpips_with_random_alexnet
    image = to_unit_tensor(smooth_image(64, 64, 12))
    assert scorer(image, image) == pytest.approx(0.0, abs=1e-7)


def test_lpips_is_torchmetrics_network_on_the_given_backbone(lpips_with_random_alexnet):
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    scorer, alexnet = lpips_with_random_alexnet
    reference = _NoTrainLpips(net="alex", pnet_rand=True)
    for index, layer in enumerate(alexnet.features):
        for part in reference.net.children():
            if str(index) in part._modules:
                part._modules[str(index)].load_state_dict(layer.state_dict())
    first, second = (to_unit_tensor(smooth_image(64, 64, seed)).float() for seed in (13, 14))
    assert scorer(first, second) > 0
    assert scorer(first, second) == pytest.approx(float(reference(first, second, normalize=True)), abs=1e-6)
