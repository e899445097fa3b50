"""Target profiles: what a device is and what artifact it needs.

A profile is a small YAML file (``targets/rpi4.yaml``) validated like a recipe, with the same
positioned errors. Profiles are looked up, later entries overriding earlier ones, in:
the profiles shipped with the engine (``targets/`` at the repository root), the directories in
the ``RECIPE_TARGETS_PATH`` environment variable (``os.pathsep``-separated), and the recipe's
``profiles:`` list. A user adds a device by dropping a file into one of those directories.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .config import ConfigError, Diagnostic, Positions, Strict, read_yaml_file, validate_document

BUILTIN_PROFILES_DIR = Path(__file__).resolve().parent.parent / "targets"
PROFILES_ENV = "RECIPE_TARGETS_PATH"


class ShapeRange(Strict):
    """TensorRT optimisation profile for one dynamic input: NCHW min/opt/max."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    @model_validator(mode="after")
    def _ordered(self) -> ShapeRange:
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise ValueError("need min <= opt <= max in every dimension")
        return self


class TensorRTSpec(Strict):
    version: str = Field(description="TensorRT version on the device (engines are tied to it)")
    fp16: bool = True
    int8: bool = False
    workspace_mb: int = Field(1024, ge=64, le=65536)
    trtexec: str = "/usr/src/tensorrt/bin/trtexec"
    timing_cache: bool = True
    detector_shapes: ShapeRange
    recognizer_shapes: ShapeRange


class DetectorInput(Strict):
    max_side: int = Field(640, ge=64, le=4096, description="longer side fed to the detector")

    @field_validator("max_side")
    @classmethod
    def _mult32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"must be a multiple of 32 (got {v})")
        return v


class RecognizerInput(Strict):
    batch: int = Field(16, ge=1, le=1024, description="most crops per recognizer call")
    max_width: int = Field(320, ge=32, le=4096)
    max_padding: float = Field(
        1.0, ge=0, le=1,
        description="most of a batch's columns that may be padding (0: one crop per call; "
                    "1: pad to the batch's widest crop)")


class TargetProfile(Strict):
    name: str
    description: str = ""
    arch: Literal["x86_64", "aarch64", "armv7l"]
    runtime: Literal["onnxruntime", "tensorrt"]
    precision: Literal["int8", "fp16", "fp32", "auto"]
    transport: Literal["local", "ssh"] = "ssh"
    threads: int = Field(ge=1, le=256)
    spin_threads: bool = Field(
        False,
        description="let onnxruntime's worker threads busy-wait between operators (its default). "
                    "Off: the detector's and the recognizer's thread pools then stop taking turns "
                    "on the same cores (README: Latency)")
    providers: list[str] = ["CPUExecutionProvider"]
    detector: DetectorInput = DetectorInput()
    recognizer: RecognizerInput = RecognizerInput()
    install_dir: str = Field("~/ocr-recipe", description="release root on the device")
    python: str = "python3"
    python_min: str = Field("3.9", pattern=r"^\d+\.\d+$")
    reduce_range: bool = Field(False, description="int8 with 7-bit weights (AVX2 without VNNI)")
    memory_mb: int | None = Field(None, ge=64)
    tensorrt: TensorRTSpec | None = None

    @model_validator(mode="after")
    def _runtime_fits(self) -> TargetProfile:
        if self.runtime == "tensorrt" and self.tensorrt is None:
            raise ValueError("runtime tensorrt needs a `tensorrt:` section (version, shapes)")
        if self.runtime == "onnxruntime" and self.precision == "fp16" and self.arch != "x86_64":
            raise ValueError("fp16 on onnxruntime CPU is not faster than fp32; use fp32, int8 or auto")
        return self


def profile_dirs(extra: Iterable[Path | str] = ()) -> list[Path]:
    dirs = [BUILTIN_PROFILES_DIR]
    env = os.environ.get(PROFILES_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in extra]
    return dirs


def load_profile(path: Path) -> TargetProfile:
    doc = read_yaml_file(path)
    positions = Positions(doc, str(path))
    if isinstance(doc, dict) and "name" not in doc:
        doc["name"] = path.stem
    profile: TargetProfile = validate_document(TargetProfile, doc, positions)
    if profile.name != path.stem:
        raise ConfigError(
            [positions.diagnostic(("name",), f"must match the file name {path.stem!r}")]
        )
    return profile


def load_profiles(extra_dirs: Iterable[Path | str] = ()) -> dict[str, TargetProfile]:
    """Every profile found, by name; all invalid profile files are reported together."""
    profiles: dict[str, TargetProfile] = {}
    problems: list[Diagnostic] = []
    for directory in profile_dirs(extra_dirs):
        if not directory.is_dir():
            if directory != BUILTIN_PROFILES_DIR:
                problems.append(Diagnostic(str(directory), 1, 1, "profiles", "not a directory"))
            continue
        for path in sorted(directory.glob("*.yaml")):
            try:
                profiles[path.stem] = load_profile(path)
            except ConfigError as exc:
                problems.extend(exc.diagnostics)
    if problems:
        raise ConfigError(problems)
    return profiles
