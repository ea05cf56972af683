"""Training pairs (HR crop, degraded LR crop, caption) from folders of images or GeoTIFFs.

Every sample is a pure function of ``(seed, epoch, index)``: the crop window, the
augmentation and the degradation are drawn from ``numpy.random.default_rng([seed, epoch,
index])``. So a run is reproducible, a resumed run sees the same data, and DataLoader
workers (which each hold a copy of the dataset) need no shared random state. No file handle
is kept open between samples, which is what makes the dataset safe to fork or pickle into
workers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.windows import Window
from torch.utils.data import Dataset

from geosr.captioning import Captioner, load_captioner
from geosr.errors import InputError
from geosr.degradations import MIXED, PROTOCOLS, degrade, describe, mixture_weights

__all__ = ["IMAGE_SUFFIXES", "MASK_RULES", "SRPairDataset", "find_images"]

logger = logging.getLogger(__name__)

#: File suffixes picked up from folders. TIFFs are read with rasterio (windowed, with their
#: nodata / internal mask); the others with Pillow.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_TIFF_SUFFIXES = (".tif", ".tiff")


def find_images(sources: str | Path | Iterable[str | Path]) -> list[Path]:
    """Image files of ``sources`` (files, or folders searched recursively), sorted.

    Raises
    ------
    InputError
        A source does not exist or nothing was found.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    found: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found += [p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        elif source.is_file():
            found.append(source)
        else:
            raise InputError(f"training source {source} does not exist")
    if not found:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {list(map(str, sources))}")
    return sorted(set(found))


@dataclass(frozen=True)
class _ImageInfo:
    path: Path
    width: int
    height: int
    count: int
    dtype: str
    masked: bool  # has a nodata value, an internal mask or alpha


def _probe(path: Path) -> _ImageInfo:
    if path.suffix.lower() in _TIFF_SUFFIXES:
        with rasterio.open(path) as src:
            masked = src.nodata is not None or any(
                flag != rasterio.enums.MaskFlags.all_valid for flag in src.mask_flag_enums[0]
            )
            return _ImageInfo(path, src.width, src.height, src.count, src.dtypes[0], masked)
    with Image.open(path) as img:
        count = len(img.getbands()) if img.mode in ("L", "RGB", "RGBA") else 3
        return _ImageInfo(path, img.width, img.height, count, "uint8", False)


def _to_unit(array: np.ndarray) -> np.ndarray:
    """``C x H x W`` raster values -> ``H x W x C`` float32 in [0, 1].

    Integers are divided by their dtype's maximum (training imagery is expected to be
    8-bit or already stretched, like the tiles the inference engine feeds the model).
    """
    if array.dtype.kind in "iu":
        out = array.astype(np.float32) / np.iinfo(array.dtype).max
    else:
        out = array.astype(np.float32)
    return np.clip(out, 0.0, 1.0).transpose(1, 2, 0)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """``H x W x C`` float image -> ``size x size x C`` by antialiased bicubic, clipped to [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bicubic", antialias=True,
                                          align_corners=False)
    return out[0].clamp_(0.0, 1.0).numpy().transpose(1, 2, 0)


def _jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A random brightness / contrast / per-band gain / gamma change of an image in [0, 1]."""
    bands = image.shape[2]
    gain = (1.0 + rng.uniform(-strength, strength)) * (1.0 + rng.uniform(-strength, strength, bands) / 3)
    contrast = 1.0 + rng.uniform(-strength, strength)
    gamma = float(np.exp(rng.uniform(-strength, strength)))
    mean = image.mean(axis=(0, 1), keepdims=True)
    out = (image - mean) * contrast + mean
    out = np.clip(out * gain.astype(np.float32), 0.0, 1.0) ** gamma
    return out.astype(np.float32)


def _load_captions(path: Path) -> dict[str, str]:
    """A JSON object mapping image file name (or path relative to any source) to caption."""
    with open(path, encoding="utf-8") as f:
        captions = json.load(f)
    if not isinstance(captions, dict):
        raise InputError(f"{path}: a captions file is a JSON object {{image name: caption}}")
    return {str(k): str(v) for k, v in captions.items()}


#: ``masked_where`` rules of :class:`SRPairDataset`.
MASK_RULES = ("any_band", "every_band")


class SRPairDataset(Dataset):
    """Random HR crops with their synthetically degraded LR and a caption.

    Parameters
    ----------
    sources : path or sequence of paths
        Image files or folders (PNG/JPEG/TIFF, GeoTIFF scenes of any size).
    crop_size : int
        HR crop side in pixels; a multiple of ``scale``.
    scale : int
        Super-resolution factor; the LR side is ``crop_size // scale``.
    protocol : {"clean", "iso", "aniso", "mixed"}
        Degradation protocol, see :mod:`geosr.degradations`.
    captions : str
        ``"truth"``: written from the sampled degradation (:func:`describe`);
        ``"captioner:<spec>"``: a :mod:`geosr.captioning` captioner run on the LR crop;
        ``"file:<path.json>"``: a fixed caption per image, looked up by relative path or
        file name; ``"none"``: empty captions.
    bands : sequence of int
        1-based bands to read (default: the first three).
    crops_per_image : int
        Samples per image and epoch (scenes much larger than a crop deserve more).
    max_nodata_fraction : float
        Windows with a larger fraction of masked pixels are rejected and redrawn.
    jpeg_prob : float
        Probability of a JPEG step in the degradation.
    mix : dict, optional
        ``protocol="mixed"``: the share of each protocol (default: the module default of
        :mod:`geosr.degradations`).
    shuffle : bool
        Visit the images in a new order each epoch (a permutation drawn from ``(seed,
        epoch)``), so the DataLoader itself need not shuffle and a resumed run, skipping the
        batches already seen, gets exactly the batches it would have got.
    augment : bool
        Random flips and 90-degree rotations of the HR crop.
    rescale_prob : float
        Probability that a crop is drawn at another ground sample distance: a window
        ``1/f`` times the crop side, ``f`` uniform in ``rescale_range``, resized to the crop
        (antialiased bicubic). The training sets hold two GSDs (0.1 m NEON, 0.3 m UC Merced);
        users' scenes hold any.
    rescale_range : (float, float)
        Range of the factor ``f``; ``f < 1`` coarsens the GSD (downsampling, which sharpens
        per pixel), ``f > 1`` is not allowed (upsampling would teach blur as "sharp").
    color_jitter : float
        Strength ``j`` of a random photometric change of the HR crop (before degradation):
        brightness and contrast by ``1 +- j``, per-band gain by ``1 +- j/3``, gamma by
        ``exp(+-j)``; clipped to [0, 1]. 0 turns it off.
    single_band_prob : float
        Probability that the crop is one of its bands (drawn at random) copied into every
        channel: how geosr feeds a band that is not R, G or B - NIR, red edge, SWIR,
        panchromatic - to an RGB model (:func:`geosr.tasks.upscale_batch`), which a model
        trained on colour crops alone has never seen. Drawn after the colour jitter, so the
        band carries its own gain and gamma.
    masked_where : {"any_band", "every_band"}
        Which pixels of a masked image count as no-data for ``max_nodata_fraction``: where any band
        holds nodata (the first recipes' rule; a NEON plot declares 255, so one saturated band
        rejected the window, and at 224 px crops two thirds of the plots were never drawn) or
        where every band does (GDAL's dataset mask, as :func:`geosr.reading.dataset_valid`).
    quantise_lr : bool
        Round the LR to 8-bit levels (1/255), as the tiles geosr upscales and ``geosr evaluate``'s
        LRs are; draws no random number, so a recipe's random streams stay.
    seed : int
        Base seed; see the module docstring.
    cache : bool
        Keep decoded Pillow images in memory (per worker process); GeoTIFFs are always read
        by window.
    """

    def __init__(
        self,
        sources: str | Path | Sequence[str | Path],
        crop_size: int,
        scale: int,
        protocol: str = "aniso",
        captions: str = "truth",
        bands: Sequence[int] = (1, 2, 3),
        crops_per_image: int = 1,
        max_nodata_fraction: float = 0.0,
        jpeg_prob: float = 0.0,
        mix: dict[str, float] | None = None,
        shuffle: bool = True,
        augment: bool = True,
        rescale_prob: float = 0.0,
        rescale_range: tuple[float, float] = (0.5, 1.0),
        color_jitter: float = 0.0,
        single_band_prob: float = 0.0,
        masked_where: str = "any_band",
        quantise_lr: bool = False,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        if masked_where not in MASK_RULES:
            raise InputError(f"masked_where {masked_where!r}: use one of {', '.join(MASK_RULES)}")
        self.masked_where, self.quantise_lr = masked_where, bool(quantise_lr)
        if crop_size % scale:
            raise InputError(f"crop_size {crop_size} is not a multiple of scale {scale}")
        if protocol not in PROTOCOLS + (MIXED,):
            raise InputError(f"unknown degradation protocol {protocol!r}: use one of {PROTOCOLS + (MIXED,)}")
        self.crop_size, self.scale, self.protocol = int(crop_size), int(scale), protocol
        self.bands = tuple(int(b) for b in bands)
        self.crops_per_image = int(crops_per_image)
        self.max_nodata_fraction = float(max_nodata_fraction)
        self.jpeg_prob, self.augment, self.seed = float(jpeg_prob), bool(augment), int(seed)
        low, high = (float(v) for v in rescale_range)
        if not 0.0 < low <= high <= 1.0:
            raise InputError(f"rescale_range {rescale_range}: need 0 < low <= high <= 1")
        if not (0.0 <= rescale_prob <= 1.0 and 0.0 <= single_band_prob <= 1.0) or color_jitter < 0.0:
            raise InputError(f"rescale_prob {rescale_prob} and single_band_prob {single_band_prob} must lie in "
                             f"[0, 1], color_jitter {color_jitter} >= 0")
        self.rescale_prob, self.rescale_range = float(rescale_prob), (low, high)
        self.color_jitter, self.single_band_prob = float(color_jitter), float(single_band_prob)
        self.mix = None if mix is None else mixture_weights(mix)
        self.cache, self.shuffle = cache, bool(shuffle)
        self.epoch = 0
        roots = [Path(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
        self._roots = [r for r in roots if r.is_dir()]
        infos = [_probe(p) for p in find_images(roots)]
        self.images = [
            i for i in infos if min(i.width, i.height) >= crop_size and i.count >= max(self.bands)
        ]
        if len(self.images) < len(infos):
            logger.info("skipped %d images smaller than the crop or with too few bands",
                        len(infos) - len(self.images))
        if not self.images:
            raise InputError(f"no image is at least {crop_size} px with bands {self.bands}")
        kind, _, arg = captions.partition(":")
        if kind not in ("truth", "captioner", "file", "none") or (kind in ("captioner", "file") and not arg):
            raise InputError(
                f"captions {captions!r}: use truth, none, captioner:<spec> or file:<path.json>"
            )
        self.caption_kind, self.caption_arg = kind, arg
        self._captions = _load_captions(Path(arg)) if kind == "file" else None
        self._captioner: Captioner | None = None
        self._decoded: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.images) * self.crops_per_image

    def set_epoch(self, epoch: int) -> None:
        """Draw new windows and degradations (call before iterating an epoch's DataLoader)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if self.shuffle:
            index = int(np.random.default_rng([self.seed, self.epoch]).permutation(len(self))[index])
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        # an image whose windows are all rejected hands over to the next one
        factor = 1.0
        if self.rescale_prob and rng.random() < self.rescale_prob:
            factor = float(rng.uniform(*self.rescale_range))
        for k in range(len(self.images)):
            info = self.images[(index + k) % len(self.images)]
            # the window a factor-f crop needs, as large as the image allows
            window = min(round(self.crop_size / factor), info.width, info.height)
            hr = self._random_crop(info, rng, window)
            if hr is not None:
                break
        else:
            raise InputError("every image is masked everywhere (nodata) at this crop size")
        if hr.shape[0] != self.crop_size:
            hr = _resize(hr, self.crop_size)
        if self.color_jitter:
            hr = _jitter(hr, self.color_jitter, rng)
        # drawn only when asked, so that recipes without it keep their exact random streams
        if self.single_band_prob and rng.random() < self.single_band_prob:
            band = int(rng.integers(hr.shape[2]))
            hr = np.repeat(hr[:, :, band : band + 1], hr.shape[2], axis=2)
        if self.augment:
            hr = np.rot90(hr, k=int(rng.integers(4)))
            if rng.random() < 0.5:
                hr = hr[:, ::-1]
        hr = np.ascontiguousarray(hr)
        lr, params = degrade(
            hr, self.scale, self.protocol, rng=rng, jpeg_prob=self.jpeg_prob, mix=self.mix
        )
        if self.quantise_lr:
            lr = np.round(np.clip(lr, 0.0, 1.0) * 255.0).astype(np.float32) / 255.0
        hr_t = torch.from_numpy(hr.transpose(2, 0, 1).copy())
        lr_t = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))
        return {"hr": hr_t, "lr": lr_t, "caption": self._caption(info, lr_t, describe(params))}

    def _random_crop(self, info: _ImageInfo, rng: np.random.Generator, size: int, tries: int = 50):
        """An ``size x size x C`` float crop, or None when ``tries`` windows were all too masked."""
        if info.path.suffix.lower() not in _TIFF_SUFFIXES:
            image = self._pillow(info.path)
            row = int(rng.integers(info.height - size + 1))
            col = int(rng.integers(info.width - size + 1))
            return image[row : row + size, col : col + size]
        with rasterio.open(info.path) as src:
            for _ in range(tries):
                window = Window(
                    int(rng.integers(info.width - size + 1)),
                    int(rng.integers(info.height - size + 1)),
                    size,
                    size,
                )
                if info.masked:
                    masks = src.read_masks(self.bands, window=window)
                    valid = (masks.max(axis=0) if self.masked_where == "every_band" else masks.min(axis=0)) > 0
                    if 1.0 - valid.mean() > self.max_nodata_fraction:
                        continue
                return _to_unit(src.read(self.bands, window=window))
        return None

    def _pillow(self, path: Path) -> np.ndarray:
        if path in self._decoded:
            return self._decoded[path]
        with Image.open(path) as img:
            # palette / CMYK / 16-bit modes have no direct numpy band layout
            array = np.asarray(img if img.mode in ("L", "RGB", "RGBA") else img.convert("RGB"))
        if array.ndim == 2:
            array = array[:, :, None]
        image = _to_unit(array.transpose(2, 0, 1)[[b - 1 for b in self.bands]])
        if self.cache:
            self._decoded[path] = image
        return image

    def _caption(self, info: _ImageInfo, lr: torch.Tensor, truth: str) -> str:
        if self.caption_kind == "truth":
            return truth
        if self.caption_kind == "none":
            return ""
        if self.caption_kind == "captioner":
            # built lazily so that each DataLoader worker loads its own copy
            if self._captioner is None:
                self._captioner = load_captioner(self.caption_arg)
            return self._captioner.caption(lr[None])[0]
        keys = [str(info.path.relative_to(r)) for r in self._roots if info.path.is_relative_to(r)]
        for key in keys + [str(info.path), info.path.name]:
            if key in self._captions:
                return self._captions[key]
        raise InputError(f"no caption for {info.path} in {self.caption_arg}")
