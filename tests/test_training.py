"""The training model, its optimisers, checkpoints and resume, on tiny networks and data.

Each test guards one way the method is easily got wrong (the README's "How it is built"): the semi loss
without gradient, updates leaking between G and D, ignored pixels counted, the semi loss on
too early, a resumed run that differs from an uninterrupted one, replicas that normalise by
their local pixel count.
"""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from advseg_utils.runner import BestGeneratorCheckpoint, StopOnNonFiniteLoss, restore_latest, train
from advseg_utils.metrics import mean_iou
from advseg_utils.schedules import paper_optimizers, poly_decay
from advseg_utils.runtime import configure_precision, get_strategy
from advseg_utils.method import METHOD_CLASSES, SemiSupervised
from test_iteration_oracle import record_applied_gradients

C = 3  # classes


def tiny_generator(kernel: int = 3, backbone: bool = False) -> keras.Model:
    inputs = keras.Input((None, None, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    features = layers.Conv2D(8, kernel, padding="same", activation="relu")
    x = (keras.Sequential([features], name="backbone") if backbone else features)(x)
    return keras.Model(inputs, layers.Conv2D(C, 1)(x), name="generator")


def tiny_discriminator(kernel: int = 3) -> keras.Model:
    inputs = keras.Input((None, None, C))
    x = layers.LeakyReLU(0.2)(layers.Conv2D(4, kernel, padding="same")(inputs))
    return keras.Model(inputs, layers.Conv2D(1, 1)(x), name="discriminator")


def make_model(mode="semi", seed=0, g_optimizer=None, d_optimizer=None, kernel=3, backbone=False, **kwargs):
    """A compiled training model of ``mode`` on tiny networks whose initial weights depend on ``seed`` only."""
    keras.utils.set_random_seed(seed)
    generator = tiny_generator(kernel, backbone)
    discriminator = None if mode == "baseline" else tiny_discriminator(kernel)
    kwargs = {"semi_start": 0, **kwargs}
    model = method_model(mode, generator, discriminator, **kwargs)
    g_optimizer = g_optimizer or keras.optimizers.SGD(0.05, momentum=0.9)
    d_optimizer = d_optimizer or (None if discriminator is None else keras.optimizers.Adam(0.01))
    model.compile(g_optimizer, d_optimizer)
    return model


def method_model(mode: str, generator, discriminator, **options):
    """The training model of ``mode`` (baseline, adversarial, semi), given the options it takes."""
    method = METHOD_CLASSES[mode]
    return method(generator, discriminator, num_classes=C, **{k: v for k, v in options.items() if k in method.options})


def make_batch(mode: str = "semi", seed: int = 0, size: int = 4, height: int = 8) -> dict:
    """A random batch whose labels hold 255 pixels (the same number in each half of the batch)."""
    rng = np.random.default_rng(seed)
    image = lambda: rng.uniform(0, 255, (size, height, height, 3)).astype("float32")  # noqa: E731

    def label():
        y = rng.integers(0, C, (size, height, height)).astype("int32")
        y[:, 0, :3] = 255
        return y

    batch = {"image": image(), "label": label()}
    if mode != "baseline":
        batch["d_label"] = label()
    if mode == "semi":
        batch["unlabeled_image"] = image()
    return batch


def weights(network: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in network.get_weights()]


def assert_weights_equal(a, b, atol=0.0):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def differs(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(a, b))


# --- the classic bugs ---------------------------------------------------------------------


def test_semi_loss_sends_gradient_into_the_generator():
    batch = make_batch()
    isolated = dict(lambda_adv=0.0, lambda_semi_adv=0.0, t_semi=0.0)  # every unlabeled pixel kept
    with_semi, without_semi = make_model(lambda_semi=1.0, **isolated), make_model(lambda_semi=0.0, **isolated)
    logs = with_semi.train_on_batch(batch, return_dict=True)
    without_semi.train_on_batch(batch)
    assert logs["loss_semi"] > 0 and logs["semi_ratio"] == 1.0
    assert differs(weights(with_semi.generator), weights(without_semi.generator))


def test_each_update_moves_only_its_own_network():
    """Both learning rates non-zero: G's step does not depend on D's optimiser nor D's on G's,
    and each is its own optimiser's step alone (plain SGD: twice the rate, twice the step)."""
    batch = make_batch()

    def steps(g_rate, d_rate):
        model = make_model(g_optimizer=keras.optimizers.SGD(g_rate), d_optimizer=keras.optimizers.SGD(d_rate))
        g_before, d_before = weights(model.generator), weights(model.discriminator)
        model.train_on_batch(batch)
        g_step = [after - before for after, before in zip(weights(model.generator), g_before)]
        return g_step, [after - before for after, before in zip(weights(model.discriminator), d_before)]

    g_step, d_step = steps(0.05, 0.01)
    g_step_other_d_rate, d_step_twice = steps(0.05, 0.02)
    g_step_twice, d_step_other_g_rate = steps(0.1, 0.01)
    assert_weights_equal(g_step_other_d_rate, g_step)
    assert_weights_equal(d_step_other_g_rate, d_step)
    for once, twice in [(g_step, g_step_twice), (d_step, d_step_twice)]:
        assert all(np.abs(step).max() > 1e-6 for step in once)
        assert_weights_equal(twice, [2 * step for step in once], atol=1e-6)


def test_discriminator_loss_moves_only_the_discriminator():
    """D judges G's (attached) maps, so D's loss depends on G's weights; the trainer must still
    send it to D alone: doubling D's loss doubles D's gradient and leaves G's unchanged."""

    class DoubledDiscriminatorLoss(SemiSupervised):
        def losses(self, batch):
            losses, logs = super().losses(batch)
            return {**losses, "discriminator": 2.0 * losses["discriminator"]}, logs

    batch = make_batch()

    def applied_gradients(method):
        keras.utils.set_random_seed(0)
        model = method(tiny_generator(), tiny_discriminator(), num_classes=C, semi_start=0)
        model.compile(keras.optimizers.SGD(0.05), keras.optimizers.SGD(0.01))
        applied = {
            "g": record_applied_gradients(model.g_optimizer, model.generator.trainable_variables),
            "d": record_applied_gradients(model.d_optimizer, model.discriminator.trainable_variables),
        }
        model.train_on_batch(batch)
        return {name: [np.array(g) for g in grads] for name, grads in applied.items()}

    plain, doubled = applied_gradients(SemiSupervised), applied_gradients(DoubledDiscriminatorLoss)
    assert_weights_equal(doubled["g"], plain["g"], atol=1e-7)
    assert_weights_equal(doubled["d"], [2 * g for g in plain["d"]], atol=1e-6)
    assert all(np.abs(g).max() > 1e-6 for g in plain["d"])
    model = make_model()  # and D's loss does depend on G's weights: only the trainer keeps it from G
    with tf.GradientTape() as tape:
        d_loss = model.losses(batch)[0]["discriminator"]
    assert all(g is not None for g in tape.gradient(d_loss, model.generator.trainable_variables))


def test_all_lambdas_zero_is_exactly_the_baseline_step():
    batch = make_batch()
    baseline = make_model("baseline")
    zero = make_model("semi", lambda_adv=0.0, lambda_semi_adv=0.0, lambda_semi=0.0)
    assert_weights_equal(weights(baseline.generator), weights(zero.generator))
    baseline.train_on_batch({"image": batch["image"], "label": batch["label"]})
    zero.train_on_batch(batch)
    assert_weights_equal(weights(zero.generator), weights(baseline.generator))


def test_ignored_pixels_do_not_count_in_the_labeled_adversarial_loss():
    model = make_model("adversarial", kernel=1)  # 1x1 networks: a pixel's change stays in that pixel
    batch = make_batch("adversarial")
    ignored = batch["label"] == 255

    def loss_adv(images):
        return float(model.losses({**batch, "image": images})[1]["loss_adv"])

    changed_where_ignored = np.where(ignored[..., None], 255.0 - batch["image"], batch["image"])
    changed_where_labeled = np.where(ignored[..., None], batch["image"], 255.0 - batch["image"])
    assert loss_adv(changed_where_ignored) == loss_adv(batch["image"])
    assert loss_adv(changed_where_labeled) != loss_adv(batch["image"])


def test_semi_loss_is_off_before_semi_start_and_on_from_it_without_retracing():
    traces = []

    class CountingSemiSupervised(SemiSupervised):
        def train_step(self, data):
            traces.append(1)  # runs once per trace, not per step
            return super().train_step(data)

    def model(lambda_semi):
        keras.utils.set_random_seed(0)
        m = CountingSemiSupervised(
            tiny_generator(), tiny_discriminator(), num_classes=C, semi_start=2,
            lambda_semi=lambda_semi, lambda_adv=0.0, lambda_semi_adv=0.0, t_semi=0.0,
        )  # fmt: skip
        m.compile(keras.optimizers.SGD(0.05), keras.optimizers.Adam(0.01))
        return m

    batch = make_batch()
    semi, no_semi = model(1.0), model(0.0)
    for iteration in range(3):
        logs = semi.train_on_batch(batch, return_dict=True)
        no_semi.train_on_batch(batch)
        same = not differs(weights(semi.generator), weights(no_semi.generator))
        assert same == (iteration < 2)
        assert (logs["loss_semi"] > 0) == (iteration >= 2)
    assert len(traces) == 2  # one trace per model: semi_start switches inside the compiled step


def test_head_learning_rate_multiplier_gives_the_head_ten_times_the_update():
    batch = make_batch("baseline")

    def update(multiplier):
        model = make_model("baseline", backbone=True, head_lr_multiplier=multiplier, weight_decay=5e-4)
        before = weights(model.generator)
        model.train_on_batch(batch)
        return [after - b for after, b in zip(weights(model.generator), before)]

    tenfold, plain = update(10.0), update(1.0)
    backbone_size = len(make_model("baseline", backbone=True).generator.get_layer("backbone").get_weights())
    for index, (x, y) in enumerate(zip(tenfold, plain)):
        expected = y if index < backbone_size else 10 * y  # backbone weights come first
        np.testing.assert_allclose(x, expected, rtol=1e-4, atol=1e-6)  # float32 steps of ~0.5
        assert np.abs(y).max() > 1e-4


def test_scaling_the_gradient_is_scaling_the_learning_rate_for_momentum_sgd():
    rng = np.random.default_rng(0)
    gradients = [tf.constant(rng.normal(size=5).astype("float32")) for _ in range(4)]
    w_scaled_gradient, w_scaled_rate = tf.Variable(tf.ones(5)), tf.Variable(tf.ones(5))
    scaled_gradient = keras.optimizers.SGD(poly_decay(0.01, 4), momentum=0.9)
    scaled_rate = keras.optimizers.SGD(poly_decay(0.1, 4), momentum=0.9)
    for g in gradients:
        scaled_gradient.apply([10 * (g + 5e-4 * w_scaled_gradient)], [w_scaled_gradient])
        scaled_rate.apply([g + 5e-4 * w_scaled_rate], [w_scaled_rate])
    np.testing.assert_allclose(w_scaled_gradient.numpy(), w_scaled_rate.numpy(), rtol=1e-6)


def test_gradient_accumulation_matches_one_full_batch():
    batch = make_batch(size=4)  # 255 pixels equal in each half; t_semi 0 keeps every pixel
    accumulated = make_model(accumulation_steps=2, t_semi=0.0)
    full = make_model(t_semi=0.0)
    # float(): older Keras returns 0-d arrays, which pytest.approx cannot compare inside a dict
    logs_accumulated = {k: float(v) for k, v in accumulated.train_on_batch(batch, return_dict=True).items()}
    logs_full = {k: float(v) for k, v in full.train_on_batch(batch, return_dict=True).items()}
    assert_weights_equal(weights(accumulated.generator), weights(full.generator), atol=1e-6)
    assert_weights_equal(weights(accumulated.discriminator), weights(full.discriminator), atol=1e-6)
    assert logs_accumulated == pytest.approx(logs_full, rel=1e-5)
    assert int(accumulated.iteration.numpy()) == 1 and int(accumulated.g_optimizer.iterations.numpy()) == 1


def test_missing_d_label_is_reported_by_name():
    batch = make_batch("adversarial")
    del batch["d_label"]
    with pytest.raises(ValueError, match="d_label"):
        make_model("adversarial").train_on_batch(batch)


# --- learning on data ---------------------------------------------------------------------


def colour_blocks(count: int, seed: int = 0, size: int = 16):
    """Images of random blocks coloured by class (0 dark, 1 red, 2 green), and their labels."""
    rng = np.random.default_rng(seed)
    colours = np.array([[30, 30, 30], [220, 40, 40], [40, 220, 40]], dtype="float32")
    labels = np.zeros((count, size, size), dtype="int32")
    for label in labels:
        for _ in range(3):
            top, left = rng.integers(0, size - 4, 2)
            label[top : top + rng.integers(3, 9), left : left + rng.integers(3, 9)] = rng.integers(1, C)
    images = colours[labels] + rng.normal(0, 10, (count, size, size, 3)).astype("float32")
    return images, labels


def test_overfits_a_handful_of_images():
    images, labels = colour_blocks(4)
    batch = {"image": images, "label": labels, "d_label": labels[::-1]}
    train_stream = tf.data.Dataset.from_tensors(batch).repeat()
    evaluation = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(1)
    model = make_model("adversarial", g_optimizer=keras.optimizers.Adam(0.05))
    before = model.evaluate(evaluation, verbose=0, return_dict=True)["mean_iou"]
    model.fit(train_stream, steps_per_epoch=40, epochs=1, verbose=0, shuffle=False)
    after = model.evaluate(evaluation, verbose=0, return_dict=True)["mean_iou"]
    assert after > 0.9 and after > before + 0.3


# --- resumable training -------------------------------------------------------------------


def stream_of(batches: list[dict], nan_from: int | None = None):
    """make_dataset(step) for train(): batch ``step % len(batches)``, NaN images from ``nan_from``."""
    stacked = {key: np.stack([b[key] for b in batches]) for key in batches[0]}

    def make_dataset(step):
        def batch_at(i):
            batch = {key: tf.gather(value, i % len(batches)) for key, value in stacked.items()}
            if nan_from is not None:
                batch["image"] = tf.where(i >= nan_from, np.nan, batch["image"])
            return batch

        return tf.data.Dataset.range(step, 10**9).map(batch_at)

    return make_dataset


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    make_dataset = stream_of([make_batch(seed=s) for s in range(3)])
    options = dict(semi_start=3, lambda_semi=1.0, t_semi=0.3)  # the semi loss starts after the resume
    train(make_model(**options), make_dataset, 2, str(tmp_path / "run"), checkpoint_every=2, verbose=0)
    resumed = make_model(seed=1, **options)  # fresh objects, other initial weights
    history = train(resumed, make_dataset, 4, str(tmp_path / "run"), checkpoint_every=2, verbose=0)
    uninterrupted = make_model(**options)
    train(uninterrupted, make_dataset, 4, str(tmp_path / "other"), checkpoint_every=2, verbose=0)

    assert int(resumed.iteration.numpy()) == 4 and len(history.history["loss"]) == 1
    for part in ("generator", "discriminator"):
        a, b = getattr(resumed, part), getattr(uninterrupted, part)
        assert_weights_equal(weights(a), weights(b), atol=1e-6)
    for part in ("g_optimizer", "d_optimizer"):  # momentum, Adam moments and iteration counters
        a, b = getattr(resumed, part).variables, getattr(uninterrupted, part).variables
        assert_weights_equal([np.array(v) for v in a], [np.array(v) for v in b], atol=1e-6)
    assert tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-4")


def test_training_to_the_end_again_does_nothing(tmp_path):
    make_dataset = stream_of([make_batch("baseline")])
    train(make_model("baseline"), make_dataset, 2, str(tmp_path), checkpoint_every=2, verbose=0)
    again = make_model("baseline", seed=1)
    assert train(again, make_dataset, 2, str(tmp_path), checkpoint_every=2, verbose=0).history == {}
    assert int(again.iteration.numpy()) == 2


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    make_dataset = stream_of([make_batch(seed=s) for s in range(2)], nan_from=2)
    with pytest.raises(FloatingPointError, match="(?i)nan.*ckpt-2"):
        train(make_model(), make_dataset, 6, str(tmp_path), checkpoint_every=2, verbose=0)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
    restored = make_model(seed=1)
    assert restore_latest(restored, str(tmp_path)) == 2
    assert all(np.isfinite(w).all() for w in weights(restored.generator))


def test_a_nan_loss_is_reported_by_name():
    with pytest.raises(FloatingPointError, match="loss_semi is nan after iteration 7"):
        callback = StopOnNonFiniteLoss()
        callback.set_model(make_model())
        callback.model.iteration.assign(7)
        callback.on_train_batch_end(0, {"loss_seg": 0.5, "loss_semi": float("nan")})


def test_an_unwritable_checkpoint_directory_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")

    def make_dataset(step):
        raise AssertionError("training started")

    model = make_model()
    with pytest.raises(PermissionError, match="a_file"):
        train(model, make_dataset, 2, str(blocker / "checkpoints"), checkpoint_every=1, verbose=0)
    assert int(model.iteration.numpy()) == 0


def test_train_validates_keeps_the_best_generator_and_writes_logs(tmp_path):
    images, labels = colour_blocks(2, seed=1, size=12)
    whole_images = [  # two sizes, one image per batch
        {"image": images[i : i + 1, :h, :w], "label": labels[i : i + 1, :h, :w]}
        for i, (h, w) in enumerate([(12, 9), (10, 12)])
    ]
    validation = tf.data.Dataset.from_generator(
        lambda: iter(whole_images),
        output_signature={
            "image": tf.TensorSpec([1, None, None, 3], tf.float32),
            "label": tf.TensorSpec([1, None, None], tf.int32),
        },
    ).apply(tf.data.experimental.assert_cardinality(len(whole_images)))
    make_dataset = stream_of([make_batch("adversarial", seed=s) for s in range(2)])
    model = make_model("adversarial")
    history = train(
        model, make_dataset, 4, str(tmp_path / "ckpt"), checkpoint_every=2, validation_data=validation,
        validate_every=2, verbose=0,
    )  # fmt: skip
    best_path = str(tmp_path / "ckpt" / "best_generator.keras")
    score = json.loads(open(best_path + ".json").read())
    assert score["mean_iou"] == pytest.approx(max(history.history["val_mean_iou"]))
    best = keras.saving.load_model(best_path)
    predictions = [np.argmax(best.predict(b["image"], verbose=0), -1) for b in whole_images]
    truths = np.concatenate([b["label"].ravel() for b in whole_images])
    predicted = np.concatenate([p.ravel() for p in predictions])
    assert mean_iou(truths, predicted, C) == pytest.approx(score["mean_iou"], abs=1e-6)


def test_log_dir_gets_tensorboard_logs(tmp_path):
    pytest.importorskip("tensorboard")
    make_dataset = stream_of([make_batch("baseline")])
    model, log_dir = make_model("baseline"), str(tmp_path / "logs")
    train(model, make_dataset, 2, str(tmp_path / "ckpt"), checkpoint_every=1, log_dir=log_dir, verbose=0)
    assert os.listdir(tmp_path / "logs" / "train")


def test_best_generator_checkpoint_resumes_its_best_score(tmp_path):
    path = str(tmp_path / "best.keras")
    with open(path + ".json", "w") as f:
        json.dump({"step": 2, "mean_iou": 0.99}, f)
    callback = BestGeneratorCheckpoint(None, path, every_n_steps=2)
    callback.set_model(make_model("baseline"))
    callback.on_train_begin()
    assert callback.best == 0.99


# --- optimisers and schedules ---------------------------------------------------------------


def test_paper_optimizers_follow_the_poly_schedule():
    g_optimizer, d_optimizer = paper_optimizers(total_steps=100)
    assert isinstance(g_optimizer, keras.optimizers.SGD) and g_optimizer.momentum == 0.9
    assert (d_optimizer.beta_1, d_optimizer.beta_2) == (0.9, 0.99)
    for step, factor in [(0, 1.0), (50, 0.5**0.9), (100, 0.0)]:
        g_optimizer.iterations.assign(step)
        d_optimizer.iterations.assign(step)
        assert float(g_optimizer.learning_rate) == pytest.approx(2.5e-4 * factor, rel=1e-5, abs=1e-12)
        assert float(d_optimizer.learning_rate) == pytest.approx(1e-4 * factor, rel=1e-5, abs=1e-12)


# --- devices and precision -----------------------------------------------------------------


def test_get_strategy_is_the_default_strategy_on_one_cpu():
    strategy = get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert not isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.TPUStrategy))


def test_mixed_float16_adds_loss_scaling_and_keeps_losses_float32():
    try:
        assert configure_precision("mixed_float16") == "mixed_float16"
        model = make_model()
        assert isinstance(model.g_optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(model.d_optimizer, keras.optimizers.LossScaleOptimizer)
        losses, _ = model.losses(make_batch())
        assert losses["generator"].dtype == tf.float32 and losses["discriminator"].dtype == tf.float32
        logs = model.train_on_batch(make_batch(), return_dict=True)
        assert all(np.isfinite(v) for v in logs.values())
    finally:
        configure_precision("float32")
    assert configure_precision("auto") == "float32"  # this CPU-only machine


TWO_REPLICAS = textwrap.dedent(
    """
    import json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    sys.path.insert(0, sys.argv[1])
    from test_training import make_batch, make_model, weights

    batch = make_batch(size=4)
    batch["label"][2:, :4] = 255  # the second replica's half has far fewer labeled pixels
    batch["d_label"][:2, 4:] = 255
    stream = tf.data.Dataset.from_tensors(batch).repeat()
    results = {}
    for name, strategy in [("one", tf.distribute.get_strategy()),
                           ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
        with strategy.scope():
            model = make_model(t_semi=0.43, lambda_semi=1.0, lambda_adv=0.5, lambda_semi_adv=0.5)
        history = model.fit(stream, steps_per_epoch=2, epochs=1, verbose=0)
        results[name] = {
            "replicas": strategy.num_replicas_in_sync,
            "weights": [w.tolist() for w in weights(model.generator) + weights(model.discriminator)],
            "logs": {k: v[-1] for k, v in history.history.items()},
        }
    print(json.dumps(results))
    """
)


def test_two_replicas_train_exactly_like_one():
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS, tests_dir], capture_output=True, text=True, timeout=300, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    one, two = results["one"], results["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    as_arrays = lambda ws: [np.array(w) for w in ws]  # noqa: E731
    assert_weights_equal(as_arrays(two["weights"]), as_arrays(one["weights"]), atol=1e-6)
    assert two["logs"] == pytest.approx(one["logs"], rel=1e-5)
    assert 0 < one["logs"]["semi_ratio"] < 1  # the confident-pixel count differs between replicas


def test_traced_step_builds_one_backward_pass_through_g():
    """No dead backward pass through G: as traced, before TensorFlow prunes anything, the
    semi-supervised step holds one filter gradient per convolution G runs (G on two batches). A
    tape shared by both networks would also build, for D's loss, a second backward pass through
    G that nothing uses (it cost 2.7x the tracing time on ResNet-50: benchmarks/README.md)."""
    model = make_model()
    batch = {key: tf.constant(value) for key, value in make_batch().items()}
    graph = tf.function(model.train_step).get_concrete_function(batch).graph

    def count(op_type):
        return sum(op.type == op_type and model.generator.name in op.name for op in graph.get_operations())

    assert count("Conv2D") == 4  # two convolutions, two batches
    assert count("Conv2DBackpropFilter") == count("Conv2D")
