# Generated from notebooks/02_adversarial.ipynb by tools/export_notebooks.py: edit the notebook, not this file.
"""The fully convolutional discriminator D: a class-probability map in, one "is this a
ground-truth label map here?" logit per pixel out."""
import keras

from advseg_utils.models.layers import MaximumLeakyReLU, ResizeLike

#: Channels of the LeakyReLU convolutions before the 1-channel classifier.
_CHANNELS = {"paper": (64, 128, 256, 512), "small": (128, 256)}


def build_discriminator(num_classes: int, variant: str = "paper") -> keras.Model:
    """Probability maps [B, H, W, num_classes] -> float32 logits [B, H, W, 1], for any H and W.

    "paper": Hung et al.'s D, stride-32 logits upsampled to the input size, which must be at
    least 32 pixels. "small": 128- and 256-channel convolutions, then the classifier: stride-8
    logits, so finer confidence maps (inputs of at least 8 pixels).
    """
    if variant not in _CHANNELS:
        raise ValueError(f"Unknown discriminator variant {variant!r}; expected one of {sorted(_CHANNELS)}.")
    probabilities = keras.Input((None, None, num_classes), name="probabilities")
    x = probabilities
    for index, channels in enumerate(_CHANNELS[variant], start=1):
        x = _conv4x4_stride2(x, channels, f"conv{index}")
        x = MaximumLeakyReLU(negative_slope=0.2, name=f"conv{index}_leaky_relu")(x)
    logits = _conv4x4_stride2(x, 1, "classifier")
    logits = ResizeLike(dtype="float32", name="logits")(logits, probabilities)
    return keras.Model(probabilities, logits, name=f"discriminator_{variant}")


def _conv4x4_stride2(x, filters: int, name: str):
    """PyTorch's Conv2d(kernel_size=4, stride=2, padding=1): zero padding, then a 'valid' convolution."""
    x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, 4, strides=2, name=name)(x)
