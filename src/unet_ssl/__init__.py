"""unet-ssl: self-supervised U-Net pretraining for pet segmentation, as a reproducible experiment."""

__version__ = "0.1.0"
