"""The detector and recognizer tasks that `engine.training.loop.fit` trains.

A task binds a model to its data, loss and validation; the loop does the rest. Both tasks take
only JSON-able constructor arguments, so the same class serves as the factory of a torchrun
spec (``"engine.training.tasks:DetectorTask"``) for multi-GPU runs.

Validation uses exactly what the device uses: ``engine.runtime.preprocess`` for inputs and
``engine.runtime.postprocess`` (DB box extraction, greedy CTC) for outputs, scored with
`engine.training.metrics` — so "best.pt" is the checkpoint that is best *as deployed*.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from engine.data.manifest import load_image_rgb, read_crop_labels

from .augment import DetAugConfig, RecAugConfig
from .datasets import DetectionDataset, RecognitionCollate, RecognitionDataset, detection_records
from .metrics import detection_metrics, recognition_metrics


def backbone_param_groups(model: nn.Module, backbone_lr: float) -> list[dict[str, Any]]:
    """The backbone's parameters at ``backbone_lr`` x the lr (frozen at 0), the rest at 1x."""
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    if backbone_lr == 0:
        for p in backbone:
            p.requires_grad_(False)
        return [{"params": rest}]
    return [{"params": backbone, "lr_scale": float(backbone_lr)}, {"params": rest}]


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class DetectorTask:
    """DBNet on the manifest: train on square ``train_size`` crops, validate whole val images.

    ``metric`` is the ICDAR 2015 ``hmean`` on the val split (``None`` when there is no val split,
    in which case best.pt follows last.pt).
    """

    metric: str | None = "hmean"
    metric_mode = "max"

    def __init__(
        self,
        manifest: str | Path,
        arch: str = "dbnet",
        backbone: str = "mobilenetv3",
        model_options: dict[str, Any] | None = None,
        train_size: int = 640,
        input_size: int = 640,
        augment: dict[str, Any] | None = None,
        postprocess: dict[str, Any] | None = None,
        loss: dict[str, Any] | None = None,
        val_limit: int | None = None,
        model: nn.Module | None = None,
        backbone_lr: float = 1.0,
        gap_weight: float = 0.0,
    ):
        from engine.models import DBLoss, build_detector, input_spec

        self.manifest = str(manifest)
        self.arch, self.backbone = arch, backbone
        self.inputs = input_spec("detector", arch)
        self.backbone_lr = float(backbone_lr)
        self.gap_weight = float(gap_weight)
        self.model_options = dict(model_options or {})
        self.train_size, self.input_size = int(train_size), int(input_size)
        self.aug = DetAugConfig(size=self.train_size, **(augment or {}))
        self.postprocess = dict(postprocess or {})
        self.model = (
            model if model is not None else build_detector(arch, backbone, **self.model_options)
        )
        self.loss = DBLoss(**(loss or {}))
        self.val_records = detection_records(self.manifest, "val")
        if val_limit is not None:
            self.val_records = self.val_records[: int(val_limit)]
        if not self.val_records:
            self.metric = None

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return backbone_param_groups(model, self.backbone_lr)

    def train_dataset(self) -> Dataset:
        return DetectionDataset(self.manifest, "train", size=self.train_size, aug=self.aug,
                                inputs=self.inputs, gap_weight=self.gap_weight)

    def compute_loss(
        self, model: nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        pred = model(batch["image"])
        total, parts = self.loss(pred, batch)
        return total, parts

    def predict(self, model: nn.Module, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Boxes of one RGB image in original coordinates, exactly as the device computes them."""
        from engine.runtime.postprocess import db_boxes
        from engine.runtime.preprocess import detector_input, norm_of

        x, scale = detector_input(image, self.input_size, **norm_of(self.inputs))
        with torch.no_grad():
            prob = model(torch.from_numpy(x).to(_device_of(model)))
        if isinstance(prob, dict):  # a model left in train mode
            prob = prob["prob"]
        return db_boxes(
            prob[0, 0].float().cpu().numpy(), scale, image.shape[:2], **self.postprocess
        )

    def validate(self, model: nn.Module) -> dict[str, float]:
        gts, dets = [], []
        for rec in self.val_records:
            image = load_image_rgb(rec.image)
            dets.append(self.predict(model, image))
            gts.append([ln.to_dict() for ln in rec.lines])
        return detection_metrics(gts, dets)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "kind": "detector",
            "arch": self.arch,
            "backbone": self.backbone,
            "model_options": self.model_options,
            "input_size": self.input_size,
            "train_size": self.train_size,
            "postprocess": self.postprocess,
        }


class RecognizerTask:
    """CRNN on ``<crops_root>/{train,val}``: CTC loss, greedy decoding for validation.

    ``metric`` defaults to ``word_accuracy`` (see `engine.training.metrics`); ``line_accuracy``,
    ``whitespace_insensitive_accuracy`` or ``cer`` (with ``metric_mode="min"``) are alternatives.
    """

    metric: str | None = "word_accuracy"
    metric_mode = "max"

    def __init__(
        self,
        crops_root: str | Path,
        charset: str,
        arch: str = "crnn",
        sequence: str = "bilstm",
        height: int = 32,
        max_width: int = 320,
        model_options: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
        unknown: str = "error",
        metric: str = "word_accuracy",
        metric_mode: str = "max",
        val_limit: int | None = None,
        val_batch_size: int = 64,
        model: nn.Module | None = None,
        backbone_lr: float = 1.0,
    ):
        from engine.models import build_recognizer, input_spec

        self.crops_root = Path(crops_root)
        self.charset = charset
        self.arch, self.sequence = arch, sequence
        self.height, self.max_width = int(height), int(max_width)
        self.model_options = dict(model_options or {})
        self.aug = RecAugConfig(**(augment or {}))
        self.unknown = unknown
        self.metric, self.metric_mode = metric, metric_mode
        self.model = (
            model
            if model is not None
            else build_recognizer(
                arch,
                sequence,
                num_classes=len(charset) + 1,
                height=self.height,
                **self.model_options,
            )
        )
        self.inputs = input_spec("recognizer", arch)
        self.backbone_lr = float(backbone_lr)
        self.downsample = int(self.inputs["downsample"])
        self.collate_fn = RecognitionCollate(self.height, self.max_width, self.downsample, self.inputs)
        val_dir = self.crops_root / "val"
        self.val_samples = (
            [(p, t) for p, t in read_crop_labels(val_dir) if t]
            if (val_dir / "labels.tsv").is_file()
            else []
        )
        if val_limit is not None:
            self.val_samples = self.val_samples[: int(val_limit)]
        self.val_batch_size = int(val_batch_size)
        if not self.val_samples:
            self.metric = None

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return backbone_param_groups(model, self.backbone_lr)

    def train_dataset(self) -> Dataset:
        return RecognitionDataset(
            self.crops_root / "train", self.charset, aug=self.aug, unknown=self.unknown
        )

    def compute_loss(
        self, model: nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        from engine.models import ctc_loss

        logits = model(batch["image"])
        lengths = batch["input_lengths"].clamp(max=logits.shape[1])
        loss = ctc_loss(logits, batch["targets"], batch["target_lengths"], lengths)
        return loss, {}

    def predict(self, model: nn.Module, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Texts of RGB crops, exactly as the device decodes them."""
        from engine.runtime.postprocess import ctc_greedy_decode
        from engine.runtime.preprocess import norm_of, recognizer_input, recognizer_widths

        x = recognizer_input(crops, self.height, self.max_width, **norm_of(self.inputs))
        with torch.no_grad():
            logits = model(torch.from_numpy(x).to(_device_of(model))).float().cpu().numpy()
        lengths = [w // self.downsample for w in recognizer_widths(crops, self.height, self.max_width)]
        return ctc_greedy_decode(logits, self.charset, lengths=lengths)

    def validate(self, model: nn.Module) -> dict[str, float]:
        preds: list[str] = []
        for start in range(0, len(self.val_samples), self.val_batch_size):
            chunk = self.val_samples[start : start + self.val_batch_size]
            preds += [t for t, _ in self.predict(model, [load_image_rgb(p) for p, _ in chunk])]
        return recognition_metrics(preds, [t for _, t in self.val_samples])

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "kind": "recognizer",
            "arch": self.arch,
            "sequence": self.sequence,
            "model_options": self.model_options,
            "charset": self.charset,
            "num_classes": len(self.charset) + 1,
            "height": self.height,
            "max_width": self.max_width,
        }


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a detector or recognizer from a training checkpoint alone (eval mode, CPU).

    Uses the ``meta`` the task stored (architecture, options, charset, sizes) so evaluation,
    pruning and export need nothing but the file. Returns ``(model, meta)``.
    """
    from engine.models import build_detector, build_recognizer

    from .checkpoint import CheckpointError, load_checkpoint

    ckpt = load_checkpoint(path)
    meta = dict(ckpt.get("meta") or {})
    kind = meta.get("kind")
    if kind == "detector":
        model = build_detector(meta["arch"], meta["backbone"], **meta.get("model_options", {}))
    elif kind == "recognizer":
        model = build_recognizer(
            meta["arch"],
            meta["sequence"],
            num_classes=int(meta["num_classes"]),
            height=int(meta["height"]),
            **meta.get("model_options", {}),
        )
    else:
        raise CheckpointError(f"{path}: no detector/recognizer metadata (meta.kind={kind!r})")
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval(), meta
