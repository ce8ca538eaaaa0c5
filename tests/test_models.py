"""Tests of the generators and discriminators (random weights, tiny inputs: no downloads)."""
import functools
import os
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from advseg_utils.runner import save_generator
from advseg_utils.models import (
    ImageNetPreprocessing,
    MaximumLeakyReLU,
    ResizeLike,
    WeightsUnavailableError,
    backbone_variables,
    build_backbone,
    build_discriminator,
    build_generator,
)
from advseg_utils.models.backbones import _atrous

NUM_CLASSES = 21

#: (backbone, head, output stride) of every generator built here; ResNet-101 only once, as the paper's.
MOBILENET = ("mobilenet_v2", "deeplabv3plus", 16)
PAPER = ("resnet101", "deeplabv2", 8)
CONFIGS = [
    MOBILENET,
    ("mobilenet_v2", "deeplabv3plus", 8),
    ("resnet50", "deeplabv3plus", 16),
    ("xception", "deeplabv3plus", 16),
    PAPER,
]


@functools.cache
def generator(backbone, head, output_stride):
    """Built once per configuration (call it with all three arguments, positionally)."""
    keras.utils.set_random_seed(0)
    return build_generator(NUM_CLASSES, backbone, head, weights=None, output_stride=output_stride)


@functools.cache
def original_application(name):
    """A keras.applications network as published (stride 32), random weights."""
    return getattr(keras.applications, name)(include_top=False, weights=None, input_shape=(None, None, 3))


def images(height, width, batch=1, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, height, width, 3)).astype("float32")


@pytest.mark.parametrize("config", CONFIGS, ids=["-".join(map(str, c)) for c in CONFIGS])
@pytest.mark.parametrize("size", [(33, 47), (64, 64)])
def test_generator_logits_have_the_input_size(config, size):
    logits = generator(*config)(images(*size))
    assert logits.shape == (1, *size, NUM_CLASSES)
    assert logits.dtype == "float32"


# Hand-computed from each network's padding (see backbones.py): high-level, then low-level size.
@pytest.mark.parametrize(
    "backbone, head, output_stride, size, expected_high, expected_low",
    [
        ("resnet50", "deeplabv3plus", 16, 321, 21, 81),
        ("resnet50", "deeplabv3plus", 16, 320, 20, 80),
        ("resnet101", "deeplabv2", 8, 321, 41, 81),
        ("mobilenet_v2", "deeplabv3plus", 16, 321, 20, 80),
        ("mobilenet_v2", "deeplabv3plus", 16, 320, 20, 80),
        ("mobilenet_v2", "deeplabv3plus", 8, 321, 40, 80),
        ("xception", "deeplabv3plus", 16, 321, 20, 79),
        ("xception", "deeplabv3plus", 16, 320, 20, 79),
    ],
)
def test_backbone_feature_sizes(backbone, head, output_stride, size, expected_high, expected_low):
    backbone_model = generator(backbone, head, output_stride).get_layer("backbone")
    low, high = backbone_model.compute_output_spec(keras.KerasTensor((1, size, size, 3)))
    assert high.shape[1:3] == (expected_high, expected_high)
    assert low.shape[1:3] == (expected_low, expected_low)


# Where the original stride-32 grid lies in the atrous feature map (MobileNetV2 pads only
# bottom/right, so its strided 3x3 convolutions are centred on odd positions).
@pytest.mark.parametrize(
    "backbone, application, output_stride, offset, size",
    [
        ("resnet50", "ResNet50", 16, 0, (65, 97)),
        ("mobilenet_v2", "MobileNetV2", 16, 1, (65, 97)),
        ("mobilenet_v2", "MobileNetV2", 8, 3, (65, 97)),
        ("xception", "Xception", 16, 0, (81, 113)),  # an odd-sized stride-16 map, see backbones.py
    ],
)
def test_atrous_backbone_computes_the_original_network_on_a_denser_grid(
    backbone, application, output_stride, offset, size
):
    original = original_application(application)
    atrous = generator(backbone, "deeplabv3plus", output_stride).get_layer("backbone")
    original.set_weights(atrous.get_weights())
    x = np.random.default_rng(0).uniform(-1, 1, (1, *size, 3)).astype("float32")
    expected = original(x).numpy()
    step = 32 // output_stride
    dense = atrous(x)[1].numpy()
    assert dense.shape[1] > expected.shape[1]
    np.testing.assert_allclose(dense[:, offset::step, offset::step], expected, atol=1e-5 * np.abs(expected).max())


def test_atrous_walk_crosses_operations_that_are_not_layers():
    """Keras 3.8 and 3.9 put cast operations between the layers of a mixed-precision network;
    here a keras.ops operation sits in the same place. Hand-computed for output stride 2: "down"
    (input stride 2) keeps its input's grid, same-padded instead of its ZeroPadding2D; "after"
    reads a map that lost stride 2, so it is dilated by 2."""
    image = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stem")(image)
    x = keras.layers.ZeroPadding2D(1, name="pad")(keras.ops.relu(x))
    down = keras.layers.Conv2D(4, 3, strides=2, padding="valid", name="down")(x)
    after = keras.layers.Conv2D(4, 3, padding="same", name="after")(down)
    atrous = _atrous(keras.Model(image, [down, after]), output_stride=2)
    table = {
        layer.name: (layer.strides, layer.dilation_rate, layer.padding)
        for layer in atrous.layers
        if isinstance(layer, keras.layers.Conv2D)
    }
    assert table == {
        "stem": ((2, 2), (1, 1), "same"),
        "down": ((1, 1), (1, 1), "same"),
        "after": ((1, 1), (2, 2), "same"),
    }
    assert atrous.get_layer("pad").padding == ((0, 0), (0, 0))
    assert atrous(np.zeros((1, 8, 8, 3), "float32"))[1].shape == (1, 4, 4, 4)


def test_mixed_precision_generator_is_atrous_like_the_hand_computed_table():
    """MobileNetV2 at output stride 8 (its depthwise convolutions, stride 2 in blocks 1, 3, 6
    and 13): stride 1 from block 6 on, dilated by 2 in blocks 7-13 and by 4 in blocks 14-16."""
    keras.config.set_dtype_policy("mixed_float16")
    try:
        backbone = build_generator(NUM_CLASSES, "mobilenet_v2", weights=None, output_stride=8).get_layer("backbone")
    finally:
        keras.config.set_dtype_policy("float32")
    table = {
        block: (backbone.get_layer(f"block_{block}_depthwise").strides[0],
                backbone.get_layer(f"block_{block}_depthwise").dilation_rate[0])
        for block in range(1, 17)
    }
    expected = {block: (2 if block in (1, 3) else 1, 1 if block <= 6 else 2 if block <= 13 else 4) for block in table}
    assert table == expected
    assert [backbone.get_layer(f"block_{b}_pad").padding for b in (6, 13)] == [((0, 0), (0, 0))] * 2
    assert backbone.get_layer("block_16_depthwise").compute_dtype == "float16"


def test_xception_refuses_output_stride_8():
    with pytest.raises(ValueError, match="block13_pool"):
        build_backbone("xception", weights=None, output_stride=8)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="'vgg16'"):
        build_generator(NUM_CLASSES, backbone="vgg16", weights=None)
    with pytest.raises(ValueError, match="'fcn'"):
        build_generator(NUM_CLASSES, head="fcn", weights=None)
    with pytest.raises(ValueError, match="output_stride 32"):
        build_generator(NUM_CLASSES, weights=None, output_stride=32)


def test_generator_parameter_counts():
    assert generator(*MOBILENET).count_params() == 4_427_717
    assert generator(*PAPER).count_params() == 44_206_548
    # The paper's classifier: four 3x3 convolutions 2048 -> 21 with bias on top of ResNet-101.
    backbone_params = generator(*PAPER).get_layer("backbone").count_params()
    assert backbone_params == 42_658_176
    assert 44_206_548 - backbone_params == 4 * (3 * 3 * 2048 * NUM_CLASSES + NUM_CLASSES)


@pytest.mark.parametrize("config", [MOBILENET, PAPER], ids=["deeplabv3plus", "deeplabv2"])
def test_backbone_variables_are_the_backbones_trainable_ones_and_not_the_heads(config):
    model = generator(*config)
    backbone = backbone_variables(model)
    backbone_ids = {id(v) for v in backbone}
    assert len(backbone_ids) == len(backbone) > 0
    assert backbone_ids == {id(v) for v in model.get_layer("backbone").trainable_variables}
    head = [v for v in model.trainable_variables if id(v) not in backbone_ids]  # what the 10x multiplier gets
    assert any(v.path.startswith("classifier") for v in head)
    assert not any("classifier" in v.path for v in backbone)


@pytest.mark.parametrize(
    "backbone, preprocess_input",
    [
        ("mobilenet_v2", keras.applications.mobilenet_v2.preprocess_input),
        ("resnet50", keras.applications.resnet50.preprocess_input),
        ("xception", keras.applications.xception.preprocess_input),
    ],
)
def test_preprocessing_matches_keras_applications(backbone, preprocess_input):
    x = images(5, 7)
    expected = preprocess_input(x.copy())
    preprocessing = generator(backbone, "deeplabv3plus", 16).get_layer("preprocessing")
    np.testing.assert_allclose(preprocessing(x), expected, rtol=1e-6, atol=1e-4)


def test_preprocessing_rejects_unknown_modes():
    with pytest.raises(ValueError, match="'torch'"):
        ImageNetPreprocessing("torch")


def test_resize_like_is_bilinear_to_the_reference_size():
    x = np.array([0.0, 2.0], dtype="float32").reshape(1, 1, 2, 1)
    resized = ResizeLike()(x, np.zeros((1, 1, 4, 5), "float32"))
    # Half-pixel centres: output pixels at 0.25, 0.75, 1.25, 1.75 of the input grid, edges clamped.
    np.testing.assert_allclose(resized.numpy().ravel(), [0.0, 0.5, 1.5, 2.0])


def test_generator_gradients_reach_every_trainable_variable():
    model = generator(*MOBILENET)
    weights = tf.constant(np.random.default_rng(1).normal(size=(2, 33, 47, NUM_CLASSES)), tf.float32)
    with tf.GradientTape() as tape:
        # Batch 2: with batch 1 the image-pooling branch's 1x1 map has no batch variance.
        loss = tf.reduce_sum(model(images(33, 47, batch=2), training=True) * weights)
    gradients = tape.gradient(loss, model.trainable_variables)
    zero = [v.path for v, g in zip(model.trainable_variables, gradients) if g is None or not np.any(g)]
    assert zero == []


@pytest.mark.filterwarnings("ignore:freeze_batchnorm=True with weights=None")
def test_freeze_batchnorm_keeps_backbone_statistics_and_trains_the_head():
    model = build_generator(NUM_CLASSES, "mobilenet_v2", weights=None, freeze_batchnorm=True)
    backbone = model.get_layer("backbone")
    backbone_bn = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    head_bn = model.get_layer("aspp_1x1_bn")
    before = [layer.moving_mean.numpy() for layer in backbone_bn + [head_bn]]

    model(images(33, 47, batch=2), training=True)

    after = [layer.moving_mean.numpy() for layer in backbone_bn + [head_bn]]
    for layer, old, new in zip(backbone_bn, before, after):
        np.testing.assert_array_equal(old, new, err_msg=layer.name)
        assert not layer.trainable
    assert not np.array_equal(before[-1], after[-1])  # the call really was in training mode
    bn_variable_ids = {id(v) for layer in backbone_bn for v in layer.weights}
    assert bn_variable_ids.isdisjoint(id(v) for v in backbone_variables(model))
    assert len(backbone_variables(model)) == len(backbone.trainable_variables) > 0


def test_a_saved_generator_reloads_with_its_single_input_and_identical_outputs(tmp_path):
    """Without warnings: Keras 3.10 reloaded a generator saved as Keras <= 3.10 writes it
    expecting [image], and warned "The structure of `inputs` doesn't match" on every call with
    one array."""
    model, path = generator(*MOBILENET), tmp_path / "generator.keras"
    save_generator(model, str(path))
    x = images(33, 47)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = keras.saving.load_model(path)
        outputs = loaded(x)
    assert isinstance(loaded.input, keras.KerasTensor) and loaded.input.name == "image"
    np.testing.assert_array_equal(outputs, model(x))
    assert loaded.get_layer("backbone").name == "backbone"
    assert sorted(os.listdir(tmp_path)) == ["generator.keras"]  # no temporary file left


def test_local_weights_file_is_loaded_into_the_backbone(tmp_path):
    path = tmp_path / "backbone.weights.h5"
    source = generator(*MOBILENET).get_layer("backbone")
    source.save_weights(path)
    loaded = build_generator(NUM_CLASSES, "mobilenet_v2", weights=path).get_layer("backbone")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 33, 47, 3)).astype("float32")
    for expected, actual in zip(source(x), loaded(x)):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_unfitting_or_missing_weights_files_are_named(tmp_path):
    wrong = tmp_path / "discriminator.weights.h5"
    build_discriminator(NUM_CLASSES).save_weights(wrong)
    with pytest.raises(ValueError, match=f"{wrong}.*does not fit the mobilenet_v2 backbone"):
        build_generator(NUM_CLASSES, "mobilenet_v2", weights=wrong)
    missing = tmp_path / "missing.weights.h5"
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist"):
        build_generator(NUM_CLASSES, "mobilenet_v2", weights=missing)


def test_imagenet_weights_are_requested_from_keras_applications(monkeypatch):
    calls = []
    real_application = keras.applications.MobileNetV2

    def fake_application(**kwargs):
        calls.append(kwargs)
        return real_application(**{**kwargs, "weights": None})

    monkeypatch.setattr(keras.applications, "MobileNetV2", fake_application)
    build_generator(NUM_CLASSES, "mobilenet_v2", weights="imagenet")
    assert len(calls) == 1
    assert calls[0]["weights"] == "imagenet"
    assert calls[0]["include_top"] is False


def test_a_failed_imagenet_download_names_the_backbones_that_work_offline(monkeypatch):
    def unreachable(**kwargs):  # what keras.utils.get_file raises when the weights host is unreachable
        raise Exception("URL fetch failure on https://weights.example/mobilenet_v2.h5: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.applications, "MobileNetV2", unreachable)
    with pytest.raises(WeightsUnavailableError, match="'mobilenet_v2'.*backbone='efficientnet_lite0'") as raised:
        build_generator(NUM_CLASSES, backbone="mobilenet_v2", weights="imagenet")
    assert "weights.example" in str(raised.value)  # the address that failed


def test_other_backbone_errors_are_not_taken_for_download_failures(monkeypatch):
    def broken(**kwargs):
        raise ValueError("input_shape must be static")

    monkeypatch.setattr(keras.applications, "MobileNetV2", broken)
    with pytest.raises(ValueError, match="input_shape must be static"):
        build_generator(NUM_CLASSES, backbone="mobilenet_v2", weights="imagenet")


def test_mixed_precision_outputs_are_float32():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_generator(NUM_CLASSES, "mobilenet_v2", weights=None)
        discriminator = build_discriminator(NUM_CLASSES)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("backbone").layers[1].compute_dtype == "float16"
    logits = model(images(33, 47))
    assert logits.dtype == "float32"
    assert discriminator(tf.nn.softmax(logits)).dtype == "float32"


def test_paper_discriminator_structure():
    model = build_discriminator(NUM_CLASSES)
    assert model.count_params() == 2_783_169
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [conv.filters for conv in convs] == [64, 128, 256, 512, 1]
    for conv in convs:
        assert (conv.kernel_size, conv.strides, conv.padding, conv.use_bias) == ((4, 4), (2, 2), "valid", True)
        assert conv.activation is keras.activations.linear
        padding = model.get_layer(f"{conv.name}_pad")
        assert padding.padding == ((1, 1), (1, 1))
    slopes = [layer.negative_slope for layer in model.layers if isinstance(layer, keras.layers.LeakyReLU)]
    np.testing.assert_allclose(slopes, [0.2] * 4)
    layer_types = {type(layer).__name__ for layer in model.layers}
    assert layer_types == {"InputLayer", "ZeroPadding2D", "Conv2D", "MaximumLeakyReLU", "ResizeLike"}  # no normalisation


@pytest.mark.parametrize(
    "variant, size, classifier_size",
    [
        ("paper", (41, 53), (1, 1)),
        ("paper", (321, 321), (10, 10)),
        ("small", (41, 53), (5, 6)),
        ("small", (321, 321), (40, 40)),
    ],
)
def test_discriminator_logits_have_the_input_size(variant, size, classifier_size):
    model = build_discriminator(NUM_CLASSES, variant)
    probabilities = tf.nn.softmax(np.random.default_rng(0).normal(size=(2, *size, NUM_CLASSES)).astype("float32"))
    logits = model(probabilities)
    assert logits.shape == (2, *size, 1)
    assert logits.dtype == "float32"
    classifier = keras.Model(model.input, model.get_layer("classifier").output)
    assert classifier(probabilities).shape[1:3] == classifier_size


def test_small_discriminator_structure():
    model = build_discriminator(NUM_CLASSES, "small")
    assert [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)] == [128, 256, 1]
    assert model.count_params() == (16 * NUM_CLASSES * 128 + 128) + (16 * 128 * 256 + 256) + (16 * 256 + 1)


def test_discriminator_gradients_and_saving(tmp_path):
    model = build_discriminator(NUM_CLASSES, "small")
    x = tf.nn.softmax(np.random.default_rng(0).normal(size=(1, 41, 53, NUM_CLASSES)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x) * np.random.default_rng(1).normal(size=(1, 41, 53, 1)))
    assert all(np.any(g) for g in tape.gradient(loss, model.trainable_variables))
    model.save(tmp_path / "discriminator.keras")
    np.testing.assert_array_equal(keras.saving.load_model(tmp_path / "discriminator.keras")(x), model(x))


def test_maximum_leaky_relu_has_the_values_and_gradients_of_leaky_relu():
    x = tf.constant([-3.0, -0.5, 0.0, 0.5, 3.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, keras_own = MaximumLeakyReLU(negative_slope=0.2)(x), keras.layers.LeakyReLU(negative_slope=0.2)(x)
    np.testing.assert_allclose(ours, [-0.6, -0.1, 0.0, 0.5, 3.0], rtol=1e-6)
    np.testing.assert_allclose(ours, keras_own)
    np.testing.assert_allclose(tape.gradient(ours, x), [0.2, 0.2, 0.2, 1.0, 1.0])  # slope at 0, as LeakyRelu's
    np.testing.assert_allclose(tape.gradient(ours, x), tape.gradient(keras_own, x))
    with pytest.raises(ValueError, match="negative_slope=1.5"):
        MaximumLeakyReLU(negative_slope=1.5)


#: A discriminator training step in a fresh process, whose stderr then holds TensorFlow's C++
#: log lines (the package import sets the notebooks' log level and hides the start-up lines).
DISCRIMINATOR_STEP = """
import advseg_utils, numpy as np, tensorflow as tf
from advseg_utils.models import build_discriminator
d = build_discriminator(3)
@tf.function
def step(x):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(d(x, training=True))
    return tape.gradient(loss, d.trainable_variables)
step(tf.nn.softmax(np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")))
print("stepped")
"""


def test_a_discriminator_training_step_logs_nothing_from_tensorflow_cpp():
    """Grappler's remapper failed on D's ZeroPadding2D + Conv2D + LeakyRelu gradient (oneDNN
    CPUs), printing "E... meta_optimizer.cc:...] remapper failed" into the notebooks."""
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    run = subprocess.run(
        [sys.executable, "-c", DISCRIMINATOR_STEP], capture_output=True, text=True, timeout=300,
        env={**env, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert run.returncode == 0 and "stepped" in run.stdout, run.stderr[-3000:]
    assert not re.findall(r"(?m)^[EWF]\d{4} .*$", run.stderr)


def test_freezing_the_batch_norms_of_a_random_backbone_warns():
    with pytest.warns(UserWarning, match="freeze_batchnorm=True with weights=None"):
        build_generator(3, "mobilenet_v2", weights=None, freeze_batchnorm=True)


def test_resize_like_gradient_compiles_with_xla_in_float16():
    """Mixed precision + jit_compile: XLA refused the gradient of a float16 bilinear resize
    (float16 in, float32 out), which broke DeepLabV3+'s training step under XLA on GPUs."""
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", dtype="mixed_float16")
    resize = ResizeLike(dtype="mixed_float16")
    x = tf.random.stateless_uniform((2, 5, 5, 3), seed=(1, 2))
    reference = tf.zeros((2, 9, 9, 1))
    conv.build(x.shape)

    @tf.function(jit_compile=True)
    def gradient():
        with tf.GradientTape() as tape:
            resized = resize(conv(x), reference)
            loss = tf.reduce_sum(tf.cast(resized, tf.float32) ** 2)
        return resized, tape.gradient(loss, conv.trainable_variables)

    resized, grads = gradient()
    assert resized.dtype == tf.float16 and resized.shape == (2, 9, 9, 4)
    assert all(g is not None and np.all(np.isfinite(g)) and np.any(g != 0) for g in grads)
