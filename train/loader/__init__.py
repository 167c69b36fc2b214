"""One declarative loader for every trainer, as small modules by concern.

Stages of one (rank, worker) slot, in order::

    plan      pieces of shards for this slot, balanced by the manifest's counts   (plan.py)
    read      tar members -> (url, key, image bytes), hashed against the manifest (read.py)
    shuffle   seeded passes through a shuffle buffer; per-sample multiplicities  (shuffle.py)
    decode    torchvision.io.decode_jpeg; PNG through Pillow                     (decode.py)
    transform the method's native augmentation, one view or several             (transform.py, views.py)
    batch     written in place into a (shared-memory) uint8 batch                (batch.py)

``stream.py`` puts them behind a DataLoader with a fixed epoch length on every rank; ``folder.py`` gives
labelled ImageFolder / CIFAR data the same interface. Measurements: docs/training.md, *Throughput*.
"""
from train.loader.decode import decode_image, prepare
from train.loader.plan import plan_epoch
from train.loader.read import SKIPPED, ShardError, TarFormatError, tar_samples
from train.loader.stream import ShardLoader, check_local_shards, make_loader, with_transform
from train.loader.transform import (CropFlip, Transform, center_crop, random_crop_flip, random_resized_crop_flip,
                                    resize_center_crop)

__all__ = ["CropFlip", "SKIPPED", "ShardError", "ShardLoader", "TarFormatError", "Transform", "center_crop",
           "check_local_shards", "decode_image", "make_loader", "plan_epoch", "prepare", "random_crop_flip",
           "random_resized_crop_flip", "resize_center_crop", "tar_samples", "with_transform"]
