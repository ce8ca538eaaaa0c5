"""The original implementation's training iteration, re-stated in current PyTorch, as the
reference of ``bench_vs_original.py`` (a benchmark dependency only: see requirements.txt here).

Re-stated from hfslyc/AdvSemiSeg (Hung et al.'s code): ``model/deeplab.py`` (``Res_Deeplab``),
``model/discriminator.py`` (``FCDiscriminator``), ``utils/loss.py`` (``CrossEntropy2d``,
``BCEWithLogitsLoss2d``) and the iteration of ``train.py``. What the original does and this
keeps:

* DeepLab-v2 on ResNet-101 at output stride 8: the stride in each stage's first 1x1
  convolution (Caffe style), ceil-mode max pooling, layer3 dilated by 2 and layer4 by 4, every
  convolution without bias, weights drawn from N(0, 0.01).
* Batch norm as the original runs it: ``model.train()``, so batch statistics (and running
  averages updated), with its scale and shift frozen (``requires_grad = False``): no gradient.
* ``Classifier_Module`` returns inside its loop, so the code sums only its first two branches
  (rates 6 and 12), although it builds all four and hands all four to the optimiser; the paper
  describes four. ``summed_branches`` is 2 as the code runs, 4 as the paper (and this project).
* The iteration order of ``train.py``: the unlabeled batch first (G, then D with its weights
  frozen, the semi-supervised loss from ``semi_start``), then the labeled batch (segmentation
  plus adversarial loss, one backward), then D on the detached predictions of both batches
  concatenated (``D_remain``) and on the one-hot ground truth, each half weighted; every output
  of G and D upsampled bilinearly (``align_corners=True``) to the crop; SGD with the 10x
  classifier group and momentum 0.9, weight decay 5e-4, Adam for D, both rates decayed each step.
  The "+ adversarial" mode is that iteration without the unlabeled batch, the baseline the
  segmentation loss alone.

What changed: ``Variable`` and ``.cuda`` are gone, and the original's host round trips through
numpy (the one-hot map, D's label maps, the confidence map and the pseudo-label argmax) run as
torch operations on the tensors' own device. That can only make this reference faster, so
matching it is a stricter goal than matching the original. ``precision="mixed"`` runs G and D
under ``torch.autocast`` with a gradient scaler, the original's best setting on a GPU today.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL = 255
MODES = ("baseline", "adversarial", "semi")


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = _frozen_affine_bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = _frozen_affine_bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _frozen_affine_bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class ClassifierModule(nn.Module):
    """Four 3x3 convolutions (rates 6, 12, 18, 24) of which the first ``summed_branches`` run."""

    def __init__(self, num_classes: int, summed_branches: int = 2, rates=(6, 12, 18, 24)):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(2048, num_classes, 3, padding=rate, dilation=rate, bias=True) for rate in rates
        )
        for conv in self.conv2d_list:
            conv.weight.data.normal_(0, 0.01)
        self.summed_branches = summed_branches

    def forward(self, x):
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1 : self.summed_branches]:
            out = out + conv(x)
        return out


class ResDeeplab(nn.Module):
    """``Res_Deeplab``: ResNet-101 (blocks 3, 4, 23, 3) with the DeepLab-v2 classifier."""

    def __init__(self, num_classes: int = 21, summed_branches: int = 2):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _frozen_affine_bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 23, dilation=2)
        self.layer4 = self._make_layer(512, 3, dilation=4)
        self.layer5 = ClassifierModule(num_classes, summed_branches)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.data.normal_(0, 0.01)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.data.fill_(1)
                module.bias.data.zero_()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        # Every stage of ResNet-101 gets the projection shortcut (the original's condition).
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), _frozen_affine_bn(planes * 4)
        )
        layers = [Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))

    def optim_parameters(self, learning_rate: float) -> list[dict]:
        """The two SGD groups: the trainable backbone weights at 1x, the classifier at 10x."""
        backbone = [p for name, p in self.named_parameters() if not name.startswith("layer5") and p.requires_grad]
        return [
            {"params": backbone, "lr": learning_rate},
            {"params": list(self.layer5.parameters()), "lr": 10 * learning_rate},
        ]


class FCDiscriminator(nn.Module):
    """Five 4x4 stride-2 convolutions (64, 128, 256, 512, 1 channels), LeakyReLU 0.2 between."""

    def __init__(self, num_classes: int, ndf: int = 64):
        super().__init__()
        channels = (num_classes, ndf, ndf * 2, ndf * 4, ndf * 8)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in zip(channels, channels[1:]))
        self.classifier = nn.Conv2d(ndf * 8, 1, 4, stride=2, padding=1)
        self.leaky_relu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        for conv in self.convs:
            x = self.leaky_relu(conv(x))
        return self.classifier(x)


def cross_entropy_2d(predict: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``CrossEntropy2d``: logits [N, C, H, W] gathered at the labelled pixels, then averaged."""
    n, c, h, w = predict.shape
    target_mask = (target >= 0) & (target != IGNORE_LABEL)
    predict = predict.transpose(1, 2).transpose(2, 3).contiguous()
    predict = predict[target_mask.view(n, h, w, 1).repeat(1, 1, 1, c)].view(-1, c)
    return F.cross_entropy(predict, target[target_mask])


def bce_with_logits_2d(predict: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``BCEWithLogitsLoss2d``: BCE of D's logits [N, 1, H, W] over the pixels not 255 in ``target``."""
    target_mask = (target >= 0) & (target != IGNORE_LABEL)
    return F.binary_cross_entropy_with_logits(predict[target_mask], target[target_mask])


def make_d_label(label: float, ignore_mask: torch.Tensor) -> torch.Tensor:
    """``make_D_label``: a [N, 1, H, W] map of ``label``, 255 where ``ignore_mask`` [N, H, W]."""
    d_label = torch.full(ignore_mask.unsqueeze(1).shape, float(label), device=ignore_mask.device)
    return d_label.masked_fill(ignore_mask.unsqueeze(1), IGNORE_LABEL)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``one_hot``: [N, C, H, W] float, all zeros at 255 pixels."""
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, 1, 1)
    return (labels.unsqueeze(1) == classes).float()


class OriginalTraining:
    """The networks, optimisers and iteration of ``train.py`` for one mode.

    ``step(batch)`` runs one iteration on a dict of tensors: ``image`` [N, 3, H, W],
    ``label`` [N, H, W] (int64, 255 ignored), and by mode ``d_label`` (D's real batch) and
    ``unlabeled_image``; it returns G's segmentation loss as a float (as ``train.py`` prints).
    """

    def __init__(
        self,
        mode: str,
        crop: int,
        num_classes: int = 21,
        summed_branches: int = 2,
        precision: str = "float32",
        device: str = "cpu",
        num_steps: int = 20000,
        learning_rate: float = 2.5e-4,
        learning_rate_d: float = 1e-4,
        lambda_adv: float = 0.01,
        lambda_semi_adv: float = 0.001,
        lambda_semi: float = 0.1,
        mask_t: float = 0.2,
        semi_start: int = 0,
    ):
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")
        self.mode, self.num_classes, self.device = mode, num_classes, device
        self.num_steps, self.learning_rate, self.learning_rate_d = num_steps, learning_rate, learning_rate_d
        self.lambda_adv, self.lambda_semi_adv, self.lambda_semi = lambda_adv, lambda_semi_adv, lambda_semi
        self.mask_t, self.semi_start, self.i_iter = mask_t, semi_start, 0
        self.model = ResDeeplab(num_classes, summed_branches).to(device).train()
        self.optimizer = torch.optim.SGD(
            self.model.optim_parameters(learning_rate), lr=learning_rate, momentum=0.9, weight_decay=5e-4
        )
        self.model_d = self.optimizer_d = None
        if mode != "baseline":
            self.model_d = FCDiscriminator(num_classes).to(device).train()
            self.optimizer_d = torch.optim.Adam(self.model_d.parameters(), lr=learning_rate_d, betas=(0.9, 0.99))
        self.interp = nn.Upsample(size=(crop, crop), mode="bilinear", align_corners=True)
        self.autocast = torch.autocast(torch.device(device).type, enabled=precision == "mixed")
        self.scaler = torch.amp.GradScaler(torch.device(device).type, enabled=precision == "mixed")

    def step(self, batch: dict) -> float:
        lr = _lr_poly(self.learning_rate, self.i_iter, self.num_steps)
        self.optimizer.param_groups[0]["lr"], self.optimizer.param_groups[1]["lr"] = lr, 10 * lr
        self.optimizer.zero_grad()
        if self.optimizer_d is not None:
            self.optimizer_d.param_groups[0]["lr"] = _lr_poly(self.learning_rate_d, self.i_iter, self.num_steps)
            self.optimizer_d.zero_grad()
            self.model_d.requires_grad_(False)  # don't accumulate grads in D
        pred_remain = ignore_mask_remain = None
        if self.mode == "semi":
            pred_remain, ignore_mask_remain = self._unlabeled(batch["unlabeled_image"])
        labels = batch["label"]
        ignore_mask = labels == IGNORE_LABEL
        with self.autocast:
            pred = self.interp(self.model(batch["image"]))
            loss_seg = cross_entropy_2d(pred.float(), labels)
            loss = loss_seg
            if self.model_d is not None:
                d_out = self.interp(self.model_d(F.softmax(pred, dim=1)))
                loss = loss + self.lambda_adv * bce_with_logits_2d(d_out.float(), make_d_label(1, ignore_mask))
        self.scaler.scale(loss).backward()
        if self.model_d is not None:
            self._train_discriminator(pred.detach(), ignore_mask, pred_remain, ignore_mask_remain, batch["d_label"])
        self.scaler.step(self.optimizer)
        if self.optimizer_d is not None:
            self.scaler.step(self.optimizer_d)
        self.scaler.update()
        self.i_iter += 1
        return loss_seg.item()

    def _unlabeled(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unlabeled half of G's update ("do semi first"); returns (G's detached
        prediction, its all-False ignore mask) for D's update."""
        with self.autocast:
            pred = self.interp(self.model(images))
            d_out = self.interp(self.model_d(F.softmax(pred, dim=1))).float()
            ignore_mask_remain = torch.zeros_like(d_out[:, 0], dtype=torch.bool)
            loss_semi_adv = self.lambda_semi_adv * bce_with_logits_2d(d_out, make_d_label(1, ignore_mask_remain))
            if self.lambda_semi <= 0 or self.i_iter < self.semi_start:
                self.scaler.scale(loss_semi_adv).backward()
                return pred.detach(), ignore_mask_remain
            semi_ignore_mask = torch.sigmoid(d_out.detach()).squeeze(1) < self.mask_t
            semi_gt = pred.detach().argmax(dim=1).masked_fill(semi_ignore_mask, IGNORE_LABEL)
            if bool(semi_ignore_mask.all()):  # the original's semi_ratio == 0: no backward at all
                return pred.detach(), ignore_mask_remain
            loss_semi = self.lambda_semi * cross_entropy_2d(pred.float(), semi_gt)
        self.scaler.scale(loss_semi + loss_semi_adv).backward()
        return pred.detach(), ignore_mask_remain

    def _train_discriminator(self, pred, ignore_mask, pred_remain, ignore_mask_remain, labels_gt) -> None:
        """D's loss on G's detached predictions (both batches, concatenated) and on the ground truth."""
        self.model_d.requires_grad_(True)
        if pred_remain is not None:
            pred = torch.cat((pred, pred_remain), 0)
            ignore_mask = torch.cat((ignore_mask, ignore_mask_remain), 0)
        with self.autocast:
            d_out = self.interp(self.model_d(F.softmax(pred, dim=1))).float()
            loss_d = bce_with_logits_2d(d_out, make_d_label(0, ignore_mask)) / 2
        self.scaler.scale(loss_d).backward()
        with self.autocast:
            d_out = self.interp(self.model_d(one_hot(labels_gt, self.num_classes))).float()
            loss_d = bce_with_logits_2d(d_out, make_d_label(1, labels_gt == IGNORE_LABEL)) / 2
        self.scaler.scale(loss_d).backward()


def _frozen_affine_bn(channels: int) -> nn.BatchNorm2d:
    """The original's batch norm: affine, its scale and shift excluded from training."""
    bn = nn.BatchNorm2d(channels, affine=True)
    bn.requires_grad_(False)
    return bn


def _lr_poly(base_lr: float, i_iter: int, max_iter: int, power: float = 0.9) -> float:
    return base_lr * (1 - i_iter / max_iter) ** power
