"""Datasets (Fashion-MNIST IDX files, ImageNet-style folders, segmentation folders), timm transforms and resumable
loaders."""

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
    "AugmentConfig",
    "DatasetError",
    "FashionMNIST",
    "ImageFolderDataset",
    "ResumableSampler",
    "SegmentationEvalTransform",
    "SegmentationFolder",
    "SegmentationTrainTransform",
    "build_transform",
    "create_dataset",
    "create_loader",
    "dataset_stats",
    "default_data_dir",
    "load_fashion_mnist",
    "make_synthetic_fashion_mnist",
    "read_idx",
    "set_loader_epoch",
    "write_idx",
]
