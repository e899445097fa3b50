"""prepare_dataset end to end on the examples: outputs, hash split, atomicity, manifest I/O."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data.charset import DEFAULT_CHARSET_SPEC
from engine.data.errors import DatasetError
from engine.data.manifest import (
    ManifestRecord,
    TextLine,
    read_crop_labels,
    read_manifest,
    write_manifest,
)
from engine.data.prepare import dataset_inputs, prepare_dataset
from engine.data.summary import format_summary_table
from engine.training.augment import RecAugConfig, cut_context

EX = Path(__file__).resolve().parents[1] / "examples" / "datasets"


def test_prepare_icdar_with_val_dir(tmp_path):
    out = tmp_path / "run" / "data"
    s = prepare_dataset("icdar2015", EX / "icdar2015" / "train", EX / "icdar2015" / "val", out,
                        DEFAULT_CHARSET_SPEC)
    recs = read_manifest(out / "manifest.jsonl")
    assert [r.split for r in recs] == ["train"] * 3 + ["val"]
    assert all(Path(r.image).is_absolute() and r.width > 0 for r in recs)
    assert s["splits"]["train"] == {**s["splits"]["train"], "images": 3, "boxes": 8,
                                    "ignored_boxes": 1}
    assert s["crops"] == {"train": 7, "val": 2}
    assert "9" in s["splits"]["all"]["charset_missing"]
    train = read_crop_labels(out / "crops" / "train")
    assert [t for _, t in train][:2] == ["SERIAL NO: 4711-B", "230V, 50Hz"]
    first = Image.open(train[0][0])  # a 220x21 box with TRAIN_CONTEXT (0.5 h) on every side
    assert first.mode == "RGB" and abs(first.width - 241) <= 1 and abs(first.height - 42) <= 1
    assert json.loads((out / "crops" / "train" / "context.json").read_text()) == {"pad": 0.5}
    tight = cut_context(np.asarray(first), 0.5, None, RecAugConfig())
    assert abs(tight.shape[1] - 220) <= 1 and abs(tight.shape[0] - 21) <= 1
    val_crop = Image.open(read_crop_labels(out / "crops" / "val")[0][0])  # val: exact boxes
    assert not (out / "crops" / "val" / "context.json").exists() and val_crop.height < 40
    assert json.loads((out / "summary.json").read_text()) == s
    assert format_summary_table(s).row_count >= 5
    # nothing left behind next to out_dir
    assert sorted(p.name for p in out.parent.iterdir()) == ["data"]


@pytest.mark.parametrize("fmt,root", [
    ("ppocrlabel", "ppocrlabel/images"), ("labelimg", "labelimg"),
    ("labelstudio", "labelstudio"), ("lines", "lines")])
def test_prepare_every_format_hash_split(tmp_path, fmt, root):
    a = prepare_dataset(fmt, EX / root, None, tmp_path / "a", DEFAULT_CHARSET_SPEC,
                        val_fraction=0.3, split_seed=1)
    prepare_dataset(fmt, EX / root, None, tmp_path / "b", DEFAULT_CHARSET_SPEC,
                        val_fraction=0.3, split_seed=1)
    ra, rb = read_manifest(tmp_path / "a" / "manifest.jsonl"), read_manifest(
        tmp_path / "b" / "manifest.jsonl")
    assert [(r.image, r.split) for r in ra] == [(r.image, r.split) for r in rb]
    assert a["splits"]["val"]["images"] >= 1 and a["splits"]["train"]["images"] >= 1
    assert a["split"]["source"] == "hash"
    n_crops = sum(len(read_crop_labels(tmp_path / "a" / "crops" / s)) for s in ("train", "val"))
    assert n_crops == a["splits"]["all"]["boxes"] - a["splits"]["all"]["ignored_boxes"]
    if fmt == "lines":
        assert all(r.recognition_only for r in ra)


def test_identical_images_share_a_split(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(EX / "lines", root)
    crops = root / "crops"
    rows = []
    for k in range(30):
        shutil.copy(crops / "word_2.jpg", crops / f"dup_{k}.jpg")
        rows.append(f"crops/dup_{k}.jpg\tIP65")
    with open(root / "labels.txt", "a") as f:
        f.write("\n".join(rows) + "\n")
    s = prepare_dataset("lines", root, None, tmp_path / "out", DEFAULT_CHARSET_SPEC,
                        val_fraction=0.5)
    recs = read_manifest(tmp_path / "out" / "manifest.jsonl")
    dup_splits = {r.split for r in recs if "dup_" in r.image or r.image.endswith("word_2.jpg")}
    assert len(dup_splits) == 1
    assert len(s["duplicates"]) == 1 and not s["duplicates"][0]["cross_split"]
    assert any("duplicate image" in w for w in s["warnings"])


def test_cross_split_duplicates_warn_or_error(tmp_path):
    args = ("icdar2015", EX / "icdar2015" / "train", EX / "icdar2015" / "train")
    s = prepare_dataset(*args, tmp_path / "w", DEFAULT_CHARSET_SPEC)
    assert len(s["duplicates"]) == 3 and all(d["cross_split"] for d in s["duplicates"])
    with pytest.raises(DatasetError, match="same image \\(sha256\\) in train and val"):
        prepare_dataset(*args, tmp_path / "e", DEFAULT_CHARSET_SPEC, duplicates="error")
    assert not (tmp_path / "e").exists()


def test_failure_leaves_no_out_dir_and_collects_both_splits(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(EX / "icdar2015", root)
    (root / "train" / "gt" / "gt_plate_2.txt").write_text("1,2,3,4,5,6,OOPS\n")
    (root / "val" / "gt" / "gt_plate_4.txt").write_text("0,0,999,0,999,9,0,9,WIDE\n")
    out = tmp_path / "run" / "data"
    with pytest.raises(DatasetError) as e:
        prepare_dataset("icdar2015", root / "train", root / "val", out, DEFAULT_CHARSET_SPEC)
    assert len(e.value.problems) == 2
    assert "gt_plate_2.txt:1: polygon has 3 points" in str(e.value)
    assert "gt_plate_4.txt:1: point (999, 0) is outside" in str(e.value)
    assert not out.exists() and not out.parent.exists()  # nothing created at all


def test_failure_while_writing_keeps_previous_output(tmp_path):
    out = tmp_path / "data"
    prepare_dataset("lines", EX / "lines", None, out, DEFAULT_CHARSET_SPEC)
    before = (out / "manifest.jsonl").read_bytes()

    def boom(tmp: Path, records):
        assert (tmp / "manifest.jsonl").is_file() and len(records) == 3
        raise RuntimeError("preview failed")

    with pytest.raises(RuntimeError, match="preview failed"):
        prepare_dataset("icdar2015", EX / "icdar2015" / "train", None, out, DEFAULT_CHARSET_SPEC,
                        before_commit=boom)
    assert (out / "manifest.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # and a successful run replaces it wholesale, with the hook's file included
    prepare_dataset("icdar2015", EX / "icdar2015" / "train", None, out, DEFAULT_CHARSET_SPEC,
                    before_commit=lambda tmp, recs: (tmp / "preview.png").write_bytes(b"x"))
    assert (out / "preview.png").exists() and (out / "manifest.jsonl").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_unknown_format_and_policy_args(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'labelimg'"):
        prepare_dataset("labelimgg", EX / "labelimg", None, tmp_path / "o", DEFAULT_CHARSET_SPEC)
    with pytest.raises(ValueError, match="on_unknown_char"):
        prepare_dataset("labelimg", EX / "labelimg", None, tmp_path / "o", DEFAULT_CHARSET_SPEC,
                        on_unknown_char="ignore")


def test_charset_policy_through_prepare(tmp_path):
    with pytest.raises(DatasetError, match=r"character 'S' .* not in the charset"):
        prepare_dataset("icdar2015", EX / "icdar2015" / "train", None, tmp_path / "o", "0-9 ,")
    s = prepare_dataset("icdar2015", EX / "icdar2015" / "train", None, tmp_path / "o",
                        "0-9A-Z ", on_unknown_char="replace")
    assert s["unknown_chars"]["counts"][":"] == 1 and s["unknown_chars"]["replaced_lines"] > 0
    texts = [t for sp in ("train", "val") for _, t in read_crop_labels(tmp_path / "o/crops" / sp)]
    assert "SERIAL NO 4711B" in texts and "230V 50HZ" in texts


def test_manifest_round_trip_and_errors(tmp_path):
    recs = [ManifestRecord("/x/a.jpg", 10, 5, "ab", "train",
                           [TextLine([[0, 0], [1, 0], [1, 1], [0, 1]], "Ünï", False)]),
            ManifestRecord("/x/b.jpg", 10, 5, "cd", "val", [], recognition_only=True)]
    path = tmp_path / "m.jsonl"
    write_manifest(path, recs)
    assert read_manifest(path) == recs
    assert "recognition_only" not in path.read_text().splitlines()[0]
    path.write_text(path.read_text() + '{"image": 1}\n{"image": "c", "width": 1, "height": 1, '
                    '"split": "test", "lines": []}\n')
    with pytest.raises(DatasetError) as e:
        read_manifest(path)
    assert [p.line for p in e.value.problems] == [3, 4]
    assert "split 'test'" in str(e.value)


def test_dataset_inputs_for_file_dep():
    files = dataset_inputs("icdar2015", EX / "icdar2015" / "train")
    assert sorted(p.name for p in files) == sorted(
        [f"gt_plate_{i}.txt" for i in (1, 2, 3)] + [f"plate_{i}.jpg" for i in (1, 2, 3)])
    files = dataset_inputs("ppocrlabel", EX / "ppocrlabel" / "images")
    assert [p.name for p in files].count("Label.txt") == 1 and len(files) == 4
