"""Real photos: ``prepare`` (photos -> a labelled Busto dataset; docs/photo.md). Needs the ``photo`` extra
(mediapipe 0.10.21) at run time; importing this package does not."""

from .prepare import PhotoError, PreparedPhoto, load_photo, prepare, prepare_photo

__all__ = ["PhotoError", "PreparedPhoto", "load_photo", "prepare", "prepare_photo"]
