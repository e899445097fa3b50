"""The recipe language as pydantic models: one YAML file from data to devices.

Every section forbids unknown keys and re-validates assignments (`engine.config.Strict`), so a
typo is an error with its position, never a silently ignored setting. Architecture and variant
names come from the model registry, so a new architecture there is a new choice here. Loading,
``--set`` overrides and the cross-check against target profiles live in `engine.recipe.loading`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from ..config import Strict, stable_hash
from ..data.charset import DEFAULT_CHARSET_SPEC
from ..models.registry import (
    ModelConfigError,
    arch_names,
    input_spec,
    resolve_variant,
    variant_names,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9._-]+(?::\d{1,5})?$")


# --------------------------------------------------------------------------------- dataset


class SyntheticSpec(Strict):
    """Generate training data instead of reading it (no data set can be downloaded here)."""

    style: Literal["nameplate"] = "nameplate"
    count: int = Field(400, ge=1, le=1_000_000, description="training images")
    val_count: int = Field(50, ge=1, le=100_000, description="validation images")
    seed: int = Field(0, description="train uses seed, val uses a derived seed never used for train")
    level: Literal["line", "word"] = "line"
    image_size: tuple[int, int] = Field((640, 480), description="width, height")


class DatasetSpec(Strict):
    format: Literal["icdar2015", "labelimg", "ppocrlabel", "labelstudio", "lines"] = "icdar2015"
    train: Path | None = Field(None, description="directory of the training split")
    val: Path | None = Field(None, description="directory of the validation split")
    labels: str | None = Field(
        None, description="label file inside the split dir (Label.txt, export.json, lines.txt)"
    )
    synthetic: SyntheticSpec | None = None
    charset: str = Field(DEFAULT_CHARSET_SPEC, min_length=1, description="characters; a-z ranges")
    on_unknown_char: Literal["error", "skip", "replace"] = "error"
    on_duplicate: Literal["warn", "error"] = "warn"
    val_fraction: float = Field(0.1, gt=0, lt=1, description="hash split when `val` is not given")
    split_seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if self.synthetic is None and self.train is None:
            raise ValueError("give either `train` (a directory) or `synthetic` (a generator spec)")
        if self.synthetic is not None and (self.train is not None or self.val is not None):
            raise ValueError("`synthetic` generates both splits; remove `train`/`val`")
        return self


# --------------------------------------------------------------------------------- models


# Architecture and variant names come from the model registry (engine/models/registry.py): a new
# architecture there is a new choice here. Variants, heights and widths left null take the
# architecture's defaults, so `arch: ppocrv6` alone is a complete model section.
DetectorArch = Literal[arch_names("detector")]  # type: ignore[valid-type]
RecognizerArch = Literal[arch_names("recognizer")]  # type: ignore[valid-type]
DEFAULT_DETECTOR = "ppocrv6"  # PP-OCRv6 small, pretrained (engine/models/ppocr)
DEFAULT_RECOGNIZER = "ppocrv6"


def _variant(kind: str, v: str | None, info: ValidationInfo) -> str | None:
    arch = info.data.get("arch")
    if arch is None:  # the arch itself failed validation; that error is reported
        return v
    try:
        return resolve_variant(kind, arch, v)
    except ModelConfigError as exc:
        raise ValueError(str(exc)) from None


class DetectorSpec(Strict):
    arch: DetectorArch = Field(DEFAULT_DETECTOR,  # type: ignore[valid-type]
        description="ppocrv6 (pretrained PP-OCRv6 small) or dbnet (this project's own, smallest)")
    backbone: str | None = Field(
        None, validate_default=True, json_schema_extra={"enum": [*variant_names("detector"), None]},
        description="null = the architecture's (ppocrv6: lcnetv4, dbnet: mobilenetv3)")
    input_size: int = Field(640, ge=64, le=4096, description="longer image side, multiple of 32")
    train_size: int | None = Field(
        None, ge=64, le=4096, description="square training crop (multiple of 32); null = input_size"
    )
    init: str | None = Field("base", description="'base' (the architecture's pretrained / shipped weights), a checkpoint path, or null")
    gap_weight: float = Field(
        0.0, ge=0, le=100,
        description="training: extra loss weight on the background between neighbouring labelled texts "
                    "(U-Net border weights), so the detector splits what the labels split; 0 = off")

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _variant("detector", v, info)

    @field_validator("input_size", "train_size")
    @classmethod
    def _multiple_of_32(cls, v: int | None) -> int | None:
        if v is not None and v % 32:
            raise ValueError(f"must be a multiple of 32 (got {v}; try {round(v / 32) * 32 or 32})")
        return v


class RecognizerSpec(Strict):
    arch: RecognizerArch = Field(DEFAULT_RECOGNIZER,  # type: ignore[valid-type]
        description="ppocrv6 (pretrained PP-OCRv6 small) or crnn (this project's own, smallest)")
    sequence: str | None = Field(
        None, validate_default=True, json_schema_extra={"enum": [*variant_names("recognizer"), None]},
        description="null = the architecture's (ppocrv6: svtr, crnn: bilstm)")
    height: Literal[32, 48] | None = Field(
        None, validate_default=True, description="line height fed to the recognizer; null = the architecture's (ppocrv6: 48, crnn: 32)")
    max_width: int | None = Field(
        None, ge=32, le=4096, validate_default=True,
        description="widest resized line; null = the architecture's (ppocrv6: 960, crnn: 320)")
    init: str | None = Field("base", description="'base' (the architecture's pretrained / shipped weights), a checkpoint path, or null")

    @field_validator("sequence")
    @classmethod
    def _sequence(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _variant("recognizer", v, info)

    @field_validator("height", "max_width")
    @classmethod
    def _arch_default(cls, v: int | None, info: ValidationInfo) -> int | None:
        arch = info.data.get("arch")
        if arch is None:
            return v
        spec = input_spec("recognizer", arch)
        if info.field_name == "height":
            if v is None:
                return int(spec["default_height"])
            if v not in spec["heights"]:
                raise ValueError(f"a {arch} recognizer reads lines {' or '.join(map(str, spec['heights']))} px high (got {v})")
            return v
        return int(spec["default_max_width"]) if v is None else v


class PostprocessSpec(Strict):
    """Box extraction and decoding settings: changing them never retrains a model."""

    thresh: float = Field(0.3, gt=0, lt=1, description="probability map binarisation")
    box_thresh: float = Field(0.6, gt=0, lt=1, description="minimum mean probability of a box")
    unclip_ratio: float = Field(
        1.7, gt=0, le=5,
        description="classic DB unclip (shrink_ratio: null); 1.7 suits the shipped recognizer, trained with context",
    )
    shrink_ratio: float | None = Field(
        None, gt=0, lt=1, description="invert this label shrink exactly instead of unclip_ratio"
    )
    min_text_score: float = Field(0.0, ge=0, le=1, description="lines below are dropped")


class DecoderSpec(Strict):
    """How the recognizer's CTC output becomes text: changing it never retrains a model.

    ``lm``: a character n-gram counted from the training labels, read with a CTC beam search
    (engine/runtime/lm.py). It knows the plates' keys, units and formats, and speaks only from
    contexts of ``min_context`` characters that the labels contain, so text it never saw keeps
    what the recognizer read.  ``split_lines`` and ``join_lines`` work with either type
    (engine/runtime/split.py).
    """

    type: Literal["greedy", "lm"] = Field("greedy", description="greedy CTC, or beam search with a language model of the training labels")
    order: int = Field(6, ge=2, le=12, description="n-gram order (context of order-1 characters)")
    min_context: int = Field(3, ge=1, le=11, description="shorter or unseen contexts leave the choice to the recognizer")
    weight: float = Field(0.3, ge=0, le=5, description="language-model log-probability weight")
    length_bonus: float = Field(0.6, ge=-5, le=5, description="score per character, against the model's bias to short text")
    beam: int = Field(8, ge=1, le=128, description="hypotheses kept per frame")
    split_lines: int = Field(
        0, ge=0, le=1_000_000,
        description="split a reading into one line per word when every word is a whole label at "
                    "least this many times in the training labels and the reading never is "
                    "(marks like `CE UL` the detector merged), else before each word seen as often "
                    "that always begins its label and after each that always ends one (`m3/min | "
                    "MFD: 2000/04`); 0: off")
    join_lines: int = Field(
        0, ge=0, le=1_000_000,
        description="read a box and the next along its line as one line when their readings, "
                    "joined, make a label of two or more words seen at least this many times in "
                    "the training labels, or when a word on either side of the break (seen as "
                    "often) is almost never a label's last or first word (lines the detector cut, "
                    "like `CENTRIFUGAL | PUMP`, `WEIMAG | GMBH`); 0: off")

    @model_validator(mode="after")
    def _context_below_order(self) -> DecoderSpec:
        if self.min_context >= self.order:
            raise ValueError(f"min_context ({self.min_context}) must be below order ({self.order})")
        return self


class ModelsSpec(Strict):
    detector: DetectorSpec = DetectorSpec()
    recognizer: RecognizerSpec = RecognizerSpec()
    postprocess: PostprocessSpec = PostprocessSpec()
    decoder: DecoderSpec = DecoderSpec()


# --------------------------------------------------------------------------------- train

_TRAIN_KNOBS: dict[str, tuple[Any, dict[str, Any]]] = {
    # name: (type, constraints) -- shared by `train:` and its per-model override sections
    "epochs": (int, {"ge": 0, "le": 100_000}),  # 0: use the model's `init` as it is
    "batch_size": (int, {"ge": 1, "le": 4096}),
    "lr": (float, {"gt": 0, "le": 10}),
    "min_lr": (float, {"ge": 0, "le": 10}),
    "warmup_epochs": (float, {"ge": 0}),
    "schedule": (Literal["cosine", "constant", "step"], {}),
    "optimizer": (Literal["adam", "adamw", "sgd"], {}),
    "weight_decay": (float, {"ge": 0, "le": 1}),
    "grad_clip": (float, {"ge": 0}),
    "checkpoint_every": (int, {"ge": 1}),
    # fine-tuning a pretrained net: the backbone's lr as a fraction of `lr` (0 freezes it)
    "backbone_lr": (float, {"ge": 0, "le": 10}),
    # iterations per epoch, each epoch a fresh random subset (null: one pass over the data)
    "steps_per_epoch": (int, {"ge": 1, "le": 10_000_000}),
}

# Per-model defaults; `train:` values override both models, `train.detector:` only one.
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "detector": {
        "epochs": 20, "batch_size": 8, "lr": 2e-4, "min_lr": 1e-6, "warmup_epochs": 1.0,
        "schedule": "cosine", "optimizer": "adam", "weight_decay": 0.0, "grad_clip": 5.0,
        "checkpoint_every": 5, "backbone_lr": 1.0, "steps_per_epoch": None,
    },
    "recognizer": {
        "epochs": 20, "batch_size": 32, "lr": 2e-4, "min_lr": 1e-6, "warmup_epochs": 1.0,
        "schedule": "cosine", "optimizer": "adam", "weight_decay": 0.0, "grad_clip": 5.0,
        "checkpoint_every": 5, "backbone_lr": 1.0, "steps_per_epoch": None,
    },
}

TrainOverrides = create_model(  # type: ignore[call-overload]
    "TrainOverrides",
    __base__=Strict,
    **{name: (tp | None, Field(None, **kw)) for name, (tp, kw) in _TRAIN_KNOBS.items()},
)


class TrainSpec(TrainOverrides):
    seed: int = 0
    deterministic: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="mixed precision (CUDA only)")
    gpus: int = Field(1, ge=1, le=64, description="> 1 launches torchrun with DDP")
    host: str | None = Field(None, description="remote GPU host (user@host:port) to train on")
    remote_dir: str = Field(
        "~/ocr-recipe-train", description="with `host`: job directory on the host (~ = its home)"
    )
    python: str = Field(
        "python3", description="with `host`: Python command on the host (project + torch installed)"
    )
    trust_on_first_use: bool = Field(False, description="with `host`: accept an unknown host key")
    known_hosts: Path | None = Field(None, description="with `host`: extra known_hosts file")
    ssh_config: Path | None = Field(None, description="with `host`: ssh config (default ~/.ssh/config)")
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes")
    detector: TrainOverrides = TrainOverrides()

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and not _HOST_RE.match(v):
            raise ValueError(f"not a host spec (user@host[:port]): {v!r}")
        return v
    recognizer: TrainOverrides = TrainOverrides()

    def for_model(self, model: str) -> dict[str, Any]:
        """The effective settings of one model: defaults < shared `train:` < `train.<model>:`."""
        resolved = dict(TRAIN_DEFAULTS[model])
        resolved.update({k: getattr(self, k) for k in _TRAIN_KNOBS if getattr(self, k) is not None})
        own = getattr(self, model)
        resolved.update({k: getattr(own, k) for k in _TRAIN_KNOBS if getattr(own, k) is not None})
        for k in ("seed", "deterministic", "device", "amp", "gpus", "host", "workers"):
            resolved[k] = getattr(self, k)
        return resolved


# --------------------------------------------------------------------------------- optimize


class PruneSpec(Strict):
    amount: float = Field(0.0, ge=0, lt=1, description="fraction of channels removed; 0 = off")
    importance: Literal["l1", "l2", "taylor", "lamp"] = Field(
        "taylor", description="channel ranking: taylor (weight x gradient of the training loss on "
        "real batches; best measured), l1/l2 (weight magnitude), lamp")
    allocation: Literal["uniform", "sensitivity"] = Field(
        "uniform", description="uniform: `amount` of every layer's channels; sensitivity: the same "
        "MACs removed, more from layers where the Taylor estimate of the loss per MAC saved is low")
    models: list[Literal["detector", "recognizer"]] = ["detector"]
    keep: list[str] = Field(["head"], description="module name prefixes never pruned")
    finetune_epochs: int = Field(5, ge=0, le=10_000)
    finetune_lr: float | None = Field(
        None, gt=0, le=10, description="fine-tuning learning rate after pruning; null: the model's train lr"
    )
    finetune_warmup: float | None = Field(
        None, ge=0, le=10_000,
        description="warm-up epochs of the fine-tune after pruning; null: the model's train warmup_epochs",
    )
    distill: float = Field(
        0.0, ge=0, le=100,
        description="weight of the unpruned model's outputs as an extra fine-tuning target (distillation); 0: off",
    )
    finetune_ema: float = Field(
        0.0, ge=0, lt=1,
        description="decay of a moving average of the fine-tuned weights, which is validated and kept "
        "(e.g. 0.99); 0: off",
    )


class ExportSpec(Strict):
    opset: int = Field(17, ge=13, le=21)
    simplify: bool = True
    atol: float = Field(1e-3, gt=0, description="max |onnxruntime - torch| on validation images")


CalibrationMethod = Literal["minmax", "entropy", "percentile"]


class CalibrationOverrides(Strict):
    """Per-model calibration (`optimize.calibration.detector:` / `.recognizer:`); null = shared."""

    method: CalibrationMethod | None = None
    samples: int | None = Field(None, ge=1, le=100_000)
    percentile: float | None = Field(None, gt=90, le=100)


class CalibrationSpec(Strict):
    method: CalibrationMethod = "minmax"
    samples: int = Field(64, ge=1, le=100_000, description="training images used to calibrate")
    percentile: float = Field(99.999, gt=90, le=100)
    detector: CalibrationOverrides = CalibrationOverrides()
    recognizer: CalibrationOverrides = CalibrationOverrides()

    def for_model(self, model: str) -> dict[str, Any]:
        """{"method", "samples", "percentile"} of one model: shared settings < `<model>:`."""
        own = getattr(self, model)
        return {k: getattr(own, k) if getattr(own, k) is not None else getattr(self, k)
                for k in ("method", "samples", "percentile")}


class QatSpec(Strict):
    """Quantization-aware fine-tuning of the weights before export (engine/compress/qat.py)."""

    models: list[Literal["detector", "recognizer"]] = Field(
        [], description="models whose weights are fine-tuned on their int8 grid; [] = off")
    epochs: int = Field(1, ge=1, le=1000)
    steps_per_epoch: int | None = Field(60, ge=1, description="null: one pass over the training data")
    lr: float = Field(5e-5, gt=0, le=1)
    warmup_epochs: float = Field(0.1, ge=0, le=1000)
    activations: bool = Field(
        True, description="also fake-quantize each conv/linear input to uint8 (onnxruntime's "
        "activation rounding), not only the weights")
    backbone_lr: float = Field(
        1.0, ge=0, le=10, description="the backbone's lr as a fraction of `lr`: every quantized "
        "layer must adapt to its grid, so not the train stage's (often frozen) setting")


class QuantizeSpec(Strict):
    per_channel: bool = True
    reduce_range: bool | None = Field(None, description="null: the target profile decides")
    max_drop: float = Field(0.01, ge=0, le=1, description="int8 accuracy drop that triggers exclusions")
    exclude: list[str] = Field([], description="node names kept in float")
    operators: Literal["auto", "all", "compute"] = Field(
        "auto", description="operators given int8: compute (conv, matmul, gemm: what `qat` "
        "simulates), all (every one onnxruntime quantizes: residual adds and products too, faster, "
        "rounding QAT never saw), auto (compute for the models in `qat.models`, all for the others)")
    qat: QatSpec = QatSpec()

    def operators_for(self, model: str) -> str:
        """The operator set (engine.compress.quantize.OPERATOR_SETS) ``model`` is quantized with."""
        if self.operators != "auto":
            return self.operators
        return "compute" if model in self.qat.models else "all"


class OptimizeSpec(Strict):
    prune: PruneSpec = PruneSpec()
    export: ExportSpec = ExportSpec()
    quantize: QuantizeSpec = QuantizeSpec()
    calibration: CalibrationSpec = CalibrationSpec()


# --------------------------------------------------------------------------------- deploy/verify


class DeploySpec(Strict):
    hosts: list[str] = Field([], description="user@host[:port]; ~/.ssh/config aliases work")
    canary: bool = Field(False, description="deploy and check the first host before the rest")
    parallel: int = Field(4, ge=1, le=256)
    keep_releases: int = Field(3, ge=2, le=100)
    trust_on_first_use: bool = Field(False, description="accept unknown host keys (opt-in)")
    known_hosts: Path | None = None
    ssh_config: Path | None = None
    install_dir: str | None = Field(None, description="overrides the target profile's")
    install_requirements: Literal["never", "pypi", "wheels"] = "never"

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        bad = [h for h in hosts if not _HOST_RE.match(h)]
        if bad:
            raise ValueError(f"not a host spec (user@host[:port]): {', '.join(map(repr, bad))}")
        dupes = sorted({h for h in hosts if hosts.count(h) > 1})
        if dupes:
            raise ValueError(f"duplicate hosts: {', '.join(dupes)}")
        return hosts


class VerifySpec(Strict):
    min_hmean: float | None = Field(None, ge=0, le=1)
    min_line_accuracy: float | None = Field(None, ge=0, le=1)
    min_word_accuracy: float | None = Field(None, ge=0, le=1)
    max_cer: float | None = Field(None, ge=0)
    max_latency_ms: float | None = Field(None, gt=0)
    max_drop: float = Field(0.005, ge=0, le=1, description="bundle vs fp32 torch accuracy drop")
    samples: int | None = Field(
        None, ge=1, description="validation images used; null = all (bundles carry this many for verify "
        "and the on-device check, 20 when null)")
    candidates: Literal["chosen", "all"] = Field(
        "chosen", description="precision auto, chosen on a machine of the target's architecture: "
        "ship only the chosen precision's models (chosen) or every candidate (all)")


class Recipe(Strict):
    name: str
    description: str = ""
    workdir: Path = Path("runs")
    profiles: list[Path] = Field([], description="extra target profile directories")
    dataset: DatasetSpec
    models: ModelsSpec = ModelsSpec()
    train: TrainSpec = TrainSpec()
    optimize: OptimizeSpec = OptimizeSpec()
    targets: list[str] = ["local-cpu"]
    deploy: dict[str, DeploySpec] = {}
    verify: VerifySpec = VerifySpec()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names the run directory)")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one target profile (`recipe targets` lists them)")
        return v

    @model_validator(mode="after")
    def _untrained_models_need_init(self) -> Recipe:
        for model in ("detector", "recognizer"):
            if self.train.for_model(model)["epochs"] == 0 and getattr(self.models, model).init is None:
                raise ValueError(f"train epochs 0 for the {model} means `models.{model}.init` is "
                                 "used as it is: set it to 'base' or a checkpoint path")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.workdir) / self.name

    def section(self, dotted_path: str) -> Any:
        """The JSON-able value of a dotted section, e.g. ``optimize.calibration``."""
        node: Any = self.model_dump(mode="json")
        for part in dotted_path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def content_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


def recipe_schema() -> dict[str, Any]:
    """JSON Schema of the recipe language, for editors (yaml-language-server) and docs."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "OCR recipe"
    return schema
