"""Loading labelled files into arrays through lungct's one preprocessing path, and tf.data pipelines."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from lungct.config import PreprocessConfig, TrainConfig
from lungct.dataset import Sample, duplicate_groups, file_digest, scan_groups, view_distances
from lungct.decode import DecodeError, decode_image
from lungct.labels import CLASSES
from lungct.preprocess import lungs_box, preprocess, resize, shrink, stretch_contrast

log = logging.getLogger("lungct.training")


# Near duplicates are found on one fixed framing, whatever a run's preprocessing or the recipe's defaults, so
# that every CV run, today's and later ones, is scored on the same folds (the 128-pixel framing they were made on).
GROUPING = PreprocessConfig(size=128, crop_foreground=True, crop_to="body", keep_aspect=True, foreground_threshold=0.1,
                            low_percentile=0.5, high_percentile=99.5, intensity="percentile")
THUMBNAIL = 16


def lung_view(image: np.ndarray, work: int = 128) -> np.ndarray:
    """The lungs' bounding box stretched onto a THUMBNAIL square: the same for copies of a slice that were
    cropped, zoomed or framed differently, which the body framing tells apart."""
    small, _ = shrink(image, work, GROUPING)
    top, bottom, left, right = lungs_box(small) or (0, small.shape[0], 0, small.shape[1])
    return stretch_contrast(resize(small[top:bottom, left:right], THUMBNAIL, THUMBNAIL),
                            GROUPING.low_percentile, GROUPING.high_percentile)


def thumbnail(image: np.ndarray) -> np.ndarray:
    """Two THUMBNAIL-square views of a decoded slice for near-duplicate search, the same for every run so
    folds are too: the GROUPING framing, and the lungs' box (lung_view)."""
    return np.stack([resize(preprocess(image, GROUPING)[..., 0], THUMBNAIL, THUMBNAIL), lung_view(image)])


@dataclass
class LoadedSet:
    images: np.ndarray
    labels: np.ndarray
    samples: list[Sample]
    digests: list[str]
    thumbnails: np.ndarray
    skipped: list[str] = field(default_factory=list)

    def subset(self, index: np.ndarray) -> "LoadedSet":
        return LoadedSet(
            self.images[index], self.labels[index], [self.samples[i] for i in index], [self.digests[i] for i in index],
            self.thumbnails[index],
        )

    def groups(self, scan_radius: float = 0.0, scan_cap: int = TrainConfig().scan_cap) -> np.ndarray:
        """Duplicate groups; with a scan radius, grown towards whole scans (lungct.dataset.scan_groups)."""
        groups = duplicate_groups(self.digests, self.thumbnails)
        return scan_groups(groups, self.thumbnails, scan_radius, scan_cap) if scan_radius > 0 else groups


def load_set(samples: list[Sample], config: PreprocessConfig) -> LoadedSet:
    """Decode and preprocess every sample; unreadable files are skipped with a warning naming each."""
    images, labels, kept, digests, thumbnails, skipped = [], [], [], [], [], []
    for sample in samples:
        try:
            decoded = decode_image(sample.path.read_bytes(), str(sample.path))
        except (DecodeError, OSError) as exc:
            log.warning("skipping %s", exc)
            skipped.append(str(sample.path))
            continue
        images.append(preprocess(decoded, config))
        thumbnails.append(thumbnail(decoded))
        labels.append(sample.label)
        kept.append(sample)
        digests.append(file_digest(sample.path))
    if not kept:
        raise ValueError("no readable images were found")
    return LoadedSet(np.stack(images), np.array(labels, dtype=np.int64), kept, digests, np.stack(thumbnails), skipped)


def concat(a: LoadedSet, b: LoadedSet) -> LoadedSet:
    return LoadedSet(
        np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]),
        a.samples + b.samples, a.digests + b.digests, np.concatenate([a.thumbnails, b.thumbnails]),
        a.skipped + b.skipped,
    )


def clean_training_set(data: LoadedSet) -> LoadedSet:
    """Drop files whose bytes appear under two labels, and keep one copy of each exact duplicate."""
    labels_by_digest: dict[str, set[int]] = {}
    for digest, label in zip(data.digests, data.labels):
        labels_by_digest.setdefault(digest, set()).add(int(label))
    seen: set[str] = set()
    keep = []
    for i, digest in enumerate(data.digests):
        if len(labels_by_digest[digest]) > 1:
            log.warning("dropping %s: the same bytes are labelled %s", data.samples[i].path,
                        sorted(CLASSES[j] for j in labels_by_digest[digest]))
        elif digest not in seen:
            keep.append(i)
        seen.add(digest)
    return data.subset(np.array(keep))


def series_of(names: list[str]) -> np.ndarray:
    """"numbered" for files named by a number (the data set's main series), "other" for the rest."""
    return np.array(["numbered" if name[:1].isdigit() else "other" for name in names])


def sample_weights(labels: np.ndarray, thumbnails: np.ndarray, density_radius: float = 0.0,
                   series: np.ndarray | None = None, series_balance: float = 0.0) -> np.ndarray:
    """Loss weight per training slice, mean 1, every class weighing the same in total. With a density
    radius, within its class each slice weighs 1 / (slices of the set, any class, within that view distance,
    itself included): a scan exported as many neighbouring slices counts about as much as a slice whose
    scan appears once, instead of teaching the class as "looks like that scan". With a series balance p,
    each slice's weight is also divided by (slices of its class and file series) ** p: at 1 every series
    of a class weighs the same in total, so a class is not learnt as "looks like its largest series"."""
    if density_radius > 0:
        raw = 1.0 / np.array([(view_distances(thumbnails, i) < density_radius).sum() for i in range(len(labels))])
    else:
        raw = np.ones(len(labels))
    if series_balance > 0:
        cells = [f"{label}/{name}" for label, name in zip(labels, series)]
        counts = {cell: cells.count(cell) for cell in set(cells)}
        raw = raw / np.array([counts[cell] for cell in cells]) ** series_balance
    totals = np.bincount(labels, weights=raw, minlength=len(CLASSES))
    return (raw * len(labels) / (len(CLASSES) * totals[labels])).astype(np.float32)


def augmenter(seed: int, strength: float = 1.0):
    """Augmentation for CT slices: mirror, small rotations, zoom, shifts, contrast; ranges scale with strength."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.04 * strength, fill_mode="constant", seed=seed),
            layers.RandomZoom(0.12 * strength, fill_mode="constant", seed=seed),
            layers.RandomTranslation(0.06 * strength, 0.06 * strength, fill_mode="constant", seed=seed),
            layers.RandomContrast(min(0.2 * strength, 0.9), seed=seed),
        ],
        name="augment",
    )


def _partners(images, alpha: float):
    """A partner index for each example of a batch, and a weight ~ Beta(alpha, alpha) per example."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    a, b = tf.random.gamma([n], alpha), tf.random.gamma([n], alpha)
    return tf.random.shuffle(tf.range(n)), a / (a + b)


def _blend_labels(labels, partner, kept):
    import tensorflow as tf

    return kept[:, None] * labels + (1 - kept[:, None]) * tf.gather(labels, partner)


def mixup(images, labels, alpha: float):
    """Blend each example of a batch with another of the same batch, weight ~ Beta(alpha, alpha)."""
    import tensorflow as tf

    partner, weight = _partners(images, alpha)
    mixed = weight[:, None, None, None] * images + (1 - weight[:, None, None, None]) * tf.gather(images, partner)
    return mixed, _blend_labels(labels, partner, weight)


def cutmix(images, labels, alpha: float):
    """Paste a box of another example of the batch into each example (box area ~ 1 - Beta(alpha, alpha));
    labels are blended by the share of pixels each example keeps."""
    import tensorflow as tf

    partner, weight = _partners(images, alpha)
    side = tf.cast(tf.shape(images)[1], tf.float32)
    half = tf.sqrt(1.0 - weight) * side / 2
    n = tf.shape(images)[0]
    coords = tf.range(side)

    def inside():
        centre = tf.random.uniform([n], 0.0, side)
        return (coords[None, :] >= (centre - half)[:, None]) & (coords[None, :] < (centre + half)[:, None])

    box = tf.cast(inside()[:, :, None] & inside()[:, None, :], images.dtype)[..., None]
    mixed = images * (1 - box) + tf.gather(images, partner) * box
    return mixed, _blend_labels(labels, partner, 1 - tf.reduce_mean(box, axis=[1, 2, 3]))


def appearance(images, blur: float, gamma: float, saturate: float = 0.0):
    """Per slice, a white level ~ U(1 - saturate, 1) above which intensities saturate (soft tissue turns
    white, as in a narrower lung window), a gamma curve x ** exp(U(-gamma, gamma)) and a Gaussian blur of
    sigma ~ U(0, blur) pixels: how a slice's source windowed it and how sharp it was stop being cues."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    if saturate > 0:
        white = 1.0 - tf.random.uniform([n], 0.0, saturate)
        images = tf.minimum(images / white[:, None, None, None], 1.0)
    if gamma > 0:
        exponent = tf.exp(tf.random.uniform([n], -gamma, gamma))
        images = tf.pow(tf.maximum(images, 0.0), exponent[:, None, None, None])
    if blur > 0:
        radius = math.ceil(3 * blur)
        offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
        sigma = tf.random.uniform([n, 1], 0.0, blur) + 1e-3
        kernel = tf.exp(-0.5 * tf.square(offsets[None, :] / sigma))
        kernel = tf.transpose(kernel / tf.reduce_sum(kernel, axis=1, keepdims=True))  # (taps, n)
        # the batch becomes the channels of one image so that each slice gets its own kernel
        stacked = tf.transpose(images, [3, 1, 2, 0])
        stacked = tf.nn.depthwise_conv2d(stacked, kernel[:, None, :, None], [1, 1, 1, 1], "SAME")
        stacked = tf.nn.depthwise_conv2d(stacked, kernel[None, :, :, None], [1, 1, 1, 1], "SAME")
        images = tf.transpose(stacked, [3, 1, 2, 0])
    return images


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, recipe: TrainConfig | None = None,
                 weights: np.ndarray | None = None):
    """A tf.data pipeline of (image, one-hot label) batches. Without a recipe, the slices in order; with one,
    shuffled training batches of (image, label, loss weight: `weights`, 1 when None) with the recipe's
    augmentation, appearance changes, then mixup and cutmix."""
    import tensorflow as tf

    one_hot = np.eye(len(CLASSES), dtype=np.float32)[labels]
    if recipe is None:
        return tf.data.Dataset.from_tensor_slices((images.astype(np.float32), one_hot)).batch(batch_size).prefetch(
            tf.data.AUTOTUNE)
    weights = np.ones(len(labels), np.float32) if weights is None else weights.astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), one_hot, weights))
    ds = ds.shuffle(len(images), seed=recipe.seed, reshuffle_each_iteration=True).batch(batch_size)
    if recipe.augment:
        aug = augmenter(recipe.seed, recipe.augment_strength)
        ds = ds.map(lambda x, y, w: (tf.clip_by_value(aug(x, training=True), 0.0, 1.0), y, w),
                    num_parallel_calls=tf.data.AUTOTUNE)
    if recipe.blur > 0 or recipe.gamma > 0 or recipe.saturate > 0:
        ds = ds.map(lambda x, y, w: (appearance(x, recipe.blur, recipe.gamma, recipe.saturate), y, w),
                    num_parallel_calls=tf.data.AUTOTUNE)
    if recipe.mixup > 0:
        ds = ds.map(lambda x, y, w: (*mixup(x, y, recipe.mixup), w), num_parallel_calls=tf.data.AUTOTUNE)
    if recipe.cutmix > 0:
        ds = ds.map(lambda x, y, w: (*cutmix(x, y, recipe.cutmix), w), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
