"""The side-by-side benchmark's own logic without PyTorch: the FLOP counter on convolutions
counted by hand, the throughput summary, the GPU peak table; and, only where PyTorch is
installed (CI does not install it), one iteration of the re-stated original."""
import sys
from pathlib import Path

import pytest
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_vs_original  # noqa: E402
import flops  # noqa: E402


def conv_and_gradients(x, kernel, strides=1, dilations=1):
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        loss = tf.reduce_sum(tf.nn.convolution(x, kernel, strides=strides, padding="SAME", dilations=dilations))
    return loss, tape.gradient(loss, [x, kernel])


def test_conv_flops_counted_by_hand_forward_and_both_gradients():
    # 2 images of 8x8x3, a 3x3 convolution to 4 channels, stride 2, 'same': 4x4 outputs.
    # Forward: 2 FLOPs x (2*4*4*4 outputs) x (3*3*3 taps) = 6912; each gradient the same.
    x, kernel = tf.zeros([2, 8, 8, 3]), tf.zeros([3, 3, 3, 4])
    counts = flops.function_flops(lambda a, k: conv_and_gradients(a, k, strides=2), x, kernel)
    assert counts == {"Conv2D": 6912, "Conv2DBackpropInput": 6912, "Conv2DBackpropFilter": 6912}


def test_dilated_conv_is_counted_on_the_padded_grid_tensorflow_runs():
    # Rate 2 on a 7x7 map: SpaceToBatch pads to 12x12 (a multiple of the rate, 2 pixels of
    # 'same' padding a side), then a 'valid' 3x3 convolution on 4 grids of 6x6 gives 4x4x4 = 64
    # outputs per image instead of 49: 2 x 64 x 27 x 4 channels = 13824 FLOPs for one image.
    x, kernel = tf.zeros([1, 7, 7, 3]), tf.zeros([3, 3, 3, 4])
    counts = flops.function_flops(lambda a: tf.nn.convolution(a, kernel, padding="SAME", dilations=2), x)
    assert counts == {"Conv2D": 2 * 64 * 27 * 4}


def test_only_what_runs_is_counted():
    # The gradient with respect to the second convolution's input also builds the backward pass
    # of the convolutions with k1 in the traced graph (a tape differentiates everything it
    # recorded); nothing fetched uses it, so it does not run and is not counted. What runs: the
    # convolution that makes ``hidden`` and the second convolution's input gradient.
    x, k1, k2 = tf.zeros([1, 4, 4, 2]), tf.Variable(tf.zeros([1, 1, 2, 2])), tf.zeros([1, 1, 2, 2])

    def second_input_gradient(a):
        with tf.GradientTape() as tape:
            hidden = tf.stop_gradient(tf.nn.conv2d(a, k1, 1, "SAME"))
            tape.watch(hidden)
            loss = tf.reduce_sum(tf.nn.conv2d(hidden, k2, 1, "SAME")) + tf.reduce_sum(tf.nn.conv2d(a, k1, 1, "SAME"))
        return tape.gradient(loss, hidden)

    one_conv = 2 * 16 * 2 * 2
    concrete = tf.function(second_input_gradient).get_concrete_function(x)
    assert flops.graph_flops(concrete.graph)["Conv2DBackpropFilter"] >= one_conv  # built, dead
    assert flops.function_flops(second_input_gradient, x) == {"Conv2D": one_conv, "Conv2DBackpropInput": one_conv}


def test_summary_ratio_is_per_round_and_above_one_when_this_project_is_faster():
    figures = bench_vs_original.summarise({"advseg": [1.0, 2.0, 1.0], "original": [2.0, 3.0, 4.0]}, batch_size=2)
    assert figures["speed_ratio"] == {"median": 2.0, "min": 1.5, "max": 4.0}
    assert figures["advseg"]["images_per_s"] == 2.0 and figures["advseg"]["images_per_s_range"] == [1.0, 2.0]
    assert figures["original"]["images_per_s"] == pytest.approx(2 / 3)


def test_gpu_peak_by_name_and_precision():
    assert bench_vs_original.gpu_peak_tflops("NVIDIA H200", "mixed") == 989.4
    assert bench_vs_original.gpu_peak_tflops("NVIDIA H200", "float32") == 494.7
    assert bench_vs_original.gpu_peak_tflops("CPU", "mixed") is None


def test_original_iteration_runs_and_trains_only_what_the_original_trains():
    torch = pytest.importorskip("torch")
    from original_torch import OriginalTraining

    torch.manual_seed(0)
    training = OriginalTraining("semi", crop=33, num_classes=3)
    crop = torch.rand(1, 3, 33, 33) * 255
    labels = torch.randint(0, 3, (1, 33, 33))
    batch = {"image": crop, "label": labels, "d_label": labels, "unlabeled_image": crop}
    bn_scale = training.model.bn1.weight.clone()
    unused_branch = training.model.layer5.conv2d_list[3].weight.clone()
    d_weight = training.model_d.classifier.weight.clone()
    assert training.step(batch) > 0
    assert torch.equal(training.model.bn1.weight, bn_scale)  # batch norm's affine frozen
    assert torch.equal(training.model.layer5.conv2d_list[3].weight, unused_branch)  # 2 branches summed
    assert not torch.equal(training.model_d.classifier.weight, d_weight)  # D trained
