"""`python -m jobs.benchmark --encode-only`'s harness: image encoding throughput and size per format.

For each image size and encoding (`png`, `jpeg:95`, `webp:95`, ...) prints one JSON line with the
bytes per image and the encode images/s on 1..N threads, the way the job's IO pool encodes (one
image per call, Pillow releasing the GIL inside the codec). `threads_per_gpu_image_per_s` is
1 / (one thread's images/s): multiply it by a GPU worker's sampling images/s for the encoding
threads (`--io-threads`) that worker needs so that sampling never waits on encoding.
`python_thread_share` is how fast a pure-Python thread runs while this thread encodes, relative to
running alone: near 0 would mean the codec holds the GIL, and extra threads could not help.

Images are synthetic unless `--encode-source DIR` gives real ones: colour fields with the 1/f
amplitude spectrum of natural photographs (Field 1987) and correlated channels. Bytes per image
depend on content; rerun on a folder of your own samples for the figures of your dataset.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, BeforeValidator, ConfigDict, PositiveInt, model_validator

from dit_worker.output.encoding import FORMAT_OF_SUFFIX, LOSSY_FORMATS, ImageEncoding


def parse_encoding(text: Any) -> Any:
    """FORMAT[:QUALITY] (`png`, `jpeg:95`, `webp`) as an ImageEncoding; other values are left to pydantic."""
    if not isinstance(text, str):
        return text
    fmt, _, quality = text.partition(":")
    if fmt not in ("png", *LOSSY_FORMATS):
        raise ValueError(f"unknown format {fmt!r}; use png, jpeg[:Q] or webp[:Q]")
    if quality and not quality.strip().isdecimal():
        raise ValueError(f"the quality after ':' must be an integer, got {quality!r}")
    return ImageEncoding.of(fmt, int(quality) if quality else None)  # type: ignore[arg-type]


class EncodingBenchmark(BaseModel):
    """`jobs.benchmark --encode-only`: which images to encode, in which encodings, on how many threads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    encode_sizes: tuple[PositiveInt, ...] = (256, 512)  # image sides
    encodings: tuple[Annotated[ImageEncoding, BeforeValidator(parse_encoding)], ...] = (
        ImageEncoding.of("png"),
        ImageEncoding.of("jpeg"),
        ImageEncoding.of("webp"),
    )
    encode_images: PositiveInt = 32  # per size
    encode_threads: tuple[PositiveInt, ...] = (1, 2)  # thread counts to measure
    encode_repeats: PositiveInt = 5  # passes over the images; the best is reported
    encode_source: Path | None = None  # a folder of real images (resized to each size); None: synthetic

    @model_validator(mode="after")
    def _not_empty(self) -> EncodingBenchmark:
        for field in ("encode_sizes", "encodings", "encode_threads"):
            if not getattr(self, field):
                raise ValueError(f"--{field.replace('_', '-')} needs at least one value")
        return self


def natural_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3] random fields with a 1/f amplitude spectrum (power 1/f^2)."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        spectrum = (rng.normal(size=(3, *f.shape)) + 1j * rng.normal(size=(3, *f.shape))) / f
        field = np.fft.irfft2(spectrum, s=(size, size)).transpose(1, 2, 0)
        field = field @ (0.4 * np.eye(3) + 0.6 * rng.random((3, 3)))  # correlated R, G, B
        field = (field - field.mean()) / field.std()
        out[i] = np.clip(128 + 48 * field, 0, 255).astype(np.uint8)
    return out


def folder_images(folder: Path, n: int, size: int) -> np.ndarray:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in FORMAT_OF_SUFFIX)[:n]
    if not paths:
        raise ValueError(f"--encode-source {folder}: no images ({', '.join(FORMAT_OF_SUFFIX)}) found")
    images = []
    for path in paths:
        with Image.open(path) as img:
            images.append(np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)))
    return np.stack(images)


def encode_rate(encoding: ImageEncoding, images: np.ndarray, threads: int, repeats: int) -> tuple[float, int]:
    """(best images/s, mean bytes per image) encoding every image once per repeat on `threads` threads.

    The best repeat, as `timeit` reports its fastest: on a shared machine the others measure the
    neighbours' load, not the codec."""
    sizes: list[int] = []
    rates = []
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(encoding.encode, images[:threads]))  # warm-up: codec tables, thread start
        for _ in range(repeats):
            t = time.perf_counter()
            sizes = [len(b) for b in pool.map(encoding.encode, images)]
            rates.append(len(images) / (time.perf_counter() - t))
    return max(rates), round(sum(sizes) / len(sizes))


def python_thread_share(encoding: ImageEncoding, images: np.ndarray, seconds: float = 0.5) -> float:
    """Progress of a counting Python thread while this one encodes, over its progress alone."""

    def count(stop: threading.Event, out: list[int]) -> None:
        n = 0
        while not stop.is_set():
            n += 1
        out.append(n)

    rates = []
    for busy in (False, True):
        stop, out = threading.Event(), []
        counter = threading.Thread(target=count, args=(stop, out))
        counter.start()
        t = time.perf_counter()
        while time.perf_counter() - t < seconds:
            for image in images if busy else ():
                encoding.encode(image)
            if not busy:
                time.sleep(seconds)
        elapsed = time.perf_counter() - t
        stop.set()
        counter.join()
        rates.append(out[0] / elapsed)
    return rates[1] / rates[0]


def measure(config: EncodingBenchmark) -> Iterator[dict[str, Any]]:
    threads = config.encode_threads
    for size in config.encode_sizes:
        if config.encode_source:
            images = folder_images(config.encode_source, config.encode_images, size)
        else:
            images = natural_images(config.encode_images, size)
        for encoding in config.encodings:
            line: dict[str, Any] = {
                "encoding": encoding.describe(),
                "image_size": size,
                "images": len(images),
                "source": str(config.encode_source) if config.encode_source else "synthetic 1/f",
            }
            for t in threads:
                rate, mean_bytes = encode_rate(encoding, images, t, config.encode_repeats)
                line[f"images_per_s_{t}_threads"] = round(rate, 1)
                line["bytes_per_image"] = mean_bytes
            line["threads_per_gpu_image_per_s"] = round(1 / line[f"images_per_s_{threads[0]}_threads"] * threads[0], 4)
            line["python_thread_share"] = round(python_thread_share(encoding, images[:4]), 2)
            yield line


def run(config: EncodingBenchmark) -> list[dict[str, Any]]:
    lines = []
    for line in measure(config):
        print(json.dumps(line), flush=True)
        lines.append(line)
    return lines
