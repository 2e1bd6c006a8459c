"""How frames are stored in the frame store: the codecs of ``cache.codec`` (docs/data-formats.md §13).

* ``jpeg`` (the default): every frame a baseline JPEG file (libjpeg-turbo through
  ``imagecodecs``), 4:4:4 chroma, quality ``cache.quality`` (94 by default, the lowest that
  kept every real video of the benchmark above 40 dB PSNR with a margin: about 7× smaller than
  raw, encoding in ~0.3 ms and decoding in ~0.4 ms per 192×320 frame on one core);
* ``jpegxl``: every frame a JPEG XL codestream (libjxl, same quality scale: 90 is distance 1),
  smaller again but about 4× slower to decode (see docs/data-formats.md §13);
* ``zstd``: the raw pixels, zstd level 1 (lossless, ~1.3× on real footage);
* ``raw``: the raw pixels, uncompressed (lossless; the reference the others are measured against).

Image codecs store a row as ``K`` encoded images (a variable-length bytes array, one element per
frame); ``raw`` and ``zstd`` store it as ``K × H × W × 3`` uint8 pixels. ``encode``/``decode``
are the only functions that know the difference: the cache writes what ``encode`` returns,
every reader calls ``decode`` on what it reads.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DataError

CODECS = ("jpeg", "jpegxl", "zstd", "raw")
IMAGE_CODECS = ("jpeg", "jpegxl")  # one encoded image per frame
DEFAULT_QUALITY = 94  # docs/data-formats.md §13: the measurements behind it
JPEGXL_EFFORT = 3  # libjxl's encoder effort: 3 encodes ~5x faster than its default 7 for ~2% more bytes
ZSTD_LEVEL = 1  # level 3 gained ~3% for 1.5x the time on decoded frames


def is_image_codec(codec: str) -> bool:
    return codec in IMAGE_CODECS


def codec_tag(codec: str, quality: int | None) -> str:
    """The store's ``frames_codec`` attribute: what a reader needs to know about the bytes."""
    if codec == "raw":
        return "none"
    if codec == "zstd":
        return f"zstd-{ZSTD_LEVEL}"
    if codec == "jpegxl":
        return f"jpegxl-q{quality}-e{JPEGXL_EFFORT}"
    return f"jpeg-q{quality}-444"


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - a dependency of the package
        raise DataError("the jpeg and jpegxl frame codecs need the imagecodecs package (pip install imagecodecs)") from None
    return imagecodecs


def encode(frames: np.ndarray, codec: str, quality: int | None) -> np.ndarray:
    """One row's frames ``(K, H, W, 3)`` uint8 as the store keeps them: the same array for
    ``raw``/``zstd`` (Zarr compresses it), else a ``(K,)`` object array of encoded images."""
    if not is_image_codec(codec):
        return frames
    ic = _imagecodecs()
    out = np.empty(len(frames), dtype=object)
    for i, frame in enumerate(frames):
        frame = np.ascontiguousarray(frame)
        if codec == "jpeg":
            out[i] = ic.jpeg8_encode(frame, level=quality, subsampling=(1, 1))
        else:
            out[i] = ic.jpegxl_encode(frame, level=quality, effort=JPEGXL_EFFORT, numthreads=1)
    return out


def decode(data: np.ndarray, codec: str, shape: Sequence[int]) -> np.ndarray:
    """Rows read from the store back to uint8 pixels of ``shape`` (``(..., K, H, W, 3)``).

    ``data`` is what the store holds for those rows: pixels (returned as they are) or an object
    array ``(..., K)`` of encoded images. A missing image (a row never written) or one of
    another size is a ``DataError``: a store whose files were damaged never feeds training
    garbage."""
    if not is_image_codec(codec):
        return data
    ic = _imagecodecs()
    out = np.empty(tuple(shape), dtype=np.uint8)
    flat_out = out.reshape((-1,) + tuple(shape[-3:]))
    for i, blob in enumerate(np.asarray(data, dtype=object).reshape(-1)):
        if not blob:
            raise DataError("a stored frame is empty (its row was never written)")
        try:
            image = ic.jpeg8_decode(blob) if codec == "jpeg" else ic.jpegxl_decode(blob, numthreads=1)
        except Exception as exc:  # noqa: BLE001 - imagecodecs raises its own error per codec
            raise DataError(f"a stored {codec} frame does not decode ({type(exc).__name__}: {exc})") from None
        if image.shape != flat_out.shape[1:]:
            raise DataError(f"a stored {codec} frame is {image.shape}, the store's frames are {flat_out.shape[1:]}")
        flat_out[i] = image
    return out
