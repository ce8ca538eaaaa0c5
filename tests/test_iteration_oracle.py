"""One training iteration of each method (advseg_utils.method) against an oracle: the paper's iteration written out here.

The oracle (:func:`paper_iteration`) states the paper's iteration in the plainest way: one
persistent tape; G, softmax and D run anew for every term that needs them; every mask built
here from the labels; cross-entropy and BCE written from their formulas; weight decay as
0.5 * wd * |w|^2 in G's loss; the head's gradient times ``head_lr_multiplier``. The methods
compute the same iteration differently (one D evaluation per map, each network's loss
differentiated with respect to its own weights only, the library's loss functions), so agreement to float32
precision pins every term. The gradients compared are the ones the method hands to each
optimiser's ``apply`` inside its compiled ``train_step``, recorded there.

Every term is made a visible share of its network's gradient (asserted in
``test_every_term_is_a_visible_share_of_the_gradient``), so a term dropped or changed cannot
hide under the float32 tolerance.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from advseg_utils.method import METHOD_CLASSES

C, SIZE, BATCH, IGNORE = 3, 8, 4, 255
# Large weights, so that every term moves the gradients (see the shares test), and unequal ones,
# so that a weight used in the wrong place shows.
SETTINGS = dict(lambda_adv=5.0, lambda_semi_adv=3.0, lambda_semi=0.3, weight_decay=0.05, head_lr_multiplier=10.0)
MODES = ("semi_after_start", "semi_before_start", "adversarial", "baseline")  # fullest first: tests/mutations stops sooner
# Logs of the paper's iteration; a method may log more (diagnostics), which are not compared.
LOSS_LOGS = ("loss", "loss_seg", "loss_adv", "loss_semi_adv", "loss_semi", "loss_d", "d_acc_real", "d_acc_fake", "semi_ratio")


# --- tiny networks and a batch -------------------------------------------------------------------


def networks(seed: int = 0) -> tuple[keras.Model, keras.Model]:
    """G (two 3x3 convolutions in a nested "backbone", a 1x1 head) and D (two 3x3 convolutions)."""
    keras.utils.set_random_seed(seed)
    images = keras.Input((None, None, 3))
    backbone = keras.Sequential(
        [layers.Conv2D(6, 3, padding="same", activation="relu"), layers.Conv2D(6, 3, padding="same", activation="relu")],
        name="backbone",
    )
    features = backbone(layers.Rescaling(1 / 127.5, offset=-1)(images))
    generator = keras.Model(images, layers.Conv2D(C, 1, name="head")(features), name="generator")
    maps = keras.Input((None, None, C))
    hidden = layers.LeakyReLU(0.2)(layers.Conv2D(6, 3, padding="same")(maps))
    discriminator = keras.Model(maps, layers.Conv2D(1, 3, padding="same")(hidden), name="discriminator")
    return generator, discriminator


def make_batch(mode: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Labels with 255 pixels, more in the second half of the batch than in the first (so that
    the micro-batches of ``accumulation_steps=2`` count different numbers of pixels); unlabeled
    images darker than the labeled ones, so that D sees two different kinds of fake map."""
    rng = np.random.default_rng(seed)

    def images(brightest=255):
        return rng.uniform(0, brightest, (BATCH, SIZE, SIZE, 3)).astype("float32")

    def labels():
        y = rng.integers(0, C, (BATCH, SIZE, SIZE)).astype("int32")
        y[rng.uniform(size=y.shape) < np.linspace(0.1, 0.4, BATCH)[:, None, None]] = IGNORE
        return y

    batch = {"image": images(), "label": labels()}
    if mode != "baseline":
        batch["d_label"] = labels()
    if mode.startswith("semi"):
        batch["unlabeled_image"] = images(brightest=50)  # dark: G's maps, and so D's fake terms, differ
        batch["unlabeled_label"] = labels()  # known truth of the unlabeled images: must reach no gradient
    return batch


# --- the oracle ---------------------------------------------------------------------------------


def cross_entropy(logits, labels):
    """Mean over the pixels whose label is not 255 of -log softmax(logits)[label]."""
    counted = tf.cast(labels != IGNORE, tf.float32)
    picked = tf.one_hot(labels, C)  # 255 is out of range: an all-zero row, but masked anyway
    per_pixel = -tf.reduce_sum(picked * tf.nn.log_softmax(logits), axis=-1)
    return tf.reduce_sum(per_pixel * counted) / tf.reduce_sum(counted)


def bce(d_logits, target: float):
    """Per-pixel binary cross-entropy of D's logits [B, H, W, 1] against target 1 or 0."""
    z = d_logits[..., 0]
    return -tf.math.log_sigmoid(z) if target == 1.0 else -tf.math.log_sigmoid(-z)


def shown_to_d(probabilities, d_input: str):
    """What D sees of G's softmax: the softmax itself (the paper), or its arg-max as one-hot with
    the textbook straight-through gradient (the identity) back to the softmax."""
    if d_input == "softmax":
        return probabilities
    return probabilities + tf.stop_gradient(tf.one_hot(tf.argmax(probabilities, axis=-1), C) - probabilities)


def paper_iteration(
    generator, discriminator, batch, semi_on: bool, t_semi: float, drop=(), d_input="softmax", **settings
):
    """(G's gradients, D's gradients (None without D), logs) of one iteration of the paper.

    ``drop`` leaves terms out (to measure their share): "adv", "semi_adv", "semi",
    "weight_decay", "head_multiplier" for G; "fake_labeled", "fake_unlabeled", "real" for D.
    ``d_input="argmax"`` shows D G's arg-max instead of its softmax (:func:`shown_to_d`).
    """
    s = {**SETTINGS, **settings}
    keep = lambda term: term not in drop  # noqa: E731
    x_l, y_l = tf.constant(batch["image"]), tf.constant(batch["label"])
    labeled = tf.cast(y_l != IGNORE, tf.float32)
    logs = {}
    with tf.GradientTape(persistent=True) as tape:
        logits_l = generator(x_l, training=True)
        logs["loss_seg"] = cross_entropy(logits_l, y_l)
        objective = logs["loss_seg"]
        if discriminator is not None:
            # 2. adversarial loss: D(softmax(G(x_l))) against "real", over y_l's non-255 pixels
            d_on_labeled = discriminator(shown_to_d(tf.nn.softmax(logits_l), d_input), training=True)
            logs["loss_adv"] = tf.reduce_sum(bce(d_on_labeled, 1.0) * labeled) / tf.reduce_sum(labeled)
            objective += s["lambda_adv"] * logs["loss_adv"] * keep("adv")
        if "unlabeled_image" in batch:
            logits_u = generator(tf.constant(batch["unlabeled_image"]), training=True)
            # 3. unlabeled adversarial loss, every pixel
            d_on_unlabeled = discriminator(shown_to_d(tf.nn.softmax(logits_u), d_input), training=True)
            logs["loss_semi_adv"] = tf.reduce_mean(bce(d_on_unlabeled, 1.0))
            # 4. semi loss: argmax pseudo-labels where sigmoid(D) > T, constants
            confidence = tf.stop_gradient(tf.sigmoid(d_on_unlabeled[..., 0]))
            kept = confidence > t_semi
            pseudo = tf.where(kept, tf.argmax(tf.stop_gradient(logits_u), axis=-1, output_type=tf.int32), IGNORE)
            logs["semi_ratio"] = tf.reduce_mean(tf.cast(kept, tf.float32))
            logs["loss_semi"] = cross_entropy(logits_u, pseudo) * float(semi_on)
            objective += s["lambda_semi_adv"] * logs["loss_semi_adv"] * keep("semi_adv")
            objective += s["lambda_semi"] * logs["loss_semi"] * keep("semi")
        logs["loss"] = objective
        squares = tf.add_n([tf.reduce_sum(w**2) for w in generator.trainable_variables])
        g_total = objective + 0.5 * s["weight_decay"] * squares * keep("weight_decay")
        if discriminator is not None:
            # 6. D on detached predictions ("fake", 255 pixels of y_l out) and one-hot(y_gt) ("real")
            fake_sum = fake_count = correct_fake = 0.0
            if keep("fake_labeled"):
                d_fake_l = discriminator(tf.stop_gradient(shown_to_d(tf.nn.softmax(logits_l), d_input)))
                fake_sum += tf.reduce_sum(bce(d_fake_l, 0.0) * labeled)
                fake_count += tf.reduce_sum(labeled)
                correct_fake += tf.reduce_sum(tf.cast(d_fake_l[..., 0] <= 0, tf.float32) * labeled)
            if "unlabeled_image" in batch and keep("fake_unlabeled"):
                d_fake_u = discriminator(tf.stop_gradient(shown_to_d(tf.nn.softmax(logits_u), d_input)))
                fake_sum += tf.reduce_sum(bce(d_fake_u, 0.0))
                fake_count += tf.cast(tf.size(d_fake_u), tf.float32)
                correct_fake += tf.reduce_sum(tf.cast(d_fake_u[..., 0] <= 0, tf.float32))
            y_gt = tf.constant(batch["d_label"])
            real_pixels = tf.cast(y_gt != IGNORE, tf.float32)
            d_real = discriminator(tf.one_hot(y_gt, C))  # a 255 pixel: the all-zero vector
            real_mean = tf.reduce_sum(bce(d_real, 1.0) * real_pixels) / tf.reduce_sum(real_pixels)
            logs["loss_d"] = 0.5 * fake_sum / fake_count + 0.5 * real_mean * keep("real")
            logs["d_acc_fake"] = correct_fake / fake_count
            logs["d_acc_real"] = tf.reduce_sum(tf.cast(d_real[..., 0] > 0, tf.float32) * real_pixels) / tf.reduce_sum(
                real_pixels
            )
    in_backbone = {id(v) for v in generator.get_layer("backbone").trainable_variables}
    multiplier = s["head_lr_multiplier"] if keep("head_multiplier") else 1.0
    g_grads = [
        g * (1.0 if id(v) in in_backbone else multiplier)
        for g, v in zip(tape.gradient(g_total, generator.trainable_variables), generator.trainable_variables)
    ]
    d_grads = None if discriminator is None else tape.gradient(logs["loss_d"], discriminator.trainable_variables)
    return g_grads, d_grads, {name: float(value) for name, value in logs.items()}


def accumulated_paper_iteration(generator, discriminator, batch, steps: int, **options):
    """The original's ``iter_size``: the batch in ``steps`` equal parts, each normalised over its
    own pixels, gradients and logs averaged."""
    parts = [{key: np.split(value, steps)[i] for key, value in batch.items()} for i in range(steps)]
    results = [paper_iteration(generator, discriminator, part, **options) for part in parts]
    mean = lambda values: sum(values) / steps  # noqa: E731
    g_grads = [mean(g) for g in zip(*(r[0] for r in results))]
    d_grads = None if discriminator is None else [mean(g) for g in zip(*(r[1] for r in results))]
    return g_grads, d_grads, {name: mean([r[2][name] for r in results]) for name in results[0][2]}


# --- the methods, with what they apply recorded -------------------------------------------------


def record_applied_gradients(optimizer, variables) -> list[tf.Variable]:
    """Makes ``optimizer.apply`` also store the gradients it is given (in variables, so that it
    works inside the compiled train_step) and check it is given exactly ``variables``."""
    recorded = [tf.Variable(tf.zeros_like(v)) for v in variables]
    apply = optimizer.apply

    def recording_apply(grads, trainable_variables=None):
        assert [id(v) for v in trainable_variables] == [id(v) for v in variables]
        for slot, gradient in zip(recorded, grads):
            slot.assign(gradient)
        return apply(grads, trainable_variables)

    optimizer.apply = recording_apply
    return recorded


def semi_threshold(generator, discriminator, batch, d_input: str = "softmax") -> float:
    """A T_semi that keeps roughly half of the unlabeled pixels, in the middle of the widest gap
    between D's confidences there, so that no pixel's fate depends on float32 rounding."""
    confidence = tf.sigmoid(discriminator(shown_to_d(tf.nn.softmax(generator(batch["unlabeled_image"])), d_input)))
    values = np.sort(confidence.numpy().ravel())
    middle = values[len(values) // 4 : 3 * len(values) // 4]
    gap = int(np.argmax(np.diff(middle)))
    assert middle[gap + 1] - middle[gap] > 1e-5, "confidences too close together for a robust threshold"
    return float(middle[gap] + middle[gap + 1]) / 2


def method_model(mode: str, generator, discriminator, **options):
    """The training model of ``mode``, given the options it takes (the semi modes: SemiSupervised)."""
    method = METHOD_CLASSES[mode.partition("_")[0]]
    return method(generator, discriminator, num_classes=C, **{k: v for k, v in options.items() if k in method.options})


def mode_setup(mode: str):
    """(generator, discriminator or None, batch, semi_start, semi_on, t_semi) for one mode."""
    generator, discriminator = networks()
    batch = make_batch(mode)
    if mode == "baseline":
        discriminator = None
    t_semi = semi_threshold(generator, discriminator, batch) if mode.startswith("semi") else 0.2
    # The first iteration is iteration 0: off for semi_start=1, on for semi_start=0.
    semi_start, semi_on = (1, False) if mode == "semi_before_start" else (0, True)
    return generator, discriminator, batch, semi_start, semi_on, t_semi


def assert_gradients_equal(actual, expected, what: str):
    assert len(actual) == len(expected)
    scale = max(float(np.abs(g).max()) for g in expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(e), rtol=1e-4, atol=1e-5 * scale, err_msg=f"{what} gradient {index}"
        )


@pytest.mark.parametrize("accumulation_steps", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_one_iteration_equals_the_papers(mode, accumulation_steps):
    generator, discriminator, batch, semi_start, semi_on, t_semi = mode_setup(mode)
    expected_g, expected_d, expected_logs = accumulated_paper_iteration(
        generator, discriminator, batch, accumulation_steps, semi_on=semi_on, t_semi=t_semi
    )
    model = method_model(
        mode, generator, discriminator, t_semi=t_semi, semi_start=semi_start,
        accumulation_steps=accumulation_steps, **SETTINGS,
    )  # fmt: skip
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9), None if discriminator is None else keras.optimizers.Adam(1e-3)
    )
    applied_g = record_applied_gradients(model.g_optimizer, generator.trainable_variables)
    if discriminator is not None:
        applied_d = record_applied_gradients(model.d_optimizer, discriminator.trainable_variables)

    logs = model.train_on_batch(batch, return_dict=True)

    assert_gradients_equal(applied_g, expected_g, "G")
    if discriminator is not None:
        assert_gradients_equal(applied_d, expected_d, "D")
    assert set(expected_logs) == {name for name in LOSS_LOGS if name in logs}
    assert {name: float(logs[name]) for name in expected_logs} == pytest.approx(expected_logs, rel=1e-5, abs=1e-6)
    if mode.startswith("semi"):
        assert 0.25 <= expected_logs["semi_ratio"] <= 0.75


@pytest.mark.parametrize("mode", ["semi_after_start", "adversarial"])
def test_one_iteration_with_d_on_gs_argmax_equals_the_papers_with_a_straight_through_gradient(mode):
    generator, discriminator, batch, semi_start, semi_on, _ = mode_setup(mode)
    t_semi = semi_threshold(generator, discriminator, batch, "argmax") if mode.startswith("semi") else 0.2
    expected_g, expected_d, expected_logs = paper_iteration(
        generator, discriminator, batch, semi_on=semi_on, t_semi=t_semi, d_input="argmax"
    )
    softmax_g, _, _ = paper_iteration(generator, discriminator, batch, semi_on=semi_on, t_semi=t_semi)
    model = method_model(
        mode, generator, discriminator, t_semi=t_semi, semi_start=semi_start,
        discriminator_input="argmax", **SETTINGS,
    )  # fmt: skip
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), keras.optimizers.Adam(1e-3))
    applied_g = record_applied_gradients(model.g_optimizer, generator.trainable_variables)
    applied_d = record_applied_gradients(model.d_optimizer, discriminator.trainable_variables)

    logs = model.train_on_batch(batch, return_dict=True)

    assert_gradients_equal(applied_g, expected_g, "G")
    assert_gradients_equal(applied_d, expected_d, "D")
    assert {name: float(logs[name]) for name in expected_logs} == pytest.approx(expected_logs, rel=1e-5, abs=1e-6)
    # and it is another iteration than the paper's: D judged other maps
    assert max(float(np.abs(a - e).max()) for a, e in zip(expected_g, softmax_g)) > 1e-3


# Each term's share of its network's gradient: |grad - grad without the term| / |grad|, as
# measured (semi after semi_start): G: adv 0.33, semi_adv 0.22, semi 0.89, weight decay 0.47,
# head multiplier 0.87; D: fake labeled 0.09, fake unlabeled 0.12, real 2.8.
G_TERMS = ("adv", "semi_adv", "semi", "weight_decay", "head_multiplier")
D_TERMS = ("fake_labeled", "fake_unlabeled", "real")


def share(full, without) -> float:
    difference = np.sqrt(sum(float(tf.reduce_sum((a - b) ** 2)) for a, b in zip(full, without)))
    return difference / np.sqrt(sum(float(tf.reduce_sum(a**2)) for a in full))


def test_every_term_is_a_visible_share_of_the_gradient():
    generator, discriminator, batch, _, semi_on, t_semi = mode_setup("semi_after_start")
    options = dict(semi_on=semi_on, t_semi=t_semi)
    g_full, d_full, _ = paper_iteration(generator, discriminator, batch, **options)
    shares = {}
    for term in G_TERMS + D_TERMS:
        g_without, d_without, _ = paper_iteration(generator, discriminator, batch, drop=(term,), **options)
        shares[term] = share(g_full, g_without) if term in G_TERMS else share(d_full, d_without)
    assert min(shares.values()) > 0.05, shares
