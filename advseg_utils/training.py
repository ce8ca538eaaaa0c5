"""The training model of Hung et al. (2018): one whole iteration in one compiled ``train_step``.

:class:`AdvSemiSeg` wraps a generator G (image -> per-pixel class logits) and an optional
discriminator D (probability map -> per-pixel "looks like ground truth" logit). What a step
does follows from the networks and the batch:

* baseline (``discriminator=None``): cross-entropy on ``{"image", "label"}``;
* adversarial (a discriminator, batches with ``"d_label"``): + adversarial loss, D's update;
* semi-supervised (batches with ``"unlabeled_image"`` too): + unlabeled adversarial loss and,
  from iteration ``semi_start`` on, the confident pseudo-label cross-entropy.

D only ever sees *detached* probability maps, so the D loss cannot reach G, and each
optimiser is given only its own network's variables, so neither update moves the other
network. G's adversarial gradient is the chain rule written out: the gradient of G's loss
with respect to D's input map (taken through D, whose weights receive nothing), pushed back
through the softmax into G. D thus runs once per map (three times in a semi-supervised step).

Build the networks, this model and ``compile`` under ``strategy.scope()`` when training on
several devices (:func:`~advseg_utils.runtime.get_strategy`); call
:func:`~advseg_utils.runtime.configure_precision` before building the
networks for mixed precision.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import keras
import tensorflow as tf

from advseg_utils import losses
from advseg_utils.cluster import worker_count
from advseg_utils.metrics import GlobalMean, MeanIoU
from advseg_utils.models import backbone_variables

# Everything a training step can report; each mode reports a subset.
LOG_NAMES = (
    "loss", "loss_seg", "loss_adv", "loss_semi_adv", "loss_semi",
    "loss_d", "d_acc_real", "d_acc_fake", "semi_ratio", "pseudo_acc_all", "pseudo_acc_kept",
)  # fmt: skip
#: What D can be shown of G's prediction: the paper's softmax maps, or their arg-max as one-hot.
DISCRIMINATOR_INPUTS = ("softmax", "argmax")


class IterationLosses(NamedTuple):
    """The losses of one iteration, as computed inside the caller's gradient tape.

    ``d_inputs`` are the detached probability maps D was applied to and ``g_outputs`` the
    same maps still attached to G: G's adversarial gradient flows from the first to the
    second. ``logs`` holds global (all-replica) values for reporting. ``g_adversarial`` is the
    part of ``g_loss`` that depends on D's inputs (its weighted adversarial terms; None without D).
    """

    g_loss: tf.Tensor
    d_loss: tf.Tensor | None
    d_inputs: list[tf.Tensor]
    g_outputs: list[tf.Tensor]
    logs: dict[str, tf.Tensor]
    g_adversarial: tf.Tensor | None = None


class AdvSemiSeg(keras.Model):
    """Adversarial / semi-supervised segmentation training (Hung et al., 2018, section 1).

    Args:
        generator: built Keras model, images [B, H, W, 3] (RGB 0..255) -> logits [B, H, W, C].
        discriminator: built Keras model, maps [B, H, W, C] -> logits [B, H, W, 1]; None trains
            the baseline.
        num_classes: C.
        lambda_adv, lambda_semi_adv, lambda_semi: weights of the labeled adversarial, the
            unlabeled adversarial and the semi-supervised losses.
        t_semi: D's confidence above which an unlabeled pixel's pseudo-label is used.
        semi_start: first iteration (0-based) at which the semi-supervised loss is on.
        ignore_label: label value excluded from every loss and metric.
        head_lr_multiplier: factor on the gradient of every G variable outside the nested
            layer named ``"backbone"`` (all of G is one group, factor 1, when there is no such
            layer). For SGD with momentum this is exactly a learning-rate multiplier (the update
            is linear in the gradient); Adam is invariant to it.
        weight_decay: coupled L2 weight decay on G, as PyTorch's ``SGD(weight_decay=...)``:
            ``weight_decay * w`` is added to G's gradient (before the head multiplier, so the
            head's decay also runs at the head's rate, as in the original's parameter groups).
        accumulation_steps: k > 1 splits each batch into k micro-batches, run one after the
            other, and applies the mean of their gradients: one iteration, k times less
            activation memory (the original's ``iter_size``; feed batches of k times the
            micro-batch size). Each micro-batch's losses are means over its own pixels.
        discriminator_input: what D sees of G's prediction. ``"softmax"`` (the paper's): G's
            probability maps. ``"argmax"``: G's arg-max as a one-hot map, like the ground truth,
            so that D cannot tell G's maps from labels by their softness alone
            (``benchmarks/what_d_sees.py`` measures whether it does); G's adversarial gradient
            with respect to that map is passed straight through to its softmax.

    ``fit`` logs (each mode the ones it has): ``loss`` (G's objective, without weight decay),
    ``loss_seg``, ``loss_adv``, ``loss_semi_adv``, ``loss_semi`` (the unweighted pseudo-label
    cross-entropy, 0 before ``semi_start``), ``loss_d``, ``d_acc_real`` and ``d_acc_fake`` (the
    share of pixels D classifies right), ``semi_ratio`` (the share of unlabeled pixels above
    ``t_semi``). When the semi-supervised batches carry the unlabeled images' true labels
    (``"unlabeled_label"``, as :meth:`VOCGen.semi_supervised` adds where the dataset has them),
    also ``pseudo_acc_all`` and ``pseudo_acc_kept``: the accuracy of G's arg-max on the unlabeled
    images over all their (not ignored) pixels, and over the pixels above ``t_semi`` only; if D's
    confidence is informative the second is the higher. Those labels reach no loss and no gradient.
    ``evaluate`` (whole images, any size): ``mean_iou`` and ``loss_seg``.
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model | None = None,
        *,
        num_classes: int,
        lambda_adv: float = 0.01,
        lambda_semi_adv: float = 0.001,
        lambda_semi: float = 0.1,
        t_semi: float = 0.2,
        semi_start: int = 5000,
        ignore_label: int = 255,
        head_lr_multiplier: float = 10.0,
        weight_decay: float = 5e-4,
        accumulation_steps: int = 1,
        discriminator_input: str = "softmax",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for role, network in (("generator", generator), ("discriminator", discriminator)):
            if network is not None and not network.built:
                raise ValueError(f"the {role} {network.name!r} is not built; call it on a batch first")
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        if discriminator_input not in DISCRIMINATOR_INPUTS:
            raise ValueError(f"discriminator_input={discriminator_input!r}; expected one of {DISCRIMINATOR_INPUTS}")
        self.generator = generator
        self.discriminator = discriminator
        self.num_classes = num_classes
        self.lambda_adv = lambda_adv
        self.lambda_semi_adv = lambda_semi_adv
        self.lambda_semi = lambda_semi
        self.t_semi = t_semi
        self.semi_start = semi_start
        self.ignore_label = ignore_label
        self.head_lr_multiplier = head_lr_multiplier
        self.weight_decay = weight_decay
        self.accumulation_steps = accumulation_steps
        self.discriminator_input = discriminator_input
        # The iteration counter: drives semi_start, names checkpoints and positions the data
        # stream on resume. Unlike the optimisers' counters it also counts the steps that
        # mixed-precision loss scaling skips.
        self.iteration = keras.Variable(
            0, dtype="int64", trainable=False, aggregation="only_first_replica", name="iteration"
        )
        self._trackers = {name: GlobalMean(name=name) for name in LOG_NAMES}
        self.mean_iou = MeanIoU(num_classes, ignore_label)
        self.built = True  # both networks are built; nothing of its own to build

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [*self._trackers.values(), self.mean_iou]

    def compile(
        self,
        g_optimizer: keras.optimizers.Optimizer,
        d_optimizer: keras.optimizers.Optimizer | None = None,
        **kwargs,
    ) -> None:
        """Sets G's and D's optimisers; ``kwargs`` go to ``keras.Model.compile`` (e.g.
        ``jit_compile``, ``steps_per_execution``).

        Under a ``mixed_float16`` generator both optimisers are wrapped for loss scaling.
        ``model.optimizer`` is G's optimiser (what Keras callbacks such as TensorBoard or
        ReduceLROnPlateau act on).
        """
        if (d_optimizer is None) != (self.discriminator is None):
            raise ValueError(
                "pass d_optimizer exactly when the model has a discriminator "
                f"(discriminator={self.discriminator!r}, d_optimizer={d_optimizer!r})"
            )
        if self.generator.dtype_policy.name == "mixed_float16":
            g_optimizer, d_optimizer = _loss_scaled(g_optimizer), d_optimizer and _loss_scaled(d_optimizer)
        super().compile(optimizer=g_optimizer, auto_scale_loss=False, **kwargs)
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self._g_multipliers = _lr_multipliers(self.generator, self.head_lr_multiplier)
        inner = getattr(g_optimizer, "inner_optimizer", g_optimizer)
        if set(self._g_multipliers) != {1.0} and not isinstance(inner, keras.optimizers.SGD):
            warnings.warn(
                f"head_lr_multiplier={self.head_lr_multiplier} scales the head's gradient, which is "
                f"a learning-rate multiplier for SGD only; {type(inner).__name__} is invariant to it",
                stacklevel=2,
            )
        # Built here, on their own network's variables only (Keras would build the optimizer on
        # all of the model's variables), so that checkpoints can restore their slots at once.
        g_optimizer.build(self.generator.trainable_variables)
        if d_optimizer is not None:
            d_optimizer.build(self.discriminator.trainable_variables)

    def call(self, images, training=False):
        """G's logits: ``model.predict(images)`` segments like the generator itself."""
        return self.generator(images, training=training)

    # --- one iteration --------------------------------------------------------------------

    def iteration_losses(
        self, batch: dict, semi_on: tf.Tensor | float, tape: tf.GradientTape
    ) -> IterationLosses:
        """Runs G and D on one (micro-)batch and returns every loss; call inside ``tape``,
        which is made to watch D's (detached) inputs.

        ``semi_on`` is 1.0 once the semi-supervised loss is on (iteration >= semi_start), else 0.
        """
        labels = batch["label"]
        logits = tf.cast(self.generator(batch["image"], training=True), tf.float32)
        logs = {"loss_seg": losses.cross_entropy_loss(labels, logits, self.ignore_label)}
        objective = logs["loss_seg"]
        if self.discriminator is None:
            logs["loss"] = objective
            return IterationLosses(objective + self._weight_decay_loss(), None, [], [], _global(logs))
        if "d_label" not in batch:
            raise ValueError(
                f"adversarial training needs 'd_label' in every batch (got keys {sorted(batch)}); "
                "it holds the independently shuffled labeled batch D sees as real"
            )
        labeled = labels != self.ignore_label
        g_outputs, d_inputs = [tf.nn.softmax(logits)], []
        fake_logits, fake_masks = [self._discriminate(g_outputs[-1], d_inputs, tape)], [labeled]
        logs["loss_adv"] = losses.adversarial_loss(fake_logits[0], 1.0, labeled)
        objective += self.lambda_adv * logs["loss_adv"]
        if "unlabeled_image" in batch:
            logits_u = tf.cast(self.generator(batch["unlabeled_image"], training=True), tf.float32)
            g_outputs.append(tf.nn.softmax(logits_u))
            fake_logits.append(self._discriminate(g_outputs[-1], d_inputs, tape))
            fake_masks.append(tf.ones_like(logits_u[..., 0], dtype=tf.bool))
            logs["loss_semi_adv"] = losses.adversarial_loss(fake_logits[1], 1.0)
            loss_semi, logs["semi_ratio"] = losses.semi_supervised_loss(
                logits_u, fake_logits[1], self.t_semi, self.ignore_label
            )
            logs["loss_semi"] = semi_on * loss_semi
            if "unlabeled_label" in batch:  # diagnostics only: these labels reach no loss
                logs["pseudo_acc_all"], logs["pseudo_acc_kept"] = losses.pseudo_label_accuracy(
                    batch["unlabeled_label"], logits_u, fake_logits[1], self.t_semi, self.ignore_label
                )
            objective += self.lambda_semi_adv * logs["loss_semi_adv"] + self.lambda_semi * logs["loss_semi"]
        logs["loss"] = objective
        d_labels = batch["d_label"]
        real = d_labels != self.ignore_label
        d_real = self.discriminator(
            losses.one_hot_with_ignore(d_labels, self.num_classes, self.ignore_label), training=True
        )
        d_loss = losses.discriminator_loss(fake_logits, fake_masks, d_real, real)
        all_fake = tf.concat([tf.reshape(d, [-1, 1]) for d in fake_logits], axis=0)
        all_fake_masks = tf.concat([tf.reshape(m, [-1]) for m in fake_masks], axis=0)
        logs.update(
            loss_d=d_loss,
            d_acc_real=losses.discriminator_accuracy(d_real, real=True, mask=real),
            d_acc_fake=losses.discriminator_accuracy(all_fake, real=False, mask=all_fake_masks),
        )
        g_loss = objective + self._weight_decay_loss()
        g_adversarial = self.lambda_adv * logs["loss_adv"]
        if "loss_semi_adv" in logs:
            g_adversarial += self.lambda_semi_adv * logs["loss_semi_adv"]
        return IterationLosses(g_loss, d_loss, d_inputs, g_outputs, _global(logs), g_adversarial)

    def train_step(self, data):
        batch, _, _ = keras.utils.unpack_x_y_sample_weight(data)  # train_on_batch wraps it in a tuple
        semi_on = tf.cast(self.iteration >= self.semi_start, tf.float32)
        total = None
        for micro_batch in self._micro_batches(batch):
            # A micro-batch starts once the previous one's gradients exist: one at a time in memory.
            with tf.control_dependencies([] if total is None else tf.nest.flatten(total)):
                micro = self._gradients(micro_batch, semi_on)
            total = micro if total is None else tf.nest.map_structure(tf.add, total, micro)
        g_grads, d_grads, logs = tf.nest.map_structure(lambda t: t / self.accumulation_steps, total)
        self.g_optimizer.apply(g_grads, self.generator.trainable_variables)
        if self.discriminator is not None:
            self.d_optimizer.apply(d_grads, self.discriminator.trainable_variables)
        self.iteration.assign_add(1)
        for name, value in logs.items():
            self._trackers[name].update_state(value)
        return _reducible({name: self._trackers[name].result() for name in LOG_NAMES if name in logs})

    def test_step(self, data):
        batch, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        logits = self.generator(batch["image"], training=False)
        self.mean_iou.update_state(batch["label"], logits)
        loss_seg = losses.cross_entropy_loss(batch["label"], logits, self.ignore_label)
        self._trackers["loss_seg"].update_state(losses.replica_sum(loss_seg))
        return _reducible({"loss_seg": self._trackers["loss_seg"].result(), "mean_iou": self.mean_iou.result()})

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Nothing to build: the networks are built and compile() builds both optimisers. (Keras
        3.15 would all-reduce a peeked batch here, which fails across workers for dict batches.)"""

    # --- helpers ----------------------------------------------------------------------------

    def _discriminate(self, probabilities: tf.Tensor, d_inputs: list, tape: tf.GradientTape) -> tf.Tensor:
        """D's logits on a detached copy of ``probabilities`` (its arg-max as one-hot, for
        ``discriminator_input="argmax"``), watched by ``tape`` (and appended to ``d_inputs``) so
        that G's adversarial gradient can be taken with respect to it. That gradient then reaches
        G through its softmax: for the arg-max map, the straight-through estimator."""
        detached = tf.stop_gradient(probabilities)
        if self.discriminator_input == "argmax":
            detached = tf.one_hot(tf.argmax(detached, axis=-1), self.num_classes, dtype=detached.dtype)
        tape.watch(detached)
        d_inputs.append(detached)
        return self.discriminator(detached, training=True)

    def _weight_decay_loss(self) -> tf.Tensor:
        """0.5 * weight_decay * |w|^2 over G, split over the replicas whose gradients Keras sums."""
        if not self.weight_decay:
            return tf.constant(0.0)
        squares = tf.add_n([tf.reduce_sum(tf.square(v)) for v in self.generator.trainable_variables])
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return 0.5 * self.weight_decay * squares / replicas

    def _gradients(self, batch: dict, semi_on: tf.Tensor):
        """(G's gradients with the head multiplier, D's gradients ([] without D), logs) of one
        micro-batch, loss-scaled for mixed precision."""
        g_vars = self.generator.trainable_variables
        with tf.GradientTape(persistent=True) as tape:
            out = self.iteration_losses(batch, semi_on, tape)
            g_loss = self.g_optimizer.scale_loss(out.g_loss)
            d_loss = None if out.d_loss is None else self.d_optimizer.scale_loss(out.d_loss)
            g_adversarial = None if out.d_loss is None else self.g_optimizer.scale_loss(out.g_adversarial)
        zero = tf.UnconnectedGradients.ZERO
        if d_loss is None:
            g_grads, d_grads = tape.gradient(g_loss, g_vars, unconnected_gradients=zero), []
        else:
            # G's adversarial gradient: dLoss/d(D's input map), taken through D (D's weights get
            # nothing), then through the softmax into G together with G's direct terms. Taken
            # from the adversarial terms alone, the only ones that depend on D's inputs: from the
            # whole loss, the tape would also build a second backward pass through G that nothing
            # uses (a tape differentiates every op it recorded on the way back from its target),
            # doubling the traced graph's convolution gradients and the time to trace and compile.
            map_grads = tape.gradient(g_adversarial, out.d_inputs, unconnected_gradients=zero)
            g_grads = tape.gradient(
                [g_loss, *out.g_outputs],
                g_vars,
                output_gradients=[tf.ones_like(g_loss), *map_grads],
                unconnected_gradients=zero,
            )
            d_vars = self.discriminator.trainable_variables
            d_grads = tape.gradient(d_loss, d_vars, unconnected_gradients=zero)
        del tape
        return [g * m for g, m in zip(g_grads, self._g_multipliers)], d_grads, out.logs

    def _micro_batches(self, batch: dict) -> list[dict]:
        k = self.accumulation_steps
        if k == 1:
            return [batch]
        size = batch["image"].shape[0]
        if size is not None and size % k:
            raise ValueError(f"a batch of {size} images cannot be split into {k} equal micro-batches")
        parts = {key: tf.split(value, k) for key, value in batch.items()}
        return [{key: split[i] for key, split in parts.items()} for i in range(k)]


def _reducible(logs: dict) -> dict:
    """``logs`` in a shape Keras can reduce across workers: Keras 3.15 reduces a multi-worker
    step's outputs along axis 0 (tensorflow/tensorflow#72388), so scalars become [1] there."""
    if worker_count() == 1:
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def _global(logs: dict) -> dict:
    """Replica shares -> global values (identical on every replica, as metrics expect)."""
    return {name: losses.replica_sum(value) for name, value in logs.items()}


def _loss_scaled(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """``optimizer`` with dynamic loss scaling (float16 gradients would underflow without it)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


def _lr_multipliers(generator: keras.Model, head_multiplier: float) -> tuple[float, ...]:
    """Per trainable variable of G: 1 in its backbone, ``head_multiplier`` in the head; 1 for
    every variable of a G without a nested "backbone" layer."""
    try:
        in_backbone = {id(v) for v in backbone_variables(generator)}
    except ValueError:
        return (1.0,) * len(generator.trainable_variables)
    return tuple(1.0 if id(v) in in_backbone else float(head_multiplier) for v in generator.trainable_variables)
