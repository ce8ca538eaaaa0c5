"""advseg_utils: the helper package behind the advseg notebooks.

Everything a notebook needs is importable from here directly. Importing the package also
registers the custom Keras layers, so ``keras.saving.load_model`` can read a saved generator,
and imports TensorFlow without its C++ start-up messages (see :mod:`advseg_utils.quiet_import`).
"""
from advseg_utils.quiet_import import import_tensorflow_quietly, tensorflow_quietly

import_tensorflow_quietly()

from advseg_utils.config import METHODS, ExperimentConfig, configure
from advseg_utils.datasets import (
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    VOC_CLASSES,
    SegDataset,
    camvid_dataset,
    check_files_exist,
    cityscapes_dataset,
    folder_dataset,
    sample_dataset,
    validate_dataset,
    voc_dataset,
    voc_palette,
)
from advseg_utils.download import (
    ChecksumError,
    DownloadError,
    ExpectedFile,
    UnsafeArchiveError,
    download_file,
    download_sbd,
    download_voc,
    download_voc_aug_labels,
    extract_archive,
)
from advseg_utils.experiment import (
    build_model,
    examples,
    load_datasets,
    load_unlabeled,
    recalibrate_on_training_crops,
    run_experiment,
    split_ids,
    train_model,
    training_stream,
    unlabeled_training_set,
)
from advseg_utils.export import export_generator
from advseg_utils.file_utils import (
    DatasetError,
    UnlabeledSources,
    get_or_create_split,
    load_img,
    load_mask,
    load_split,
    load_unlabeled_sources,
    make_split,
    mask_name_to_img_name,
    read_list,
    read_pair_list,
    save_split,
)
from advseg_utils.inference import EvaluationResult, Prediction, Segmenter, evaluate, recalibrate_batchnorm, segment
from advseg_utils.method import (
    METHOD_CLASSES,
    Adversarial,
    Baseline,
    SegmentationTrainer,
    SemiSupervised,
)
from advseg_utils.metrics import (
    ConfusionMatrix,
    MeanIoU,
    confusion_matrix,
    iou_from_confusion,
    mean_iou,
    per_class_iou,
    pixel_accuracy,
)
from advseg_utils.models import (
    WeightsUnavailableError,
    backbone_variables,
    build_discriminator,
    build_generator,
    imagenet_class_names,
    imagenet_classifier,
)
from advseg_utils.monitoring import DiscriminatorCollapseWarning, DiscriminatorMonitor
from advseg_utils.prepare import download_camvid, prepare_voc, prepare_voc_aug
from advseg_utils.pth import UnsafePickleError, read_pth
from advseg_utils.runner import (
    BestGeneratorCheckpoint,
    HistoryLog,
    StopOnNonFiniteLoss,
    restore_latest,
    save_generator,
    train,
)
from advseg_utils.runtime import (
    accelerator_report,
    configure_precision,
    demo_mode,
    get_strategy,
    image_to_segment,
    in_colab,
    project_dir,
    smoke_mode,
)
from advseg_utils.schedules import paper_optimizers, poly_decay
from advseg_utils.tables import iou_table, network_summary
from advseg_utils.unlabeled import merge_unlabeled, unlabeled_folder_dataset
from advseg_utils.video import sample_frames
from advseg_utils.viz import (
    class_legend,
    colorize_mask,
    overlay,
    plot_history,
    plot_overlay,
    plot_per_class_iou,
    plot_predictions,
    plot_pseudo_labels,
    plot_samples,
)
from advseg_utils.voc_gen import IMAGENET_MEAN_RGB, VOCGen

__version__ = "0.1.0"
