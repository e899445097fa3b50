"""The host check cache (engine/deploy/check_cache.py): verify:TARGET reuses the report of an
identical check made for another target of the run, and never one that could differ.

Real bundles of small untrained models (tests/test_bundle.py), real ``runtime.check`` subprocesses.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_bundle import export_small_models, small_bundle

from engine.deploy.check_cache import cached_check, check_key
from engine.runtime.bundle_manifest import BundleError, read_manifest

LOG = logging.getLogger("test.check_cache")


@pytest.fixture(scope="module")
def fp32_models(tmp_path_factory) -> dict[str, Path]:
    return export_small_models(tmp_path_factory.mktemp("models"))


def test_another_target_with_the_same_models_reuses_the_check(tmp_path, fp32_models):
    cache = tmp_path / "cache"
    local = small_bundle(tmp_path / "local", {"fp32": fp32_models})
    pi = small_bundle(tmp_path / "pi", {"fp32": fp32_models}, target="rpi4", arch="aarch64",
                      recipe={"name": "other", "hash": "1" * 16})
    first = cached_check(local, "fp32", 3, 1, None, cache, LOG)
    assert "reused" not in first and len(first["predictions"]) == 3
    second = cached_check(pi, "fp32", 3, 1, None, cache, LOG)
    assert second["reused"].startswith("cache/verify/fp32-")
    assert second["predictions"] == first["predictions"]
    # an entry with fewer timed passes than asked for is measured again, and replaced
    more = cached_check(pi, "fp32", 3, 2, None, cache, LOG)
    assert "reused" not in more and more["latency_ms"]["runs"] == 6
    (entry,) = (cache / "verify").iterdir()
    assert json.loads(entry.read_text())["runs"] == 2
    assert cached_check(local, "fp32", 3, 1, None, cache, LOG)["latency_ms"]["runs"] == 6


def test_the_key_follows_what_predictions_depend_on(tmp_path, fp32_models):
    manifest = read_manifest(small_bundle(tmp_path / "a", {"fp32": fp32_models}))
    key = check_key(manifest, "fp32", 40, None)
    moved = {**manifest, "target": "rpi4", "arch": "aarch64", "recipe": {"name": "x"}, "bundle_hash": "0"}
    assert check_key(moved, "fp32", 40, None) == key
    assert check_key(manifest, "fp32", 40, manifest["threads"]) == key  # the manifest's threads, named
    other_model = {**manifest, "files": {**manifest["files"], "models/detector.onnx": "f" * 64}}
    changed = [
        check_key(manifest, "fp32", 20, None),
        check_key(manifest, "fp32", 40, 2),
        check_key({**manifest, "postprocess": {**manifest["postprocess"], "thresh": 0.5}}, "fp32", 40, None),
        check_key({**manifest, "recognizer": {**manifest["recognizer"], "batch": 8}}, "fp32", 40, None),
        check_key(other_model, "fp32", 40, None),
    ]
    assert key not in changed and len(set(changed)) == len(changed)


def test_corrupt_entry_is_discarded_and_a_tampered_bundle_never_reuses(tmp_path, fp32_models, caplog):
    cache = tmp_path / "cache"
    bundle = small_bundle(tmp_path / "b", {"fp32": fp32_models})
    first = cached_check(bundle, "fp32", 2, 1, None, cache, LOG)
    (entry,) = (cache / "verify").iterdir()
    good = json.loads(entry.read_text())
    for bad in ('{"key": "cut off by a kill', json.dumps({**good, "runs": None}), json.dumps({**good, "report": {}})):
        entry.write_text(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = cached_check(bundle, "fp32", 2, 1, None, cache, LOG)
        assert "discarding unreadable check cache entry" in caplog.text
        assert "reused" not in again and again["predictions"] == first["predictions"]
    assert json.loads(entry.read_text())["report"]["predictions"] == first["predictions"]
    # the entry is valid, but the bundle no longer holds what its manifest (and the key) says
    with open(bundle / "models" / "recognizer.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"recognizer\.onnx.*sha256 mismatch"):
        cached_check(bundle, "fp32", 2, 1, None, cache, LOG)
