"""The custom layers of the networks, registered so that saved ``.keras`` models load."""
from __future__ import annotations

import keras
import tensorflow as tf

#: keras.applications' "caffe" preprocessing: the ImageNet channel means, in BGR order.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="advseg")
class ImageNetPreprocessing(keras.layers.Layer):
    """``keras.applications.<family>.preprocess_input`` for RGB images in [0, 255], as a layer.

    ``mode="caffe"`` (ResNet): RGB to BGR, then the ImageNet channel means subtracted.
    ``mode="tf"`` (MobileNetV2, Xception): scaled to [-1, 1]. ``mode="efficientnet_lite"``:
    (RGB - 127) / 128, the TF EfficientNet-Lite originals' normalisation. Being part of the
    model, it lets a saved generator take raw images.
    """

    MODES = ("caffe", "tf", "efficientnet_lite")

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"Unknown preprocessing mode {mode!r}; expected one of {self.MODES}.")
        self.mode = mode

    def call(self, images):
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "efficientnet_lite":
            return (images - 127.0) / 128.0
        return images[..., ::-1] - tf.constant(_CAFFE_MEAN_BGR, dtype=images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="advseg")
class ResizeLike(keras.layers.Layer):
    """Bilinearly resizes ``x`` [B, h, w, C] to the height and width of ``reference`` [B, H, W, ...].

    The resize runs in float32 whatever ``x``'s dtype: bilinear resizing returns float32 even
    for float16 input, and XLA rejects the gradient of that mixed op (float16 in, float32 out),
    which made mixed precision with ``jit_compile=True`` fail to compile.
    """

    def call(self, x, reference):
        resized = tf.image.resize(tf.cast(x, tf.float32), tf.shape(reference)[1:3], method="bilinear")
        return tf.cast(resized, x.dtype)

    def compute_output_shape(self, x_shape, reference_shape):
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[-1])


@keras.saving.register_keras_serializable(package="advseg")
class MaximumLeakyReLU(keras.layers.LeakyReLU):
    """``keras.layers.LeakyReLU`` computed as max(slope * x, x): the same values, and the same
    gradient (slope at 0 too), for a slope in [0, 1].

    Why not TensorFlow's LeakyRelu op: with oneDNN (TensorFlow's default on x86 CPUs) grappler's
    remapper fuses ZeroPadding2D + Conv2D + bias + LeakyRelu into one op even where training's
    LeakyReluGrad still reads the bias add's output, then fails on that graph ("remapper failed:
    INVALID_ARGUMENT: Mutation::Apply error", an error line in the notebook) and leaves the whole
    training step without its fusions. A maximum has no such fusion.
    """

    def __init__(self, negative_slope: float = 0.3, **kwargs):
        if not 0.0 <= negative_slope <= 1.0:
            raise ValueError(f"negative_slope={negative_slope}; expected a slope in [0, 1]")
        super().__init__(negative_slope=negative_slope, **kwargs)

    def call(self, inputs):
        return keras.ops.maximum(inputs * self.negative_slope, inputs)
