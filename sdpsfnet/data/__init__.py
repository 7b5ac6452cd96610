"""Data: image files in and out (:mod:`.images`), folders of images and rainy/clean pairs
(:mod:`.folders`), training augmentation (:mod:`.augment`) and the built-in synthetic rain
(:mod:`.rain`, imported on use)."""
from .augment import pad_to, random_crop, random_flip_rot
from .folders import (IMAGE_EXTENSIONS, PairedImages, check_pairs, find_pairs, image_files, images_by_key,
                      match_by_key, natural_key)
from .images import PixelFormat, image_size, load_image, max_pixels, read_image, save_as, save_image

__all__ = ["IMAGE_EXTENSIONS", "PixelFormat", "read_image", "load_image", "image_size", "image_files",
           "max_pixels", "save_image", "save_as", "check_pairs", "find_pairs", "images_by_key", "match_by_key",
           "PairedImages", "random_crop", "random_flip_rot", "pad_to", "natural_key"]
