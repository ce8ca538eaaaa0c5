"""The one wrapper every method's training step runs in.

A method (the notebooks' :class:`~advseg_utils.method.baseline.Baseline`,
:class:`~advseg_utils.method.adversarial.Adversarial` and
:class:`~advseg_utils.method.semi_supervised.SemiSupervised`) only says what its losses are:
``losses(batch) -> (losses, logs)``, the loss each network's optimiser minimises and the values
to report. :class:`SegmentationTrainer` does everything a method should not have to repeat:

* each network's loss is differentiated with respect to that network's own weights only, so
  D's loss never moves G and G's loss never moves D;
* G's coupled weight decay and the head's learning-rate multiplier (the paper's optimiser);
* loss scaling under mixed precision, gradient accumulation over micro-batches;
* logs as global (all-replica) values, the iteration counter, evaluation's mean IoU.

Build the networks, the method and ``compile`` under ``strategy.scope()`` when training on
several devices (:func:`~advseg_utils.runtime.get_strategy`).
"""
from __future__ import annotations

import contextlib
import warnings

import keras
import tensorflow as tf

from advseg_utils.cluster import worker_count
from advseg_utils.method.reduction import replica_sum
from advseg_utils.metrics import GlobalMean, MeanIoU
from advseg_utils.models import backbone_variables


class SegmentationTrainer(keras.Model):
    """G (and D) trained by the ``losses`` of a method subclass.

    Args:
        generator: built Keras model, images [B, H, W, 3] (RGB 0..255) -> logits [B, H, W, C].
        discriminator: built Keras model or None (the baseline has none).
        num_classes: C.
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

    A subclass sets ``batch_keys`` (what its training batches must hold), ``log_names`` (every
    value its ``losses`` may log; ``"loss"``, G's loss without weight decay, is added here) and
    ``options`` (the constructor arguments :func:`~advseg_utils.experiment.build_model` reads
    from the configuration), and defines ``losses``, ``training_batches`` and ``evaluation_logs``.
    """

    batch_keys: tuple[str, ...] = ()
    log_names: tuple[str, ...] = ("loss",)
    options: tuple[str, ...] = ("head_lr_multiplier", "weight_decay", "accumulation_steps")

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model | None = None,
        *,
        num_classes: int,
        ignore_label: int = 255,
        head_lr_multiplier: float = 10.0,
        weight_decay: float = 5e-4,
        accumulation_steps: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for role, network in (("generator", generator), ("discriminator", discriminator)):
            if network is not None and not network.built:
                raise ValueError(f"the {role} {network.name!r} is not built; call it on a batch first")
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        self.generator = generator
        self.discriminator = discriminator
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.head_lr_multiplier = head_lr_multiplier
        self.weight_decay = weight_decay
        self.accumulation_steps = accumulation_steps
        # The iteration counter: drives semi_start, names checkpoints and positions the data
        # stream on resume. Unlike the optimisers' counters it also counts the steps that
        # mixed-precision loss scaling skips.
        self.iteration = keras.Variable(
            0, dtype="int64", trainable=False, aggregation="only_first_replica", name="iteration"
        )
        self._trackers = {name: GlobalMean(name=name) for name in ("loss", *self.log_names)}
        self.mean_iou = MeanIoU(num_classes, ignore_label)

    def losses(self, batch: dict) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        """({"generator": G's loss, "discriminator": D's loss}, logs) of one (micro-)batch:
        this replica's shares of global means (:func:`~advseg_utils.method.reduction.masked_mean`)."""
        raise NotImplementedError

    @classmethod
    def training_batches(cls, data, labeled_ids, unlabeled=None):
        """``step -> tf.data.Dataset``: the method's batches from ``data`` (a
        :class:`~advseg_utils.voc_gen.VOCGen`), positioned at iteration ``step``."""
        raise NotImplementedError

    def evaluation_logs(self, labels: tf.Tensor, logits: tf.Tensor) -> dict[str, tf.Tensor]:
        """What ``evaluate`` reports besides ``mean_iou``, from G's logits on whole images."""
        return {}

    def test_step(self, data):
        batch, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        logits = self.generator(batch["image"], training=False)
        self.mean_iou.update_state(batch["label"], logits)
        logs = self.evaluation_logs(batch["label"], logits)
        for name, value in logs.items():
            self._trackers[name].update_state(replica_sum(value))
        return _reducible({**{name: self._trackers[name].result() for name in logs}, "mean_iou": self.mean_iou.result()})

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [*self._trackers.values(), self.mean_iou]

    @property
    def networks(self) -> dict[str, keras.Model]:
        return {"generator": self.generator, **({"discriminator": self.discriminator} if self.discriminator is not None else {})}

    @property
    def _optimizers(self) -> dict[str, keras.optimizers.Optimizer | None]:
        return {"generator": self.g_optimizer, "discriminator": self.d_optimizer}

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
        for name, network in self.networks.items():
            self._optimizers[name].build(network.trainable_variables)

    def call(self, images, training=False):
        """G's logits: ``model.predict(images)`` segments like the generator itself."""
        return self.generator(images, training=training)

    def train_step(self, data):
        batch, _, _ = keras.utils.unpack_x_y_sample_weight(data)  # train_on_batch wraps it in a tuple
        missing = [key for key in self.batch_keys if key not in batch]
        if missing:
            raise ValueError(
                f"{type(self).__name__} trains on batches with {list(self.batch_keys)}; these have {sorted(batch)}, "
                f"without {missing} (its training_batches make them)"
            )
        # Accumulation by hand, not the optimisers' gradient_accumulation_steps: with those,
        # Keras's learning-rate schedule counts micro-batches, a step that loss scaling skips
        # shifts the accumulation window, and each micro-batch is all-reduced.
        total = None
        for micro_batch in self._micro_batches(batch):
            # A micro-batch starts once the previous one's gradients exist: one at a time in memory.
            with tf.control_dependencies([] if total is None else tf.nest.flatten(total)):
                micro = self._gradients(micro_batch)
            total = micro if total is None else tf.nest.map_structure(tf.add, total, micro)
        grads, logs = tf.nest.map_structure(lambda t: t / self.accumulation_steps, total)
        for name, network in self.networks.items():
            self._optimizers[name].apply(grads[name], network.trainable_variables)
        self.iteration.assign_add(1)
        for name, value in logs.items():
            self._trackers[name].update_state(value)
        return _reducible({name: tracker.result() for name, tracker in self._trackers.items() if name in logs})

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Nothing to build: the networks are built and ``compile`` builds both optimisers. Keras
        3.15 would peek at a batch here and all-reduce it, which fails across workers for dict
        batches (the multi-worker tests); the override is the only Keras internal relied on."""

    def _gradients(self, batch: dict):
        """({network name: its gradients}, global logs) of one micro-batch.

        One tape per network, watching that network's weights only: a tape then records just the
        operations that depend on them, so D's tape stops at G's maps (no backward pass through G
        is built for D's loss, which a shared tape would trace and then prune unused) and each
        loss reaches its own network's weights alone.
        """
        with contextlib.ExitStack() as stack:
            tapes = {}
            for name, network in self.networks.items():
                tapes[name] = stack.enter_context(tf.GradientTape(watch_accessed_variables=False))
                tapes[name].watch([v.value for v in network.trainable_variables])  # the tf.Variable behind each Keras one
            losses, logs = self.losses(batch)
            logs = {"loss": losses["generator"], **logs}
            losses = {**losses, "generator": losses["generator"] + self._weight_decay_loss()}
            scaled = {name: self._optimizers[name].scale_loss(loss) for name, loss in losses.items()}
        grads = {
            name: tapes[name].gradient(scaled[name], network.trainable_variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            for name, network in self.networks.items()
        }
        grads["generator"] = [g * m for g, m in zip(grads["generator"], self._g_multipliers)]
        return grads, {name: replica_sum(value) for name, value in logs.items()}

    def _weight_decay_loss(self) -> tf.Tensor:
        """0.5 * weight_decay * |w|^2 over G, split over the replicas whose gradients Keras sums."""
        if not self.weight_decay:
            return tf.constant(0.0)
        squares = tf.add_n([tf.reduce_sum(tf.square(v)) for v in self.generator.trainable_variables])
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return 0.5 * self.weight_decay * squares / replicas

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
