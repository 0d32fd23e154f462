"""The sections of an experiment spec that describe what is trained on and with: the data (its
source, splits, resizing, normalisation and augmentation) and the model; typed, frozen and
strict like every section (`segsweep.spec` re-exports them and holds the rest of the spec)."""
from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer, model_validator

from .errors import SpecFieldError, unknown_key
from .names import check_name, names


def registry(where: str) -> Any:
    """The registry at `where` ('.models.MODELS'), imported on first use (torch): for what only
    an entry knows (a model's own rules), once the names have passed `names.check_name`."""
    module, _, name = where.rpartition(".")
    return getattr(importlib.import_module(module, __package__), name)


def registered(kind: str) -> AfterValidator:
    """A `str` field whose value must be a registered name of `kind` ('model'): checked against
    the table in `names.py` and run-time registrations, without importing torch."""
    return AfterValidator(lambda name: check_name(kind, name))  # UnknownNameError lists what exists


DatasetName = Annotated[str, registered("dataset")]
ModelName = Annotated[str, registered("model")]
DecoderName = Annotated[str, registered("decoder")]
OptimizerName = Annotated[str, registered("optimiser")]
SchedulerName = Annotated[str, registered("scheduler")]
_LOSS_TERMS = ".losses.LOSSES"


SEED_MAX = 2**32 - 1  # numpy's generators take seeds in 0..2**32-1


class _Section(BaseModel):
    # Infinity or NaN is a spec error wherever it would mean nothing (train.time_budget_s opts in).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Fields added after runs and sweeps were first recorded, with their defaults as dumped: they
    # are written only when set otherwise, so every config.yaml, config hash and sweep hash
    # recorded before them stays as it was.
    added_later: ClassVar[Mapping[str, Any]] = {}

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        tree = handler(self)
        later = type(self).added_later
        return {k: v for k, v in tree.items() if k not in later or v != later[k]} if later else tree


class AugmentSpec(_Section):
    """Training-time augmentation; evaluation never augments."""

    added_later: ClassVar[Mapping[str, Any]] = {"affine": "isotropic"}

    affine_p: float = Field(0.5, ge=0, le=1)  # the study: random affine with p = 0.5
    translate: float = Field(0.1, ge=0, le=0.5)  # fraction of the image side (the study: 0.1)
    scale: float = Field(0.1, ge=0, le=0.9)  # zoom in [1 - scale, 1 + scale] (the study: 0.2)
    rotate: float = Field(15.0, ge=0, le=180)  # degrees (the study: 30)
    # isotropic: one zoom for both axes; per_axis: albumentations' Affine with keep_ratio=False (the
    # study's): x and y zooms drawn independently, translations in whole pixels
    affine: Literal["isotropic", "per_axis"] = "isotropic"
    hflip_p: float = Field(0.5, ge=0, le=1)
    elastic_p: float = Field(0.0, ge=0, le=1)  # the U-Net paper's elastic deformation
    color_jitter_p: float = Field(0.0, ge=0, le=1)
    color_jitter: float = Field(0.2, ge=0, le=1)  # brightness/contrast/saturation strength


class SyntheticSpec(_Section):
    """The procedural dataset written in the Oxford layout (`data.name: synthetic`)."""

    num_trainval: int = Field(200, ge=10)
    num_test: int = Field(60, ge=2)
    size: int = Field(96, ge=32, le=1024)  # side of the generated images in px
    seed: int = 0


def _subfolder(value: str) -> str:
    parts = Path(value).parts
    if not value or Path(value).is_absolute() or ".." in parts:
        raise ValueError("expected a folder inside data.root such as 'masks' or 'train/label'")
    return value


def _suffix(value: str) -> str:
    if "/" in value or "\\" in value:
        raise ValueError("expected the end of a mask's file stem such as '_mask', without a folder separator")
    return value


Subfolder = Annotated[str, AfterValidator(_subfolder)]


class FolderSpec(_Section):
    """Users' own data: `<root>/<images>/<stem>.*` + `<root>/<masks>/<stem><mask_suffix>.*`
    (`data.name: folder`). Masks are read by value (palette PNGs by index); colour masks need
    `mask_channel` or `foreground_color`."""

    added_later: ClassVar[Mapping[str, Any]] = {
        "images": "images", "masks": "masks", "mask_suffix": "", "mask_channel": None, "foreground_color": None}

    images: Subfolder = "images"  # may be nested, e.g. train/image
    masks: Subfolder = "masks"  # e.g. train/label
    mask_suffix: Annotated[str, AfterValidator(_suffix)] = ""  # '_mask': 3.png pairs with 3_mask.png
    foreground_value: int | None = Field(None, ge=0, le=65535)  # None: mask > 0 is foreground
    mask_channel: int | None = Field(None, ge=0, le=3)  # colour masks: read this channel by value
    foreground_color: tuple[int, int, int] | None = None  # colour masks: this [r, g, b] is foreground
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)

    @model_validator(mode="after")
    def _one_mask_rule(self) -> "FolderSpec":
        if self.foreground_color is not None:
            if any(not 0 <= c <= 255 for c in self.foreground_color):
                raise SpecFieldError("data.folder.foreground_color",
                                     f"expected [r, g, b] with each value in 0..255 (got {list(self.foreground_color)})")
            for other in ("mask_channel", "foreground_value"):
                if getattr(self, other) is not None:
                    raise SpecFieldError("data.folder.foreground_color",
                                         f"set either data.folder.foreground_color or data.folder.{other}, not both")
        return self


# The study's normalisation constants (its oxford_pet.py, from its calculate_mean_and_std over
# every image of the full dataset, test split included): `data.normalize: study`.
STUDY_MEAN = (0.481, 0.449, 0.396)
STUDY_STD = (0.269, 0.265, 0.273)
RGB = tuple[float, float, float]


class DataSpec(_Section):
    added_later: ClassVar[Mapping[str, Any]] = {
        "mean": None, "std": None, "image_interpolation": "area_linear", "mask_interpolation": "nearest_exact"}

    name: DatasetName = "oxford_pet"
    root: str = "data/oxford-iiit-pet"
    download: bool = False
    image_size: int = Field(256, ge=16, le=4096)
    mask: Literal["pet", "pet_and_boundary", "boundary", "ignore_boundary"] = "pet_and_boundary"
    val_every: int = Field(10, ge=2)  # trainval line i is validation when i % val_every == 0
    # imagenet; dataset (the train split's statistics at this size); study (STUDY_MEAN/STD, the
    # study's constants); fixed (data.mean / data.std as given); none
    normalize: Literal["imagenet", "dataset", "study", "fixed", "none"] = "imagenet"
    mean: RGB | None = None  # normalize: fixed only, [r, g, b] in [0, 1] units
    std: RGB | None = None  # normalize: fixed only, each > 0
    # Resizing to image_size (cv2): area_linear: area averaging when shrinking, bilinear when
    # enlarging; linear: bilinear always (the study's, albumentations' Resize)
    image_interpolation: Literal["area_linear", "linear"] = "area_linear"
    # nearest_exact: pixel-centred nearest neighbour; nearest: cv2's INTER_NEAREST (the study's)
    mask_interpolation: Literal["nearest_exact", "nearest"] = "nearest_exact"
    augment: AugmentSpec = AugmentSpec()
    cache: bool = True  # decoded + resized samples in a memory-mapped uint8 array
    cache_dir: str | None = None  # None: beside the data, or ~/.cache/segsweep if read-only
    num_workers: int | Literal["auto"] = "auto"
    limit_train: int | None = Field(None, ge=1)  # use only the first N training images
    synthetic: SyntheticSpec = SyntheticSpec()
    folder: FolderSpec = FolderSpec()

    @model_validator(mode="after")
    def _settings_of_the_dataset(self) -> "DataSpec":
        # Trimap and download settings mean nothing to the folder dataset: refuse, never ignore.
        if self.name == "folder" and self.mask != "pet_and_boundary":
            raise SpecFieldError("data.mask", f"{self.mask!r} is a trimap setting (oxford_pet, synthetic) that "
                                 "folder masks do not use; remove it and mark the foreground with "
                                 "data.folder.foreground_value (or foreground_color / mask_channel)")
        if self.download and self.name in ("folder", "synthetic"):
            raise SpecFieldError("data.download", f"only data.name: oxford_pet downloads; {self.name} data "
                                 "is read from data.root (set data.download: false)")
        for key in ("mean", "std"):
            given = getattr(self, key)
            if self.normalize == "fixed" and given is None:
                raise SpecFieldError(f"data.{key}", f"data.normalize: fixed needs data.{key}: [r, g, b] in [0, 1] "
                                     "units (or use normalize: imagenet, dataset, study or none)")
            if self.normalize != "fixed" and given is not None:
                raise SpecFieldError(f"data.{key}", f"is used only with data.normalize: fixed (got normalize: "
                                     f"{self.normalize}); remove data.{key} or set normalize: fixed")
        if self.std is not None and not all(0 < v <= 10 for v in self.std):
            raise SpecFieldError("data.std", f"expected three values in (0, 10] (got {list(self.std)})")
        if self.mean is not None and not all(-10 <= v <= 10 for v in self.mean):
            raise SpecFieldError("data.mean", f"expected three values in [-10, 10] (got {list(self.mean)})")
        return self

    def norm_constants(self) -> tuple[RGB, RGB] | None:
        """(mean, std) fixed by the spec (study, fixed), or None (imagenet, dataset, none decide elsewhere)."""
        if self.normalize == "study":
            return STUDY_MEAN, STUDY_STD
        if self.normalize == "fixed":
            assert self.mean is not None and self.std is not None
            return self.mean, self.std
        return None


class ModelSpec(_Section):
    name: ModelName = "unet"
    base_channels: int = Field(64, ge=2, le=512)  # UNet width; 64 as in the paper
    batchnorm: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)  # in the bottleneck
    head: Literal["sigmoid", "logits"] = "logits"
    # he_fan_out / paper_fan_in: the study's He (its d61bb00) and its earlier U-Net-paper init
    # (824c77c), with its layer coverage (Conv2d only); see models/init.py for every scheme
    init: Literal["pytorch", "he_normal", "he_uniform", "xavier", "paper", "he_fan_out", "paper_fan_in"] = "pytorch"
    encoder_weights: Literal["none", "imagenet"] = "none"  # resnet34_unet only
    decoder: DecoderName = "unet"  # resnet34_unet only; smp: segmentation_models_pytorch's Unet


class LossSpec(_Section):
    """Weighted sum of terms; the head decides the with-logits or probability form.

    The weight of a term registered in `LOSSES` without a field here is the key of its name
    (`loss.<name>`, 0 when left out); any other key is unknown.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    bce: float = Field(1.0, ge=0)
    dice: float = Field(1.0, ge=0)
    focal: float = Field(0.0, ge=0)
    focal_gamma: float = Field(2.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _registered_terms(cls, data: Any) -> Any:
        extra = [key for key in data if key not in cls.model_fields] if isinstance(data, Mapping) else []
        if not extra:
            return data
        terms = names("loss")  # no torch: a typo is answered before it is imported
        for key in extra:
            value = data[key]
            if key not in terms:
                valid = [*cls.model_fields, *(n for n in terms if n not in cls.model_fields)]
                raise SpecFieldError(f"loss.{key}", unknown_key(str(key), valid))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise SpecFieldError(f"loss.{key}", f"the weight of loss term {key!r} must be a finite number >= 0 "
                                     f"(got {value!r})")
        return {**data, **{key: float(data[key]) for key in extra}}

    @model_validator(mode="after")
    def _some_term(self) -> "LossSpec":
        if self.bce + self.dice + self.focal + sum((self.model_extra or {}).values()) <= 0:
            raise ValueError(f"at least one of {', '.join(names('loss'))} must have a positive weight")
        return self
