"""The device page (GET /, engine/runtime/page/) in a real headless Chromium, against real servers.

The bundle holds the shipped base weights exported to ONNX (real onnxruntime sessions), and the
photo is a generated nameplate, so the page shows a real reading, boxes and a low-confidence
line included.  What the page must list is what the service answers for the same bytes (asked
here over HTTP), never a hard-coded text.  Three servers: ``recipe serve --bundle`` as on the
build machine (no token), ``python -m runtime.serve`` from inside the bundle as on a device
(a token, a small upload limit), each driven through the page by selenium with Chromium and
chromedriver from Debian (``.ci/setup.sh`` installs both; in CI a missing browser fails these
tests, elsewhere they skip and say why).  The browser's network log must show no request to
any host but the device.  Screenshots go to ``tests/artifacts/serve_page/``
(``$OCR_TEST_ARTIFACTS`` to move them).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from PIL import Image
from test_serve import ROOT, Server, _clean_env, _multipart

from engine.runtime.bundle_manifest import verify_bundle
from engine.runtime.serve_page import PAGE_BUDGET, PAGE_DIR

TOKEN = "page-token-5f0c2a9e7b"
PLATE_SEED = 79  # a generated nameplate the base weights read well, one line below 0.5
MIN_SCORE = 0.5  # the page flags lines as `recipe prelabel --min-score` does by default
PHONE = {"width": 390, "height": 1400, "deviceScaleFactor": 1, "mobile": True}
ARTIFACTS = Path(os.environ.get("OCR_TEST_ARTIFACTS", ROOT / "tests" / "artifacts")) / "serve_page"


# ------------------------------------------------------------------------------ browser


def _browser_parts() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why they cannot be used."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        return "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    return chromium, driver


@pytest.fixture(scope="module")
def browser_parts() -> tuple[str, str]:
    parts = _browser_parts()
    if isinstance(parts, str):
        if os.environ.get("CI"):
            pytest.fail(f"{parts}: .ci/setup.sh installs them, so CI must have them")
        pytest.skip(f"{parts}; the page tests need a real browser (outside CI they skip)")
    return parts


@pytest.fixture
def browser(browser_parts, tmp_path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_parts
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    driver.get("about:blank")
    driver.get_log("performance")  # drops the browser's own start page (chrome://new-tab-page)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, what: Callable[[Any], Any], seconds: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(what)


def _text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def _all(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, css))


def _visible(driver: Any, element_id: str) -> bool:
    return bool(driver.execute_script(f"return !document.getElementById('{element_id}').hidden"))


def _requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for, from Chrome's DevTools network events."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _assert_only_the_device(urls: list[str], port: int) -> None:
    assert urls, "the network log is empty"
    for url in urls:
        parts = urlsplit(url[len("blob:"):] if url.startswith("blob:") else url)
        assert url.startswith("data:") or (parts.scheme == "http" and parts.netloc == f"127.0.0.1:{port}"), url


def _upload(driver: Any, path: Path, picker: str = "file") -> None:
    """As if the file were chosen in the picker ("file", or "camera": capture=environment)."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, picker).send_keys(str(path))


def _screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    return path


# ------------------------------------------------------------------------------ bundle, photos


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The shipped base weights, exported to ONNX and packed as a local-cpu fp32 bundle."""
    from engine.compress.export import export_onnx
    from engine.data.synth import generate_sample
    from engine.deploy.bundle import build_bundle
    from engine.runtime.preprocess import detector_input, recognizer_input
    from engine.training.pretrained import BASE_WEIGHTS_DIR
    from engine.training.tasks import model_from_checkpoint

    d = tmp_path_factory.mktemp("page")
    det, _ = model_from_checkpoint(BASE_WEIGHTS_DIR / "detector_dbnet_mobilenetv3.pt")
    rec, meta = model_from_checkpoint(BASE_WEIGHTS_DIR / "recognizer_crnn_conv_h32.pt")
    img, _ = generate_sample(np.random.default_rng(1))
    export_onnx(det, "detector", d / "det.onnx", [detector_input(img, 640)[0]], simplify=False)
    crops = [img[100:132, 40:240], img[200:232, 60:200]]
    export_onnx(rec, "recognizer", d / "rec.onnx", [recognizer_input(crops, 32, 320)], simplify=False)
    return build_bundle(
        d / "bundle", models={"fp32": {"detector": d / "det.onnx", "recognizer": d / "rec.onnx"}},
        active="fp32", charset=meta["charset"], detector={"input": "input", "max_side": 640},
        recognizer={"input": "input", "height": 32, "max_width": 320, "batch": 8, "max_padding": 1.0},
        postprocess={"thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": 1.7, "min_text_score": 0.0},
        threads=2, providers=["CPUExecutionProvider"], runtime="onnxruntime", target="local-cpu",
        arch="x86_64", recipe={"name": "page-test", "hash": "3" * 16})


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Any]:
    """A generated nameplate as a JPEG, the same pixels with an EXIF 'rotate 90' tag, a text
    file, and a 1.5 MB file (over the device server's 1 MB limit)."""
    from engine.data.synth import generate_sample

    d = tmp_path_factory.mktemp("photos")
    img, lines = generate_sample(np.random.default_rng(PLATE_SEED))
    plate = d / "nameplate.jpg"
    assert cv2.imwrite(str(plate), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: show rotated 90 degrees clockwise
    rotated = d / "rotated.jpg"
    Image.open(plate).save(rotated, exif=exif.tobytes(), quality=92)
    notes = d / "notes.txt"
    notes.write_text("this is not a photo\n")
    big = d / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(1_500_000))
    return {"plate": plate, "rotated": rotated, "notes": notes, "big": big,
            "truth": [ln["text"] for ln in lines if not ln["ignore"]], "size": img.shape[1::-1]}


def _answer(server: Server, path: Path, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """What the service answers for these bytes, asked over HTTP like the page does."""
    body, ctype = _multipart("file", path.name, path.read_bytes())
    status, _, raw = server.request("POST", "/ocr", body, {**(headers or {}), "Content-Type": ctype})
    assert status == 200, raw
    return dict(json.loads(raw))


@pytest.fixture(scope="module")
def build_host_server(bundle) -> Iterator[Server]:
    server = Server([sys.executable, "-m", "engine.cli", "serve", "--bundle", str(bundle)],
                    cwd=ROOT, env=_clean_env())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def device_server(bundle) -> Iterator[Server]:
    """From the bundle directory, with the bundle's own copy of the runtime and page."""
    server = Server([sys.executable, "-m", "runtime.serve", "--token-env", "OCR_PAGE_TOKEN",
                     "--max-body-mb", "1"], cwd=bundle,
                    env=_clean_env(OCR_PAGE_TOKEN=TOKEN, PYTHONDONTWRITEBYTECODE="1"))
    yield server
    server.stop()


# ------------------------------------------------------------------------------ tests


def test_page_files_are_small_self_contained_and_in_every_bundle(bundle):
    files = {p.name: p.read_bytes() for p in PAGE_DIR.iterdir()}
    assert set(files) == {"index.html", "page.js", "page.css"}
    assert sum(map(len, files.values())) <= PAGE_BUDGET, {k: len(v) for k, v in files.items()}
    for name, data in files.items():  # no other host, no HTML parsing of answers, no storage
        text = data.decode().replace('"http://www.w3.org/2000/svg"', "")  # a name, not a URL
        for needle in ("http://", "https://", "@import", "innerHTML", "localStorage", "eval("):
            assert needle not in text, (name, needle)
    manifest = verify_bundle(bundle)["files"]
    for name, data in files.items():
        assert (bundle / "runtime" / "page" / name).read_bytes() == data
        assert f"runtime/page/{name}" in manifest


def test_page_reads_a_nameplate_on_the_build_host(browser, build_host_server, photos, bundle):
    server = build_host_server
    expected = _answer(server, photos["plate"])
    lines = expected["lines"]
    assert lines and sum(ln["text"] in photos["truth"] for ln in lines) >= len(photos["truth"]) // 2

    browser.get(f"http://127.0.0.1:{server.port}/")
    manifest = verify_bundle(bundle)
    _wait(browser, lambda d: "release" in _text(d, "#info"))
    info = _text(browser, "#info")
    files = manifest["files"]
    for needle in ("local-cpu", "fp32", manifest["bundle_hash"][:12], "page-test",
                   files["models/detector.onnx"][:12], files["models/recognizer.onnx"][:12]):
        assert needle in info, (needle, info)
    assert not _visible(browser, "auth")

    _upload(browser, photos["plate"])
    _wait(browser, lambda d: _visible(d, "result") and len(_all(d, "#lines li")) == len(lines))
    items = _all(browser, "#lines li")
    assert [i.find_element("css selector", ".text").text for i in items] == [
        ln["text"] or "(no text)" for ln in lines]
    assert [i.find_element("css selector", ".score").text for i in items] == [
        f"{ln['score']:.2f}" for ln in lines]
    low = [not ln["text"].strip() or ln["score"] < MIN_SCORE for ln in lines]
    assert any(low) and not all(low)
    assert ["low" in i.get_attribute("class") for i in items] == low
    assert [bool(i.find_elements("css selector", ".flag")) for i in items] == low
    # one box per line, at the answer's coordinates, drawn over the stored pixels
    polygons = _all(browser, "#boxes polygon")
    assert len(polygons) == len(lines)
    for poly, ln in zip(polygons, lines, strict=True):
        got = [float(v) for pair in poly.get_attribute("points").split() for v in pair.split(",")]
        assert np.allclose(got, np.ravel(ln["points"]), atol=1e-6)
        assert ("low" in (poly.get_attribute("class") or "")) == (not ln["text"].strip() or ln["score"] < MIN_SCORE)
    width, height = photos["size"]
    assert browser.find_element("id", "boxes").get_dom_attribute("viewBox") == f"0 0 {width} {height}"
    latency = _text(browser, "#latency")
    assert f"{len(lines)} lines" in latency and "ms on the device" in latency
    shown = json.loads(browser.execute_script("return document.getElementById('json').textContent"))
    assert shown["image"] == "nameplate.jpg" and shown["lines"] == lines
    browser.find_element("id", "copy").click()
    _wait(browser, lambda d: _text(d, "#copied"), 10)
    assert _text(browser, "#copied") == "Copied."
    # a phone-width screen: nothing wider than the viewport
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE["width"]
    shot = _screenshot(browser, "serve-page.png")
    assert shot.stat().st_size > 10_000

    # the same pixels with an EXIF rotation: the model ignores the tag, so must the drawing
    _upload(browser, photos["rotated"])
    _wait(browser, lambda d: _text(d, "#status") == "Read rotated.jpg.")
    assert browser.find_element("id", "boxes").get_dom_attribute("viewBox") == f"0 0 {width} {height}"
    _screenshot(browser, "serve-page-exif.png")

    assert "POST /ocr" in _text(browser, "#endpoints")
    browser.get(f"http://127.0.0.1:{server.port}/docs")  # Swagger UI needs a CDN: the API list
    _wait(browser, lambda d: d.current_url.endswith("/#api") and "POST /ocr" in _text(d, "#endpoints"))
    _assert_only_the_device(_requested_urls(browser), server.port)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_page_asks_for_the_token_once_and_keeps_it_for_the_tab(browser, device_server, photos):
    server = device_server
    expected = _answer(server, photos["plate"], {"Authorization": f"Bearer {TOKEN}"})
    browser.get(f"http://127.0.0.1:{server.port}/")
    _wait(browser, lambda d: _visible(d, "auth"))
    token_input = browser.find_element("id", "token")
    token_input.send_keys("not-the-token")
    token_input.submit()
    _wait(browser, lambda d: _text(d, "#token-error") == "That token was refused.")
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("css selector", "#token-form button").click()
    _wait(browser, lambda d: not _visible(d, "auth") and "release" in _text(d, "#info"))
    assert browser.execute_script("return sessionStorage.getItem('ocr-recipe-token')") == TOKEN
    assert browser.execute_script("return localStorage.length") == 0
    browser.refresh()  # the same tab: no second question
    _wait(browser, lambda d: "release" in _text(d, "#info"))
    assert not _visible(browser, "auth")

    assert browser.find_element("id", "camera").get_dom_attribute("capture") == "environment"
    _upload(browser, photos["plate"], "camera")  # a phone would open its camera here
    _wait(browser, lambda d: len(_all(d, "#lines li")) == len(expected["lines"]))
    assert [i.find_element("css selector", ".text").text for i in _all(browser, "#lines li")] == [
        ln["text"] or "(no text)" for ln in expected["lines"]]
    assert len(_all(browser, "#boxes polygon")) == len(expected["lines"])
    _screenshot(browser, "serve-page-token.png")
    urls = _requested_urls(browser)
    _assert_only_the_device(urls, server.port)
    assert not [u for u in urls if TOKEN in u] and TOKEN not in browser.current_url
    assert TOKEN not in server.log.getvalue()


def test_page_shows_the_service_error_for_a_non_image(browser, device_server, photos):
    server = device_server
    browser.get(f"http://127.0.0.1:{server.port}/")
    _wait(browser, lambda d: _visible(d, "auth"))
    browser.find_element("id", "token").send_keys(TOKEN)
    browser.find_element("css selector", "#token-form button").click()
    _wait(browser, lambda d: "release" in _text(d, "#info"))

    _upload(browser, photos["notes"])
    _wait(browser, lambda d: _visible(d, "error"))
    error = _text(browser, "#error")
    assert error == "notes.txt: 400 Bad Request: the body is not a PNG, JPEG, BMP or WebP image", error
    assert not _visible(browser, "result")
    _screenshot(browser, "serve-page-error.png")
    # an upload over --max-body-mb: the browser sends it all, and still reads the 413
    _upload(browser, photos["big"])
    _wait(browser, lambda d: _text(d, "#error").startswith("big.png: 413 "))
    assert "over the limit of 1048576 bytes (--max-body-mb)" in _text(browser, "#error")
    page = _text(browser, "body")
    assert "Traceback" not in page and 'File "' not in page
    _assert_only_the_device(_requested_urls(browser), server.port)
