"""Training datasets and augmentation: labels stay aligned with pixels, CTC batches are right."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.data.errors import DatasetError
from engine.data.manifest import ManifestRecord, TextLine
from engine.training.augment import (
    DetAugConfig,
    RecAugConfig,
    augment_crop,
    augment_detection,
    cut_context,
    random_scale_crop,
)
from engine.training.datasets import DetectionDataset, RecognitionCollate, RecognitionDataset

QUADS = [
    [[40, 30], [200, 30], [200, 70], [40, 70]],
    [[60, 120], [260, 110], [262, 150], [62, 160]],
    [[20, 200], [120, 200], [120, 230], [20, 230]],
]


def _write_image(path: Path, quads, ignore_last: bool = True) -> ManifestRecord:
    img = np.full((260, 300, 3), 235, dtype=np.uint8)
    for q in quads:
        cv2.fillPoly(img, [np.array(q, dtype=np.int32)], (20, 20, 20))
    cv2.imwrite(str(path), img)
    lines = [
        TextLine(points=[list(map(float, p)) for p in q], text=f"T{i}") for i, q in enumerate(quads)
    ]
    if ignore_last:
        lines[-1] = TextLine(points=lines[-1].points, text="###", ignore=True)
    return ManifestRecord(
        image=str(path), width=300, height=260, sha256="", split="train", lines=lines
    )


def test_random_scale_crop_drops_outside_and_ignores_cut_polygons() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((300, 300, 3), dtype=np.uint8)
    grid = [
        np.array([[x, y], [x + 50, y], [x + 50, y + 20], [x, y + 20]], dtype=np.float32)
        for x in range(0, 300, 60)
        for y in range(0, 300, 30)
    ]
    for _ in range(20):
        out, polys, ignore = random_scale_crop(
            image, grid, [False] * len(grid), rng, 128, (1.5, 3.0), attempts=1
        )
        h, w = out.shape[:2]
        assert h <= 128 and w <= 128
        assert len(polys) < len(grid)  # zoomed in: some polygons fall outside and are dropped
        for p, ign in zip(polys, ignore, strict=True):
            lo, hi = p.min(axis=0), p.max(axis=0)
            assert hi[0] > 0 and hi[1] > 0 and lo[0] < w and lo[1] < h  # none entirely outside
            inside = lo[0] >= 0 and lo[1] >= 0 and hi[0] <= w and hi[1] <= h
            assert ign == (not inside)


def test_detection_dataset_targets_align_with_text_pixels(tmp_path: Path) -> None:
    rec = _write_image(tmp_path / "a.png", QUADS)
    aug = DetAugConfig(
        size=160, color_p=0.0, blur_p=0.0, noise_p=0.0, rotate_p=1.0, scale=(0.6, 1.2)
    )
    ds = DetectionDataset(
        [rec, ManifestRecord("x", 1, 1, "", "val")], split="train", size=160, aug=aug
    )
    assert len(ds) == 1  # only the train split
    torch.manual_seed(0)
    positives = 0
    for _ in range(6):
        item = ds[0]
        assert item["image"].shape == (3, 160, 160)
        for key in ("shrink_map", "shrink_mask", "thresh_map", "thresh_mask"):
            assert item[key].shape == (160, 160) and item[key].dtype == torch.float32
        text = item["shrink_map"] > 0.5
        positives += int(text.sum())
        if text.any():
            # text was drawn dark: after ImageNet normalisation every channel is negative there
            assert (item["image"][0][text] < -1.0).float().mean() > 0.9
    assert positives > 0
    plain = DetectionDataset([rec], size=160, augment=False)[0]
    # the ### region is masked out of the loss, the others are positive
    assert plain["shrink_mask"][int(215 * 160 / 300), int(70 * 160 / 300)] == 0
    assert plain["shrink_map"][int(50 * 160 / 300), int(120 * 160 / 300)] == 1
    # padding below the 300x260 image is the mean colour (0 after normalisation), as on the device
    assert torch.all(plain["image"][:, 150:, :] == 0)
    assert "shrink_weight" not in plain
    weighted = DetectionDataset([rec], size=160, augment=False, gap_weight=10)[0]
    assert weighted["shrink_weight"].shape == (160, 160) and weighted["shrink_weight"].max() > 1.0
    assert torch.all(weighted["shrink_weight"][weighted["shrink_map"] > 0] == 1.0)
    with pytest.raises(ValueError, match="multiple of 32"):
        DetectionDataset([rec], size=100)


def test_augment_detection_is_reproducible_from_the_generator() -> None:
    image = np.random.default_rng(1).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    polys = [np.array(q, dtype=np.float32) * 0.5 for q in QUADS]
    a = augment_detection(
        image, polys, [False] * 3, np.random.default_rng(5), DetAugConfig(size=96)
    )
    b = augment_detection(
        image, polys, [False] * 3, np.random.default_rng(5), DetAugConfig(size=96)
    )
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    assert all(np.array_equal(p, q) for p, q in zip(a[1], b[1], strict=True))


def _write_crops(directory: Path, texts: list[str]) -> None:
    directory.mkdir(parents=True)
    lines = []
    for i, text in enumerate(texts):
        w = 20 + 12 * len(text)
        crop = np.full((24, w, 3), 200, dtype=np.uint8)
        cv2.putText(crop, text, (2, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        name = f"{i:06d}.png"
        cv2.imwrite(str(directory / name), crop)
        lines.append(f"{name}\t{text}")
    (directory / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_recognition_dataset_and_ctc_collate(tmp_path: Path) -> None:
    charset = "0123456789ABCDEF -"
    _write_crops(tmp_path / "train", ["AB 12", "F", "", "DEAD-BEEF 0"])
    ds = RecognitionDataset(tmp_path / "train", charset, aug=RecAugConfig(perspective_p=1.0))
    assert len(ds) == 3 and len(ds.skipped) == 1  # the empty text is dropped
    item = ds[0]
    assert item["image"].dtype == np.uint8 and item["text"] == "AB 12"
    assert item["label"].tolist() == [charset.index(c) + 1 for c in "AB 12"]
    batch = RecognitionCollate(height=32, max_width=128)([ds[i] for i in range(3)])
    n, c, h, w = batch["image"].shape
    assert (n, c, h) == (3, 3, 32) and w == int(batch["widths"].max()) and w % 8 == 0
    assert batch["target_lengths"].tolist() == [5, 1, 11]
    assert batch["targets"].shape == (17,) and int(batch["targets"].min()) >= 1
    assert batch["input_lengths"].tolist() == [int(x) // 4 for x in batch["widths"]]
    narrow = int(batch["widths"][1])
    assert torch.all(batch["image"][1, :, :, narrow:] == 0)  # right padding
    assert float(batch["image"].min()) >= -1.0 and float(batch["image"].max()) <= 1.0
    assert batch["texts"] == ["AB 12", "F", "DEAD-BEEF 0"]


def test_recognition_dataset_names_file_and_line_of_unknown_characters(tmp_path: Path) -> None:
    _write_crops(tmp_path / "train", ["AB", "AXB", "12"])
    with pytest.raises(DatasetError) as err:
        RecognitionDataset(tmp_path / "train", "0123456789AB")
    assert "labels.tsv:2" in str(err.value) and "'X'" in str(err.value)
    ds = RecognitionDataset(tmp_path / "train", "0123456789AB", unknown="skip")
    assert len(ds) == 2 and [t for _, t in ds.skipped] == ["AXB"]


def test_augment_crop_keeps_shape_and_dtype() -> None:
    crop = np.random.default_rng(0).integers(0, 255, (32, 90, 3), dtype=np.uint8)
    cfg = RecAugConfig(perspective_p=1.0, blur_p=1.0, contrast_p=1.0, noise_p=1.0)
    out = augment_crop(crop, np.random.default_rng(1), cfg)
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert not np.array_equal(out, crop)


def test_context_crop_margins_stay_inside_and_tight_cut_recovers_box() -> None:
    from engine.data.crops import context_crop, expand_quad

    quad = np.array([[10, 20], [110, 20], [110, 40], [10, 40]], dtype=np.float32)
    grown = expand_quad(quad, 5.0)
    assert np.allclose(grown, [[5, 15], [115, 15], [115, 45], [5, 45]])
    tilted = np.array([[0, 0], [100, 10], [98, 30], [-2, 20]], dtype=np.float32)  # ~5.7° line
    g = expand_quad(tilted, 4.0)
    assert np.linalg.norm(g[1] - g[0]) == pytest.approx(np.linalg.norm(tilted[1] - tilted[0]) + 8, abs=0.1)

    image = np.zeros((80, 160, 3), np.uint8)
    image[20:40, 10:110] = 255  # the "text" box is white, its context black
    crop = context_crop(image, quad, 0.5)
    assert crop.shape[:2] == (40, 120)
    tight = cut_context(crop, 0.5, None, RecAugConfig())
    assert tight.shape[:2] == (20, 100) and tight.min() == 255
    rng = np.random.default_rng(0)
    cfg = RecAugConfig()
    for _ in range(50):
        cut = cut_context(crop, 0.5, rng, cfg)
        h, w = cut.shape[:2]
        assert 20 * (1 - 0.3) - 1 <= h <= 20 * (1 + 0.5) + 1
        assert 100 - 4 - 1 <= w <= 100 + 2 * 0.45 * 20 + 1


def test_bucketed_sampler_groups_widths_and_is_deterministic() -> None:
    from engine.training.ddp import EpochShardSampler

    rng = np.random.default_rng(1)
    keys = list(rng.uniform(1, 12, 300))
    s = EpochShardSampler(300, seed=3, keys=keys, batch_size=10)
    s.set_epoch(2)
    order = s.indices()
    assert sorted(order) == list(range(300)) and order == s.indices()
    spread = np.mean([np.ptp([keys[i] for i in order[k:k + 10]]) for k in range(0, 300, 10)])
    plain = EpochShardSampler(300, seed=3)
    plain.set_epoch(2)
    p = plain.indices()
    plain_spread = np.mean([np.ptp([keys[i] for i in p[k:k + 10]]) for k in range(0, 300, 10)])
    assert spread < plain_spread / 4  # batches hold similar widths
    s.set_epoch(3)
    assert s.indices() != order  # and still reshuffle every epoch
