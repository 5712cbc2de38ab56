"""How generated images are stored (`--image-format`, `--quality`): PNG (lossless), JPEG or WebP.

Every encoder here is deterministic: Pillow writes no timestamp or EXIF into any of the three, so
equal pixels and settings give equal bytes and a retried shard stores what its first try stored.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

ImageFormat = Literal["png", "jpeg", "webp"]
LOSSY_FORMATS: tuple[ImageFormat, ...] = ("jpeg", "webp")
DEFAULT_QUALITY = 95  # img2dataset's default JPEG quality; the storage figures are at q95

# File extension of each format (image keys, webdataset members, the Parquet `path` field) and the
# reverse map for reading; .jpeg is what other tools write for JPEG too.
EXTENSIONS: dict[ImageFormat, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
FORMAT_OF_SUFFIX: dict[str, ImageFormat] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}

PNG_COMPRESS_LEVEL = 6  # zlib's default: the bytes every earlier png set holds
JPEG_SUBSAMPLING = "4:2:0"  # libjpeg's and OpenCV's default chroma subsampling (what img2dataset writes)
WEBP_METHOD = 4  # libwebp's default speed/size trade-off (0 fastest .. 6 smallest)


@dataclass(frozen=True)
class ImageEncoding:
    """An image format and, for the lossy ones, its quality (1..100).

    Usage::

        enc = ImageEncoding("jpeg", 95)
        data = enc.encode(image)  # image: uint8 [H, W, 3] -> JPEG bytes
        enc.extension  # "jpg"
        ImageEncoding().encode(image)  # PNG, compress level 6
    """

    format: ImageFormat = "png"
    quality: int | None = None

    def __post_init__(self) -> None:
        # JobConfig refuses bad flags with a message; this guards the inner code's invariant.
        if self.format not in EXTENSIONS:
            raise ValueError(f"image format {self.format!r}: expected one of {', '.join(EXTENSIONS)}")
        if self.lossless and self.quality is not None:
            raise ValueError(f"{self.format} is lossless: it takes no quality")
        if not self.lossless and (self.quality is None or not 1 <= self.quality <= 100):
            raise ValueError(f"{self.format} needs a quality in 1..100, got {self.quality!r}")

    @classmethod
    def of(cls, fmt: ImageFormat, quality: int | None = None) -> ImageEncoding:
        """`quality` defaults to DEFAULT_QUALITY for the lossy formats."""
        if fmt in LOSSY_FORMATS and quality is None:
            quality = DEFAULT_QUALITY
        return cls(fmt, quality)

    @property
    def lossless(self) -> bool:
        return self.format not in LOSSY_FORMATS

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    def describe(self) -> str:
        return self.format if self.quality is None else f"{self.format} q{self.quality}"

    def encode(self, image: np.ndarray) -> bytes:
        """uint8 RGB [H, W, 3] to the stored bytes (Pillow releases the GIL while it encodes)."""
        buf = io.BytesIO()
        pil = Image.fromarray(image)
        if self.format == "png":
            pil.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        elif self.format == "jpeg":
            pil.save(buf, format="JPEG", quality=self.quality, subsampling=JPEG_SUBSAMPLING)
        else:
            pil.save(buf, format="WEBP", quality=self.quality, method=WEBP_METHOD)
        return buf.getvalue()


PNG = ImageEncoding()


def format_of_key(key: str) -> ImageFormat | None:
    """The image format a key or member name ends in (`...#00000042.jpg` -> "jpeg"), None if unknown."""
    dot = key.rfind(".")
    return FORMAT_OF_SUFFIX.get(key[dot:].lower()) if dot >= 0 else None
