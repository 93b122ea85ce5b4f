"""Datasets (Fashion-MNIST IDX files, ImageNet-style folders, segmentation folders, COCO detection), timm transforms
and resumable loaders."""

from .detection import (
    MULTISCALE_TRAIN_SCALES,
    CocoDetection,
    DetectionEvalTransform,
    DetectionTrainTransform,
    FashionMNISTDetection,
    decode_segmentation,
    detection_collate,
    masks_to_tight_boxes,
)
from .fashion_mnist import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    DatasetError,
    FashionMNIST,
    load_fashion_mnist,
    make_synthetic_fashion_mnist,
    read_idx,
    write_idx,
)
from .folder import ImageFolderDataset
from .loader import (
    DATASETS,
    AugmentConfig,
    ResumableSampler,
    build_transform,
    create_dataset,
    create_loader,
    dataset_stats,
    default_data_dir,
    set_loader_epoch,
)
from .segmentation import SegmentationEvalTransform, SegmentationFolder, SegmentationTrainTransform

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "MULTISCALE_TRAIN_SCALES",
    "AugmentConfig",
    "CocoDetection",
    "DatasetError",
    "DetectionEvalTransform",
    "DetectionTrainTransform",
    "FashionMNIST",
    "FashionMNISTDetection",
    "ImageFolderDataset",
    "ResumableSampler",
    "SegmentationEvalTransform",
    "SegmentationFolder",
    "SegmentationTrainTransform",
    "build_transform",
    "create_dataset",
    "create_loader",
    "dataset_stats",
    "decode_segmentation",
    "default_data_dir",
    "detection_collate",
    "load_fashion_mnist",
    "make_synthetic_fashion_mnist",
    "masks_to_tight_boxes",
    "read_idx",
    "set_loader_epoch",
    "write_idx",
]
