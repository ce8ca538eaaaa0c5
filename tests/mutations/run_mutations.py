"""Proof that the training tests bite: each named mutation of the training step, applied to a
temporary copy of the package, must make at least one test fail.

    python tests/mutations/run_mutations.py                 # every mutation (1-3 minutes each)
    python tests/mutations/run_mutations.py --only no_weight_decay threshold_at_or_above

Each mutation is one textual change of a module of ``advseg_utils/method/`` (the exact text
must occur once; the script says so when a change elsewhere has moved it): the modules generated
from the notebooks' exported cells, where the method is, and the trainer they share. For each, the
package and the tests are copied to a temporary folder, the change applied there, and the
training tests run against that copy, in two stages (the oracle and loss tests, then, only if
they all pass, the training tests); the table printed at the end names the tests that failed in
the first stage that caught the mutation (the first one only, unless ``--all-failures``;
"SURVIVED" when none did). The unchanged copy is run first and must pass. Not part of CI: it
runs the tests once per mutation. The latest results are in ``tests/mutations/README.md``.

A registry tool was tried and not used: mutmut 3.8.1 made 866 anonymous mutants of the two
files that then held the method (602 of training.py, 264 of losses.py), each needing a TensorFlow test run of one to two
minutes on a 2-core machine (about a day in all), and its first, unmutated test run had not
finished after six minutes. The point here is the named mistakes a port of this method makes
(the README's "How it is built", issue 13), each checked in about two minutes.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
# Two stages: the training tests run only for a mutation the oracle and the loss tests let
# through. Their slowest tests (resume, NaN guard, validation, two replicas) guard other things.
STAGES = [
    ["tests/test_iteration_oracle.py", "tests/test_losses.py"],
    ["tests/test_training.py", "-k", "not two_replicas and not resumed and not nan_loss_stops and not train_validates"],
]


class Mutation(NamedTuple):
    name: str
    path: str
    old: str
    new: str
    what: str


# The method's modules (generated from the notebooks' exported cells) and the trainer they share.
BASELINE, ADVERSARIAL, SEMI = (f"advseg_utils/method/{name}.py" for name in ("baseline", "adversarial", "semi_supervised"))
TRAINER = "advseg_utils/method/trainer.py"
GRADIENT = "name: tapes[name].gradient(scaled[name], network.trainable_variables,"
MUTATIONS = [
    Mutation(
        "no_adversarial_gradient_to_g", ADVERSARIAL,
        "            return probabilities + tf.stop_gradient(one_hot - probabilities)\n        return probabilities\n",
        "            return probabilities + tf.stop_gradient(one_hot - probabilities)\n        return tf.stop_gradient(probabilities)\n",
        "G receives no adversarial gradient (D's input map cut from G)",
    ),
    Mutation(
        "d_update_gets_g_objective", TRAINER, GRADIENT,
        'name: tapes[name].gradient(scaled[name] + scaled["generator"] * (name == "discriminator"), network.trainable_variables,',
        "D's update also receives G's objective",
    ),
    Mutation(
        "d_input_not_detached", TRAINER, GRADIENT,
        'name: tapes[name].gradient(scaled[name] + scaled.get("discriminator", 0.0) * (name == "generator"), network.trainable_variables,',
        "D's loss reaches G (what a port that does not detach D's input map gets: G's adversarial gradient counted twice)",
    ),
    Mutation(
        "no_weight_decay", TRAINER, "if not self.weight_decay:", "if True:", "weight decay removed from G's loss"
    ),
    Mutation(
        "d_fake_labeled_only", SEMI,
        "**self.judge([d_fake, d_fake_u], [labeled, everywhere], batch[\"d_label\"])",
        "**self.judge([d_fake], [labeled], batch[\"d_label\"])",
        "D's fake loss on the labeled map only, without the unlabeled one",
    ),
    Mutation(
        "adv_loss_counts_ignored_pixels", ADVERSARIAL,
        '"loss_adv": adversarial_loss(d_fake, 1.0, labeled),',
        '"loss_adv": adversarial_loss(d_fake, 1.0),',
        "the labeled adversarial loss counts y_l's 255 pixels (adversarial step)",
    ),
    Mutation(
        "semi_adv_loss_counts_ignored_pixels", SEMI,
        '"loss_adv": adversarial_loss(d_fake, 1.0, labeled),',
        '"loss_adv": adversarial_loss(d_fake, 1.0),',
        "the labeled adversarial loss counts y_l's 255 pixels (semi-supervised step)",
    ),
    Mutation(
        "d_fake_counts_ignored_pixels", ADVERSARIAL,
        "**self.judge([d_fake], [labeled], batch[\"d_label\"])",
        "**self.judge([d_fake], [tf.ones_like(labeled)], batch[\"d_label\"])",
        "D's fake loss counts the labeled batch's 255 pixels (adversarial step)",
    ),
    Mutation(
        "semi_d_fake_counts_ignored_pixels", SEMI,
        "[d_fake, d_fake_u], [labeled, everywhere]",
        "[d_fake, d_fake_u], [tf.ones_like(labeled), everywhere]",
        "D's fake loss counts the labeled batch's 255 pixels (semi-supervised step)",
    ),
    Mutation(
        "d_real_counts_ignored_pixels", ADVERSARIAL,
        "real = real_labels != self.ignore_label",
        "real = tf.ones_like(real_labels, dtype=tf.bool)",
        "D's real loss counts the 255 pixels of D's real label map",
    ),
    Mutation(
        "one_hot_ignored_as_class_0", ADVERSARIAL,
        "tf.where(labels == ignore_label, -1, labels)",
        "tf.where(labels == ignore_label, 0, labels)",
        "a 255 pixel of D's real map becomes class 0 instead of the all-zero vector",
    ),
    Mutation(
        "cross_entropy_counts_ignored_pixels", BASELINE,
        "return masked_mean(per_pixel, counted)",
        "return masked_mean(per_pixel, tf.ones_like(counted))",
        "the cross-entropy averages over 255 pixels too",
    ),
    Mutation(
        "threshold_at_or_above", SEMI,
        "confident = confidence > t_semi",
        "confident = confidence >= t_semi",
        "pseudo-labels kept at confidence >= T instead of > T (the original's choice)",
    ),
    Mutation(
        "threshold_inverted", SEMI,
        "confident = confidence > t_semi",
        "confident = confidence < t_semi",
        "pseudo-labels kept where D is *not* confident",
    ),
    Mutation(
        "confidence_is_the_logit", SEMI,
        "confidence = tf.sigmoid(tf.cast(tf.squeeze(tf.stop_gradient(d_logits), axis=-1), tf.float32))",
        "confidence = tf.cast(tf.squeeze(tf.stop_gradient(d_logits), axis=-1), tf.float32)",
        "T compared with D's logit instead of its sigmoid",
    ),
    Mutation(
        "confidence_from_labeled_map", SEMI,
        "semi_supervised_loss(logits_u, d_fake_u,",
        "semi_supervised_loss(logits_u, d_fake,",
        "the confidence map taken from D on the labeled prediction",
    ),
    Mutation(
        "pseudo_labels_from_labeled_logits", SEMI,
        "semi_supervised_loss(logits_u, d_fake_u,",
        "semi_supervised_loss(logits, d_fake_u,",
        "the semi loss on G's labeled prediction instead of the unlabeled one",
    ),
    Mutation(
        "semi_loss_without_gradient", SEMI,
        "return cross_entropy_loss(pseudo_labels, logits, ignore_label), semi_ratio",
        "return cross_entropy_loss(pseudo_labels, tf.stop_gradient(logits), ignore_label), semi_ratio",
        "stop_gradient added on the semi loss's logits (the cross-entropy sends nothing into G)",
    ),
    Mutation(
        "unlabeled_prediction_detached", SEMI,
        'logits_u = self.generator(batch["unlabeled_image"], training=True)',
        'logits_u = tf.stop_gradient(self.generator(batch["unlabeled_image"], training=True))',
        "G's unlabeled prediction as if computed outside the tape",
    ),
    Mutation(
        "semi_start_off_by_one_late", SEMI,
        "semi_on = tf.cast(self.iteration >= self.semi_start, tf.float32)",
        "semi_on = tf.cast(self.iteration > self.semi_start, tf.float32)",
        "the semi loss starts one iteration after semi_start",
    ),
    Mutation(
        "semi_start_off_by_one_early", SEMI,
        "semi_on = tf.cast(self.iteration >= self.semi_start, tf.float32)",
        "semi_on = tf.cast(self.iteration + 1 >= self.semi_start, tf.float32)",
        "the semi loss starts one iteration before semi_start",
    ),
    Mutation(
        "semi_loss_ignores_semi_start", SEMI,
        '"loss_semi": semi_on * loss_semi,',
        '"loss_semi": loss_semi,',
        "the semi loss on from iteration 0",
    ),
    Mutation(
        "semi_adv_weighted_by_lambda_adv", SEMI,
        'g_loss += self.lambda_semi_adv * logs["loss_semi_adv"]',
        'g_loss += self.lambda_adv * logs["loss_semi_adv"]',
        "the unlabeled adversarial loss weighted by lambda_adv",
    ),
    Mutation(
        "head_multiplier_on_backbone", TRAINER,
        "1.0 if id(v) in in_backbone else float(head_multiplier)",
        "float(head_multiplier) if id(v) in in_backbone else 1.0",
        "the 10x multiplier on the backbone instead of the head",
    ),
    Mutation(
        "no_head_multiplier", TRAINER,
        'grads["generator"] = [g * m for g, m in zip(grads["generator"], self._g_multipliers)]',
        'grads["generator"] = list(grads["generator"])',
        "the head's gradient not multiplied",
    ),
    Mutation(
        "accumulation_sums", TRAINER,
        "lambda t: t / self.accumulation_steps, total",
        "lambda t: t, total",
        "accumulated micro-batch gradients (and logs) summed, not averaged",
    ),
    Mutation(
        "d_fake_target_real", ADVERSARIAL,
        "_bce_with_logits(d, 0.0)",
        "_bce_with_logits(d, 1.0)",
        "D's fake maps labelled 'real'",
    ),
    Mutation(
        "d_halves_unweighted", ADVERSARIAL,
        "return 0.5 * masked_mean(fake_values, fake_mask) + 0.5 *",
        "return masked_mean(fake_values, fake_mask) + 0.5 *",
        "D's fake half not weighted 1/2",
    ),
    Mutation(
        "argmax_input_ignored", ADVERSARIAL,
        'if self.discriminator_input == "argmax":',
        'if self.discriminator_input == "never":',
        "discriminator_input='argmax' still shows D G's softmax",
    ),
]


def copy_project(destination: Path) -> None:
    """The package, the tests and the root pytest setup: what the training tests need."""
    for name in ("advseg_utils", "tests"):
        shutil.copytree(ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__", "mutations"))
    for name in ("conftest.py", "pyproject.toml"):
        shutil.copy2(ROOT / name, destination / name)


def apply(mutation: Mutation, root: Path) -> None:
    path = root / mutation.path
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(f"{mutation.name}: expected its text once in {mutation.path}, found it {count} times:\n{mutation.old}")
    path.write_text(text.replace(mutation.old, mutation.new))


def failing_tests(root: Path, tests: list[str], first_only: bool = True) -> list[str]:
    """Names of the ``tests`` that fail in the copy at ``root`` (its package, not the installed
    one); the first only (pytest -x, faster) unless ``first_only`` is False."""
    exitfirst = ["-x"] if first_only else []
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    where = subprocess.run(
        [sys.executable, "-c", "import advseg_utils; print(advseg_utils.__file__)"],
        cwd=root, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    if not where.stdout.strip().startswith(str(root)):
        raise SystemExit(f"the copy's tests would import {where.stdout.strip()}, not the copy's package")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *exitfirst, *tests],
        cwd=root, env=env, capture_output=True, text=True,
    )  # fmt: skip
    failed = re.findall(r"^FAILED (\S+)", run.stdout, flags=re.MULTILINE)
    if run.returncode not in (0, 1) or (run.returncode == 1 and not failed):
        raise SystemExit(f"pytest could not run (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return [name.split("::", 1)[1] for name in failed]


def caught_by(root: Path, first_only: bool) -> list[str]:
    """The failing tests of the first stage in which any fails ([] when none does)."""
    for tests in STAGES:
        failed = failing_tests(root, tests, first_only)
        if failed:
            return failed
    return []


def compact(names: list[str]) -> str:
    """``test_x[a]``, ``test_x[b]`` -> ``test_x[a, b]``, in order of first appearance."""
    cases: dict[str, list[str]] = {}
    for name in names:
        base, _, case = name.partition("[")
        cases.setdefault(base, []).append(case.rstrip("]"))
    return ", ".join(f"`{base}[{', '.join(c)}]`" if any(c) else f"`{base}`" for base, c in cases.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
    parser.add_argument("--all-failures", action="store_true", help="name every failing test, not the first")
    args = parser.parse_args()
    known = {m.name: m for m in MUTATIONS}
    unknown = set(args.only or ()) - set(known)
    if unknown:
        raise SystemExit(f"unknown mutations {sorted(unknown)}; expected some of {sorted(known)}")
    chosen = [known[name] for name in args.only] if args.only else MUTATIONS
    with tempfile.TemporaryDirectory(prefix="advseg-mutations-") as scratch:
        clean = Path(scratch) / "clean"
        copy_project(clean)
        failed = [name for tests in STAGES for name in failing_tests(clean, tests, first_only=False)]
        if failed:
            raise SystemExit(f"the unmutated code fails {failed}: fix that first")
        rows = []
        for mutation in chosen:
            root = Path(scratch) / mutation.name
            copy_project(root)
            apply(mutation, root)
            caught = caught_by(root, first_only=not args.all_failures)
            rows.append((mutation, caught))
            print(f"{mutation.name}: {compact(caught) or 'SURVIVED'}", flush=True)
            shutil.rmtree(root)
    print("\n| mutation | what it breaks | tests that fail |\n|---|---|---|")
    for mutation, caught in rows:
        print(f"| `{mutation.name}` | {mutation.what} | {compact(caught) or '**SURVIVED**'} |")
    if any(not caught for _, caught in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
