"""Tests of the EfficientNet-Lite backbones and their ImageNet weights, read offline from the
installed weights package (no network, no torch: the PyTorch reference is a committed fixture)."""
import functools
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from advseg_utils import build_generator, imagenet_class_names, imagenet_classifier, read_pth
from advseg_utils.models.efficientnet_lite import efficientnet_lite, imagenet_weights_file
from pth_writer import write_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = np.load(FIXTURES / "efficientnet_lite0_reference.npz")
LITE0 = "efficientnet_lite0"


@functools.cache
def classifier():
    return imagenet_classifier(LITE0)


@functools.cache
def plain_network():
    """EfficientNet-Lite0 as published (stride 32, no top), ImageNet weights."""
    return efficientnet_lite(LITE0, include_top=False, weights="imagenet")


@functools.cache
def generator(head, output_stride):
    return build_generator(11, backbone=LITE0, head=head, weights="imagenet", output_stride=output_stride)


@functools.cache
def lite0_state():
    return read_pth(imagenet_weights_file(LITE0))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_classifier_logits_equal_the_pytorch_reference(index):
    image = REFERENCE[f"image{index}"].astype("float32")[None]
    expected = REFERENCE[f"logits{index}"]
    logits = classifier()(image).numpy()[0]
    # float32 through 18 layers of convolutions: measured max difference ~1e-5 on logits of size ~10.
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_head_features_equal_the_pytorch_reference_pixel_by_pixel():
    """Catches padding put on the wrong side: logits average it away, the feature map does not."""
    image = (REFERENCE["image0"].astype("float32")[None] - 127.0) / 128.0
    features = plain_network()(image).numpy()[0]
    np.testing.assert_allclose(features, REFERENCE["features0"], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "photo, expected",
    [("grace_hopper", "military uniform"), ("chelsea", "Egyptian cat"), ("coffee", "espresso")],
)
def test_classifier_names_what_is_in_the_photo(photo, expected):
    image = np.asarray(Image.open(FIXTURES / "photos" / f"{photo}.jpg").convert("RGB"), dtype="float32")
    logits = classifier()(image[None]).numpy()[0]
    assert imagenet_class_names()[int(np.argmax(logits))] == expected


def test_class_names_are_the_thousand_imagenet_classes_in_order():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert (names[0], names[1], names[504], names[999]) == (
        "tench, Tinca tinca", "goldfish, Carassius auratus", "coffee mug", "toilet tissue, toilet paper, bathroom tissue",
    )


@pytest.mark.parametrize("head, output_stride", [("deeplabv3plus", 16), ("deeplabv2", 8)])
def test_atrous_backbone_computes_the_imagenet_network_on_a_denser_grid(head, output_stride):
    """Raw images through the generator's own preprocessing and its atrous backbone give the
    published network's features on the sub-grid (65 x 97: every map before stride 32 has odd
    size, so TF "same" padding is symmetric and the original grid starts at 0)."""
    model = generator(head, output_stride)
    x = np.random.default_rng(0).uniform(0, 255, (1, 65, 97, 3)).astype("float32")
    expected = plain_network()((x - 127.0) / 128.0).numpy()
    low, dense = (y.numpy() for y in model.get_layer("backbone")(model.get_layer("preprocessing")(x)))
    step = 32 // output_stride
    assert dense.shape[1:3] == ((65 - 1) // output_stride + 1, (97 - 1) // output_stride + 1)
    assert low.shape[1:] == (17, 25, 144)  # stride 4: the expanded input of the first stride-8 block
    np.testing.assert_allclose(dense[:, ::step, ::step], expected, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("head, output_stride", [("deeplabv3plus", 16), ("deeplabv2", 8)])
def test_generator_logits_have_the_input_size(head, output_stride):
    logits = generator(head, output_stride)(np.zeros((1, 33, 47, 3), "float32"))
    assert logits.shape == (1, 33, 47, 11) and logits.dtype == "float32"


@pytest.mark.parametrize("size, output_stride, expected_high", [(321, 16, 21), (321, 8, 41), (320, 16, 20)])
def test_backbone_feature_sizes(size, output_stride, expected_high):
    backbone = generator("deeplabv3plus" if output_stride == 16 else "deeplabv2", output_stride).get_layer("backbone")
    low, high = backbone.compute_output_spec(keras.KerasTensor((1, size, size, 3)))
    assert high.shape[1:3] == (expected_high,) * 2
    assert low.shape[1:3] == (-(-size // 4),) * 2


def test_generator_takes_a_pth_file_of_the_same_architecture(tmp_path):
    state = dict(lite0_state())
    state["_bn1.bias"] = state["_bn1.bias"] + 1.0  # so that the file's weights are told from the package's
    path = tmp_path / "finetuned.pth"
    write_state_dict(path, state)
    backbone = build_generator(11, backbone=LITE0, weights=path).get_layer("backbone")
    np.testing.assert_array_equal(backbone.get_layer("head_bn").beta.numpy(), state["_bn1.bias"])
    np.testing.assert_array_equal(
        backbone.get_layer("block3_depthwise_conv").kernel.numpy(),
        state["_blocks.3._depthwise_conv.weight"].transpose(2, 3, 0, 1),
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ("missing", r"missing tensors \['_blocks\.7\._project_conv\.weight'\]"),
        ("extra", r"unexpected tensors \['_blocks\.16\._bn2\.weight'\]"),
        ("reshaped", r"tensor _conv_head\.weight has shape \(1280, 320, 1, 2\), efficientnet_lite0 expects \(1280, 320, 1, 1\)"),
    ],
)
def test_a_pth_file_that_does_not_fit_is_named_with_the_tensor(tmp_path, change, message):
    state = dict(lite0_state())
    if change == "missing":
        del state["_blocks.7._project_conv.weight"]
    elif change == "extra":
        state["_blocks.16._bn2.weight"] = np.ones(320, np.float32)
    else:
        state["_conv_head.weight"] = np.zeros((1280, 320, 1, 2), np.float32)
    path = tmp_path / f"{change}.pth"
    write_state_dict(path, state)
    with pytest.raises(ValueError, match=message) as error:
        efficientnet_lite(LITE0, weights=path)
    assert str(path) in str(error.value)


def test_a_missing_pth_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nothing.pth'} does not exist"):
        build_generator(11, backbone=LITE0, weights=tmp_path / "nothing.pth")


def test_imagenet_weights_come_from_the_installed_package_without_network(monkeypatch):
    """No download: any attempt to open a socket fails the test."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("EfficientNet-Lite ImageNet weights must not touch the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert imagenet_weights_file(LITE0).name == "efficientnet-lite0-57934424.pth"
    model = efficientnet_lite(LITE0, include_top=True, weights="imagenet")
    np.testing.assert_array_equal(model.get_layer("predictions").bias.numpy(), lite0_state()["_fc.bias"])
    in_file = sum(v.size for k, v in lite0_state().items() if not k.endswith("num_batches_tracked"))
    assert model.count_params() == in_file == 4_694_024  # the count of the file's parameters


def test_the_default_backbone_is_lite0_with_its_packaged_imagenet_weights():
    default, lite0 = build_generator(11), build_generator(11, backbone=LITE0, weights="imagenet")
    assert [v.path for v in default.weights] == [v.path for v in lite0.weights]
    backbone, expected = default.get_layer("backbone"), lite0.get_layer("backbone")
    for actual, wanted in zip(backbone.weights, expected.weights):
        np.testing.assert_array_equal(actual.numpy(), wanted.numpy(), err_msg=actual.path)
