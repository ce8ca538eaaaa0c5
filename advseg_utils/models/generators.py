# Generated from notebooks/01_baseline.ipynb by tools/export_notebooks.py: edit the notebook, not this file.
"""Segmentation networks (the generator G): DeepLabV3+ or the paper's DeepLab-v2 head on an
ImageNet backbone, taking raw RGB images and returning logits at the input's own size."""
import os
import warnings

import keras

from advseg_utils.models.backbones import BACKBONES, build_backbone
from advseg_utils.models.layers import ImageNetPreprocessing, ResizeLike


def _deeplabv3plus(low_level, high_level, num_classes: int, output_stride: int):
    """DeepLabV3+ (Chen et al. 2018): atrous spatial pyramid pooling with image pooling, then a
    decoder that refines the upsampled result with the stride-4 features."""
    rates = [rate * 16 // output_stride for rate in (6, 12, 18)]
    branches = [_conv_bn_relu(high_level, 256, 1, "aspp_1x1")]
    branches += [_conv_bn_relu(high_level, 256, 3, f"aspp_rate{rate}", rate) for rate in rates]
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_image_pool")(high_level)
    pooled = _conv_bn_relu(pooled, 256, 1, "aspp_image_pool_conv")
    branches.append(ResizeLike(name="aspp_image_pool_resize")(pooled, high_level))
    x = _conv_bn_relu(keras.layers.Concatenate(name="aspp_concat")(branches), 256, 1, "aspp_projection")

    low_level = _conv_bn_relu(low_level, 48, 1, "decoder_low_level")
    x = ResizeLike(name="decoder_upsample")(x, low_level)
    x = keras.layers.Concatenate(name="decoder_concat")([x, low_level])
    x = _conv_bn_relu(x, 256, 3, "decoder_conv1")
    x = _conv_bn_relu(x, 256, 3, "decoder_conv2")
    return keras.layers.Conv2D(num_classes, 1, name="classifier")(x)


def _deeplabv2(low_level, high_level, num_classes: int, output_stride: int):
    """The paper's DeepLab-v2 classifier: four 3x3 convolutions with rates 6, 12, 18, 24 (the
    paper's, meant for output stride 8) on the last features, their logits summed."""
    logits = [
        keras.layers.Conv2D(
            num_classes, 3, padding="same", dilation_rate=rate,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), name=f"classifier_rate{rate}",
        )(high_level)
        for rate in (6, 12, 18, 24)
    ]
    return keras.layers.Add(name="classifier")(logits)


def _conv_bn_relu(x, filters: int, kernel_size: int, name: str, dilation_rate: int = 1):
    """Convolution (depthwise separable when 3x3, as in DeepLabV3+), batch norm, ReLU."""
    conv = keras.layers.SeparableConv2D if kernel_size > 1 else keras.layers.Conv2D
    x = conv(filters, kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


_HEADS = {"deeplabv3plus": _deeplabv3plus, "deeplabv2": _deeplabv2}


def build_generator(
    num_classes: int,
    backbone: str = "efficientnet_lite0",
    head: str = "deeplabv3plus",
    weights: str | os.PathLike | None = "imagenet",
    output_stride: int = 16,
    freeze_batchnorm: bool = False,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
) -> keras.Model:
    """G: float32 RGB images in [0, 255] [B, H, W, 3] -> float32 logits [B, H, W, num_classes],
    for any H and W (also under mixed precision).

    backbone: "efficientnet_lite0" (the default), "1" or "2" (ImageNet weights installed with a
    package, so they need no download), "mobilenet_v2", "resnet50", "resnet101" or "xception",
    a nested model named "backbone" (see :func:`backbone_variables`).
    head: "deeplabv3plus" (its image pooling needs batches of 2 or more in training, for batch
    norm), or "deeplabv2", the paper's classifier (with "resnet101" and output_stride=8 it is
    the paper's network).
    weights: "imagenet", None, or a local backbone weights file (for EfficientNet-Lite also a
    PyTorch ``.pth`` state dict, read safely: see advseg_utils.pth). Deliberately never weights
    trained on VOC segmentation: a generator that has already seen every training label makes
    the semi-supervised experiments' labeled fraction meaningless.
    output_stride: 16 or 8, the stride of the backbone's last features (see backbones.py).
    freeze_batchnorm: run the backbone's batch norms in inference mode (normalising with their
    moving statistics, which stay fixed) and leave their scale and offset untrained. This is
    *not* what the original code does: it freezes the scale and offset but calls
    ``model.train()``, so its batch norms normalise with each batch's statistics (and update
    their running ones). The default, False, is the closer of the two (batch statistics; the
    scale and offset also train).
    """
    if head not in _HEADS:
        raise ValueError(f"Unknown head {head!r}; expected one of {sorted(_HEADS)}.")
    if freeze_batchnorm and weights is None:
        warnings.warn(
            "freeze_batchnorm=True with weights=None keeps the backbone's batch norms at their initial "
            "statistics for the whole run; train them (freeze_batchnorm=False) when starting from scratch",
            stacklevel=2,
        )
    backbone_model = build_backbone(backbone, weights, output_stride, freeze_batchnorm)
    images = keras.Input(input_shape, name="image")
    preprocessing = ImageNetPreprocessing(BACKBONES[backbone].preprocessing, dtype="float32", name="preprocessing")
    low_level, high_level = backbone_model(preprocessing(images))
    logits = _HEADS[head](low_level, high_level, num_classes, output_stride)
    logits = ResizeLike(dtype="float32", name="logits")(logits, images)
    return keras.Model(images, logits, name=f"{head}_{backbone}")


def backbone_variables(generator: keras.Model) -> list[keras.Variable]:
    """The trainable variables of the generator's backbone (the head trains at 10x its rate)."""
    return list(generator.get_layer("backbone").trainable_variables)
