"""The networks: segmentation generators and fully convolutional discriminators."""
from advseg_utils.models.backbones import BACKBONES, OUTPUT_STRIDES, WeightsUnavailableError, build_backbone
from advseg_utils.models.discriminators import build_discriminator
from advseg_utils.models.efficientnet_lite import imagenet_class_names, imagenet_classifier
from advseg_utils.models.generators import backbone_variables, build_generator
from advseg_utils.models.layers import ImageNetPreprocessing, MaximumLeakyReLU, ResizeLike

__all__ = [
    "BACKBONES",
    "OUTPUT_STRIDES",
    "WeightsUnavailableError",
    "ImageNetPreprocessing",
    "MaximumLeakyReLU",
    "ResizeLike",
    "backbone_variables",
    "build_backbone",
    "build_discriminator",
    "build_generator",
    "imagenet_class_names",
    "imagenet_classifier",
]
