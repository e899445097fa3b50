"""Deploy drills at the stage level: the real ``ship:TARGET`` / ``check:TARGET`` stages of a real
recipe run, against real OpenSSH servers on 127.0.0.1 (tests/sshd.py).

One module-scoped run trains, exports, builds and verifies a tiny recipe for two custom target
profiles (written to a temporary profiles directory named by the recipe's ``profiles:``):
``fleet`` (onnxruntime fp32 over ssh) and ``jetsim`` (runtime tensorrt, fp16 + TensorRT build
plan over ssh). The drills then run ``recipe run --only check:T`` / ``recipe rollback`` as
subprocesses with ``--set deploy.T=...`` pointing at fresh sshd "devices", and read the exit
status, ``summary.json``, the per-host ``hosts.json`` and the hosts' release directories.

Each device is its own sshd whose SFTP starts in its own home (``internal-sftp -d``), so the
profile's ``~/ocr-recipe`` resolves to a different install root per device although every
server runs on this machine as the same user.

The ONE stand-in: ``trtexec``. TensorRT cannot run without a Jetson GPU, so the jetsim device
gets a small Python script at the profile's ``tensorrt.trtexec`` path that parses the real
trtexec flags of the build plan strictly (``--onnx`` must be an ONNX file whose input is the
shape flags' tensor, ``--saveEngine``, ``--fp16``, ``--minShapes/--optShapes/--maxShapes`` with
min <= opt <= max, ``--memPoolSize=workspace:NM`` as TensorRT 8.6 wants it,
``--timingCacheFile`` in an existing directory), prints trtexec's log format and writes a file
in place of the engine; failing variants print real trtexec error text (CUDA out of memory, an
ONNX op without importer). Everything else — ssh, upload, sha256 on the device, the release
switch, rollback, the on-device check — is the real thing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sshd import SSHServer, _require_sshd

from engine.deploy.bundle import finalize_bundle
from engine.deploy.releases import current_release, read_history, ship
from engine.deploy.transport import DeployError, SSHTransport
from engine.runtime.bundle_manifest import read_manifest

ROOT = Path(__file__).resolve().parent.parent

RECIPE = """\
name: drills
workdir: {workdir}
profiles: [{profiles}]
dataset:
  synthetic: {{count: 4, val_count: 2, seed: 3, image_size: [256, 192]}}
models:
  detector: {{arch: dbnet, input_size: 128, init: null}}
  recognizer: {{arch: crnn, sequence: conv, max_width: 160, init: null}}
train:
  epochs: 1
  detector: {{batch_size: 4}}
  recognizer: {{batch_size: 16}}
optimize:
  prune: {{amount: 0}}
  export: {{simplify: false}}
targets: [fleet, jetsim]
verify: {{max_drop: 1.0, samples: 2}}
"""

PROFILE_COMMON = """\
arch: {arch}
transport: ssh
threads: 1
providers: [CPUExecutionProvider]
detector: {{max_side: 128}}
recognizer: {{batch: 4, max_width: 160}}
python: {python}
"""
FLEET = "description: drill fleet (onnxruntime over ssh)\nruntime: onnxruntime\nprecision: fp32\n"
JETSIM = """\
description: drill Jetson (TensorRT plan built on the device by a stand-in trtexec)
runtime: tensorrt
precision: fp16
tensorrt:
  version: "8.6.2"
  workspace_mb: 256
  trtexec: {trtexec}
  detector_shapes: {{min: [1, 3, 32, 32], opt: [1, 3, 96, 128], max: [1, 3, 128, 128]}}
  recognizer_shapes: {{min: [1, 3, 32, 32], opt: [4, 3, 32, 160], max: [4, 3, 32, 160]}}
"""

# The stand-in for the one binary that needs a Jetson GPU (see the module docstring).
TRTEXEC = r'''#!{python}
"""Stand-in trtexec (TensorRT 8.6.2 flags and log format); mode: {mode}."""
import hashlib, json, os, sys, time
MODE, VERSION, TAG = "{mode}", "8.6.2", "[TensorRT v8602]"
KNOWN = {{"--onnx", "--saveEngine", "--fp16", "--minShapes", "--optShapes", "--maxShapes",
         "--memPoolSize", "--timingCacheFile"}}
cmd = " ".join([sys.argv[0], *sys.argv[1:]])
def stamp():
    return time.strftime("[%m/%d/%Y-%H:%M:%S]")
def fail(*lines):
    for line in lines:
        print(stamp(), line)
    print("&&&& FAILED TensorRT.trtexec", TAG, "#", cmd)
    sys.exit(1)
print("&&&& RUNNING TensorRT.trtexec", TAG, "#", cmd)
opts = {{}}
for arg in sys.argv[1:]:
    key, eq, value = arg.partition("=")
    if key not in KNOWN or (key == "--fp16") == bool(eq) or key in opts:
        fail("[E] Unknown or repeated option: " + arg)
    opts[key] = value
need = KNOWN - {{"--timingCacheFile"}}
if need - set(opts):
    fail("[E] missing options: " + ", ".join(sorted(need - set(opts))))
import onnx
model = onnx.load(opts["--onnx"])  # relative to the release directory, as planned
inputs = [i.name for i in model.graph.input]
shapes = {{}}
for key in ("--minShapes", "--optShapes", "--maxShapes"):
    name, _, dims = opts[key].rpartition(":")
    if name not in inputs:
        fail("[E] Cannot find input tensor with name \"%s\" in the network inputs!" % name)
    shapes[key] = [int(d) for d in dims.split("x")]
    if len(shapes[key]) != 4 or min(shapes[key]) < 1:
        fail("[E] bad shape " + opts[key])
lo, mid, hi = shapes["--minShapes"], shapes["--optShapes"], shapes["--maxShapes"]
if not all(a <= b <= c for a, b, c in zip(lo, mid, hi)):
    fail("[E] min <= opt <= max violated")
pool, _, size = opts["--memPoolSize"].partition(":")
if pool != "workspace" or not size.endswith("M") or not size[:-1].isdigit():
    fail("[E] Invalid memPoolSize " + opts["--memPoolSize"])
engine = opts["--saveEngine"]
if not os.path.isdir(os.path.dirname(os.path.abspath(engine))):
    fail("[E] cannot write engine " + engine)
print(stamp(), "[I] === Model Options ===")
print(stamp(), "[I] Format: ONNX")
print(stamp(), "[I] Model:", opts["--onnx"])
print(stamp(), "[I] TensorRT version:", VERSION)
print(stamp(), "[I] [TRT] ----------------------------------------------------------------")
print(stamp(), "[I] [TRT] Input filename:  ", opts["--onnx"])
if MODE == "oom":
    fail("[W] [TRT] Requested amount of GPU memory (%d bytes) could not be allocated. There may "
         "not be enough free memory for allocation to succeed." % (int(size[:-1]) << 20),
         "[E] Error[1]: [defaultAllocator.cpp::allocate::20] Error Code 1: Cuda Runtime (out of memory)",
         "[E] Error[2]: [builder.cpp::buildSerializedNetwork::751] Error Code 2: Internal Error "
         "(Assertion engine != nullptr failed. )",
         "[E] Engine could not be created from network", "[E] Building engine failed",
         "[E] Failed to create engine from model or file.", "[E] Engine set up failed")
if MODE == "unsupported":
    fail("[E] [TRT] ModelImporter.cpp:771: While parsing node number 12 [GridSample -> \"/Grid\"]:",
         "[E] [TRT] ModelImporter.cpp:774: ERROR: ModelImporter.cpp:195 In function parseGraph:",
         "[6] Invalid Node - /GridSample: UNSUPPORTED_NODE: No importer registered for op: GridSample",
         "[E] Failed to parse onnx file", "[E] Parsing model failed",
         "[E] Failed to create engine from model or file.", "[E] Engine set up failed")
cache = opts.get("--timingCacheFile")
if cache is not None:
    if not os.path.isdir(os.path.dirname(os.path.abspath(cache))):
        fail("[E] cannot write timing cache " + cache)
    with open(cache, "a") as fh:
        fh.write(opts["--onnx"] + "\n")
with open(engine, "wb") as fh:
    fh.write(b"STAND-IN TENSORRT ENGINE\n" + json.dumps({{
        "onnx_sha256": hashlib.sha256(open(opts["--onnx"], "rb").read()).hexdigest(),
        "shapes": shapes, "fp16": True, "workspace": size}}).encode())
print(stamp(), "[I] Engine built in 0.01 sec.")
print("&&&& PASSED TensorRT.trtexec", TAG, "#", cmd)
'''


def install_trtexec(path: Path, mode: str = "ok") -> None:
    """Put the stand-in trtexec (``mode`` ok | oom | unsupported) where the profile says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TRTEXEC.format(python=sys.executable, mode=mode))
    path.chmod(0o755)


class Device(SSHServer):
    """An sshd whose SFTP starts in its own home: each device has its own install root."""

    @property
    def home(self) -> Path:
        return self.dir / "home"

    def _write_configs(self) -> None:
        super()._write_configs()
        self.home.mkdir(exist_ok=True)
        text = self.config.read_text()
        line = "Subsystem sftp internal-sftp\n"
        assert line in text, f"tests/sshd.py changed its sftp line; update Device: {text}"
        self.config.write_text(text.replace(line, f"Subsystem sftp internal-sftp -d {self.home}\n"))

    @property
    def root(self) -> Path:
        return self.home / "ocr-recipe"

    def current(self) -> str | None:
        link = self.root / "current"
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def connections(self) -> int:
        return self.log.read_text(errors="replace").count("Accepted publickey")


@dataclass
class Drills:
    tmp: Path
    recipe: Path
    run_dir: Path
    trtexec: Path

    def cli(self, *args: str, sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "engine.cli", *args]
        for s in sets:
            argv += ["--set", s]
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800)

    def run(self, target: str, deploy: str, *sets: str) -> subprocess.CompletedProcess[str]:
        return self.cli("run", str(self.recipe), "--only", f"check:{target}",
                        sets=(f"deploy.{target}={deploy}", *sets))

    def hosts(self, stage: str) -> dict[str, dict]:
        kind, target = stage.split(":")
        return json.loads((self.run_dir / kind / target / "hosts.json").read_text())

    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def drills(tmp_path_factory: pytest.TempPathFactory) -> Drills:
    _require_sshd()
    tmp = tmp_path_factory.mktemp("drills")
    profiles = tmp / "profiles"
    profiles.mkdir()
    trtexec = tmp / "jetson-sysroot" / "usr" / "src" / "tensorrt" / "bin" / "trtexec"
    common = PROFILE_COMMON.format(arch=os.uname().machine, python=sys.executable)
    (profiles / "fleet.yaml").write_text(FLEET + common)
    (profiles / "jetsim.yaml").write_text(JETSIM.format(trtexec=trtexec) + common)
    recipe = tmp / "drills.yaml"
    recipe.write_text(RECIPE.format(workdir=tmp / "runs", profiles=profiles))
    d = Drills(tmp, recipe, tmp / "runs" / "drills", trtexec)
    res = d.cli("run", str(recipe))  # the real stages up to verify; ship/check: no hosts yet
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return d


class Fleet:
    """Devices made on demand; ``deploy(*names, down=(), **extra)`` -> a ``deploy.T`` section.

    Names in ``down`` get an sshd that is started and then stopped (a powered-off device).
    The section is JSON (which is YAML), one ``--set`` value; it names an ssh_config with one
    alias per device and a known_hosts with each device's host key.
    """

    def __init__(self, base: Path):
        self.base = base
        self.servers: dict[str, Device] = {}

    def deploy(self, *names: str, down: tuple[str, ...] = (), **extra: object) -> str:
        config, known = [], []
        for name in names:
            if name not in self.servers:
                self.servers[name] = Device(self.base / name, name)
                self.servers[name].start()
            dev = self.servers[name]
            if name in down:
                dev.stop()
            config.append(f"Host {name}\n  HostName 127.0.0.1\n  Port {dev.port}\n"
                          f"  User {dev.user}\n  IdentityFile {dev.client_key}\n"
                          "  IdentitiesOnly yes\n")
            known.append(dev.host_key_line())
        tag = "-".join(names)
        (self.base / f"ssh_config-{tag}").write_text("".join(config))
        (self.base / f"known_hosts-{tag}").write_text("".join(known))
        section = {"hosts": list(names), "ssh_config": str(self.base / f"ssh_config-{tag}"),
                   "known_hosts": str(self.base / f"known_hosts-{tag}"), **extra}
        return json.dumps(section)

    def transport(self, name: str) -> SSHTransport:
        return SSHTransport(name, "~/ocr-recipe", ssh_config=self.base / f"ssh_config-{name}",
                            known_hosts=self.base / f"known_hosts-{name}")

    def stop(self) -> None:
        for dev in self.servers.values():
            dev.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    _require_sshd()
    f = Fleet(tmp_path)
    yield f
    f.stop()


@pytest.fixture(scope="module")
def shipped(drills: Drills, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, str]]:
    """One device with release A shipped and checked by a real run (shared by the drills that
    need a previous release): (its Fleet, its deploy section)."""
    f = Fleet(tmp_path_factory.mktemp("shipped"))
    deploy = f.deploy("dev-rel")
    res = drills.run("fleet", deploy)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    yield f, deploy
    f.stop()


def release(tag: str) -> str:
    """A --set that makes a new bundle: the int8 exclusion list is recorded in the manifest
    (inert here: neither target has an int8 model), so only build and verify re-run, not
    training or evaluate."""
    return f"optimize.quantize.exclude=[drill-{tag}]"


# ------------------------------------------------------------------------------ TensorRT


def test_jetson_engines_are_built_on_the_device_before_current_moves(drills, fleet, caplog):
    install_trtexec(drills.trtexec, "ok")
    res = drills.run("jetsim", fleet.deploy("jetson-a"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    dev = fleet.servers["jetson-a"]
    shipped = drills.hosts("ship:jetsim")["jetson-a"]
    assert shipped["status"] == "ok" and shipped["tensorrt"] == "8.6.2"
    release_dir = dev.root / "releases" / dev.current()
    manifest = read_manifest(release_dir)
    record = json.loads((release_dir / "tensorrt" / "build.json").read_text())
    assert record["trt_version"] == "8.6.2" and record["version_source"] == "trtexec"
    assert record["planned_version"] == "8.6.2" and record["trtexec"] == str(drills.trtexec)
    for model in ("detector", "recognizer"):
        plan = manifest["tensorrt"][model]
        engine = release_dir / plan["engine"]  # where the runtime looks for it
        assert engine.read_bytes().startswith(b"STAND-IN TENSORRT ENGINE")
        assert not Path(f"{engine}.tmp").exists()
        assert record["engines"][model]["path"] == plan["engine"]
        built = json.loads(engine.read_bytes().split(b"\n", 1)[1])
        assert built["shapes"]["--maxShapes"] == plan["shapes"]["max"]
        assert built["workspace"] == "256M"
        assert "&&&& PASSED" in (release_dir / "tensorrt" / f"build_{model}.log").read_text()
    # one timing cache per device, outside the releases, shared by every later build
    assert len((dev.root / "tensorrt" / "timing.cache").read_text().splitlines()) == 2
    # the on-device check ran on that release; the runtime FOUND the engines there and only
    # fell back to onnxruntime because this machine has no tensorrt module
    checked = drills.hosts("check:jetsim")["jetson-a"]
    assert checked["status"] == "ok" and checked["release"] == dev.current()[:12]
    from engine.runtime.pipeline import OCRPipeline

    with caplog.at_level("WARNING", logger="runtime.pipeline"):
        OCRPipeline(release_dir)
    assert "TensorRT unavailable" in caplog.text and "not built yet" not in caplog.text
    # the next release runs out of GPU memory while building: the stage fails naming the host,
    # and the device keeps serving the release above
    good = dev.current()
    install_trtexec(drills.trtexec, "oom")
    res = drills.run("jetsim", fleet.deploy("jetson-a"), release("trt-oom"))
    assert res.returncode != 0
    failed = drills.hosts("ship:jetsim")["jetson-a"]
    assert failed["status"] == "failed" and failed["error"].startswith("jetson-a: TensorRT build")
    assert "out of GPU memory" in failed["error"]
    assert "jetson-a: TensorRT build of the detector failed" in drills.summary()["failed"]["ship:jetsim"]
    assert dev.current() == good


def test_jetson_build_failures_name_the_host_and_keep_the_previous_release(drills, fleet):
    """Out of memory, an unsupported op and a missing trtexec, through releases.ship over ssh."""
    install_trtexec(drills.trtexec, "ok")
    fleet.deploy("jetson-b")
    dev = fleet.servers["jetson-b"]
    verified = drills.run_dir / "verify" / "jetsim" / "bundle"
    python = sys.executable

    def variant(tag: str) -> Path:
        """The verified bundle with one more manifest field: a new release to ship."""
        copy = drills.tmp / f"bundle-{tag}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(verified, copy)
        meta = {k: v for k, v in read_manifest(copy).items()
                if k not in ("format", "files", "bundle_hash")}
        finalize_bundle(copy, {**meta, "drill": tag})
        return copy

    cases = {
        "oom": r"^jetson-b: TensorRT build of the detector failed on the device .*out of GPU "
               r"memory.*lower tensorrt\.workspace_mb \(now 256\)",
        "unsupported": r"^jetson-b: .*uses operator GridSample that this TensorRT cannot import",
        "missing": r"^jetson-b: trtexec not found on the device: .*/usr/src/tensorrt/bin/trtexec "
                   r"is missing",
    }
    with fleet.transport("jetson-b") as t:
        first = ship(t, verified, python=python)
        assert first.tensorrt and first.tensorrt["trt_version"] == "8.6.2"
        again = ship(t, verified, python=python)  # same release: engines reused, not rebuilt
        assert again.tensorrt and again.tensorrt["reused"] and not again.changed
        for mode, pattern in cases.items():
            if mode == "missing":
                drills.trtexec.unlink()
            else:
                install_trtexec(drills.trtexec, mode)
            bundle = variant(mode)
            with pytest.raises(DeployError, match=pattern):
                ship(t, bundle, python=python)
            assert current_release(t) == first.release, mode
            new = read_manifest(bundle)["bundle_hash"]
            assert not (dev.root / "releases" / new).exists()  # never renamed into place
            if mode != "missing":  # the failed build's log stays for the operator
                log = dev.root / "releases" / f"{new}.partial" / "tensorrt" / "build_detector.log"
                assert "&&&& FAILED" in log.read_text()
        # TensorRT fixed: the same release resumes from its .partial upload and goes live
        install_trtexec(drills.trtexec, "ok")
        fixed = ship(t, bundle, python=python)
        assert fixed.changed and fixed.uploaded_bytes == 0 and current_release(t) == fixed.release
        assert [e["action"] for e in read_history(t)] == ["ship", "ship"]


# ------------------------------------------------------------------------------ fleets


def test_one_host_down_the_other_is_deployed_and_checked(drills, fleet):
    res = drills.run("fleet", fleet.deploy("dev-up", "dev-down", down=("dev-down",)))
    assert res.returncode != 0
    hosts = drills.hosts("ship:fleet")
    assert hosts["dev-down"]["status"] == "failed"
    assert hosts["dev-down"]["error"].startswith("dev-down: unreachable")
    up = hosts["dev-up"]
    assert up["status"] == "ok" and up["check"].startswith("ok: hmean")
    assert fleet.servers["dev-up"].current().startswith(up["release"])
    assert fleet.servers["dev-up"].connections() > 0  # what the canary drill counts on
    summary = drills.summary()
    assert "dev-down: unreachable" in summary["failed"]["ship:fleet"]
    assert "check:fleet" in summary["not_run"]
    assert "dev-down" in res.stdout + res.stderr


def test_canary_failure_stops_the_rest(drills, fleet):
    res = drills.run("fleet", fleet.deploy("canary", "dev-rest", down=("canary",), canary=True))
    assert res.returncode != 0
    hosts = drills.hosts("ship:fleet")
    assert hosts["canary"]["status"] == "failed" and "unreachable" in hosts["canary"]["error"]
    assert hosts["dev-rest"] == {"status": "skipped", "error": "canary failed"}
    rest = fleet.servers["dev-rest"]
    assert rest.connections() == 0 and not rest.root.exists()  # never even logged in


def test_rollback_cli_switches_back(drills, shipped):
    fleet, deploy = shipped
    dev = fleet.servers["dev-rel"]
    before = dev.current()
    res = drills.run("fleet", deploy, release("b"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert dev.current() != before
    sets = (f"deploy.fleet={deploy}",)
    res = drills.cli("rollback", str(drills.recipe), "--target", "fleet", "--host", "dev-rel",
                     sets=sets)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"dev-rel: current -> {before[:12]}"
    assert dev.current() == before
    res = drills.cli("rollback", str(drills.recipe), "--target", "fleet", "--host", "nope",
                     sets=sets)
    assert res.returncode != 0 and "no host 'nope'" in res.stderr


def test_check_below_the_bar_rolls_back_to_the_previous_release(drills, shipped):
    fleet, deploy = shipped
    dev = fleet.servers["dev-rel"]
    before = dev.current()
    # a new release with a latency bar no device can meet
    res = drills.run("fleet", deploy, release("c"), "verify.max_latency_ms=0.001")
    assert res.returncode != 0
    checked = drills.hosts("check:fleet")["dev-rel"]
    assert checked["status"] == "failed"
    assert "latency_p50_ms" in checked["error"] and "max_latency_ms 0.001" in checked["error"]
    assert f"rolled back to {before[:12]}" in checked["error"]
    assert dev.current() == before
    lines = (dev.root / "releases" / "history.jsonl").read_text().splitlines()
    history = [(e["action"], e["release"]) for e in map(json.loads, lines)]
    assert history[-1] == ("rollback", before) and history[-2][0] == "ship"
    assert history[-2][1] != before and (dev.root / "releases" / history[-2][1]).is_dir()
    assert "check:fleet" in drills.summary()["failed"]


# ------------------------------------------------------------------------------ parsing


def test_trtexec_version_and_failure_text() -> None:
    from engine.deploy.tensorrt_remote import classify_failure, version_from_log

    assert version_from_log("[11/24/2026-00:01:02] [I] TensorRT version: 10.3.0") == "10.3.0"
    assert version_from_log("&&&& RUNNING TensorRT.trtexec [TensorRT v8201] # trtexec") == "8.2.1"
    assert version_from_log("&&&& PASSED TensorRT.trtexec [TensorRT v100300] # x") == "10.3.0"
    assert version_from_log("no version here") is None
    oom = classify_failure("pi@n1", "recognizer", 1, "[E] [TRT] 2: [virtualMemoryBuffer.cpp::"
                           "resizePhysical::127] Error Code 2: OutOfMemory (no further "
                           "information)\n&&&& FAILED", "/x/build.log", 1024)
    assert str(oom).startswith("pi@n1: TensorRT build of the recognizer failed")
    assert "out of GPU memory" in str(oom) and "(now 1024)" in str(oom) and "/x/build.log" in str(oom)
    trt10 = classify_failure("n2", "detector", 1, "[E] [TRT] ModelImporter.cpp:914: ERROR: "
                             "onnxOpImporters.cpp:5409 In node 7 with name: /DeformConv and "
                             "operator: DeformConv (UNSUPPORTED_NODE)", "/l", 64)
    assert "uses operator DeformConv that this TensorRT cannot import (UNSUPPORTED_NODE)" in str(trt10)
    other = classify_failure("n3", "detector", 3, "[E] Engine set up failed\n", "/l", 64)
    assert str(other) == ("n3: TensorRT build of the detector failed on the device (log: /l): "
                          "trtexec exited with 3: [E] Engine set up failed")
