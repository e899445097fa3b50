// The device page of runtime.serve: pick or take a photo, POST it to /ocr, draw what the
// model read. Plain browser JavaScript, no library, no build step; it talks to this device
// only (relative URLs; the Content-Security-Policy allows nothing else). Text from the model
// or the user is put in the page with textContent only, never parsed as HTML.
"use strict";
(() => {
  const MIN_SCORE = 0.5; // recipe prelabel --min-score default: lines below it are flagged
  const TOKEN_KEY = "ocr-recipe-token"; // sessionStorage: this tab only, gone when it closes
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let lastJson = "";
  let photoUrl = null;

  function authHeaders() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: "Bearer " + token } : {};
  }

  async function call(path, options = {}) {
    const res = await fetch(path, {
      ...options, headers: authHeaders(), cache: "no-store", credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    const text = await res.text();
    let doc = null;
    try { doc = JSON.parse(text); } catch (_) { doc = null; }
    return { res, doc, text };
  }

  // The service's own words: {"detail": "..."} for every refusal (never a traceback).
  function describe({ res, doc, text }) {
    let detail = doc && doc.detail !== undefined ? doc.detail : text.slice(0, 300);
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    return `${res.status} ${res.statusText}: ${detail}`.trim();
  }

  function show(id, on) { $(id).hidden = !on; }

  function setError(message) {
    $("error").textContent = message || "";
    show("error", Boolean(message));
  }

  function askToken(message) {
    show("auth", true);
    $("token-error").textContent = message || "";
    $("token").focus();
  }

  function infoRow(list, name, value) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    list.append(dt, dd);
  }

  function short(hash) { return hash ? String(hash).slice(0, 12) : "?"; }

  async function loadInfo() {
    let answer;
    try { answer = await call("info"); } catch (err) {
      setError("The device does not answer: " + err.message);
      return false;
    }
    if (answer.res.status === 401) {
      const had = sessionStorage.getItem(TOKEN_KEY);
      sessionStorage.removeItem(TOKEN_KEY);
      askToken(had ? "That token was refused." : "");
      return false;
    }
    if (!answer.res.ok || !answer.doc) {
      setError(describe(answer));
      return false;
    }
    const info = answer.doc;
    const list = $("info");
    list.replaceChildren();
    const recipe = info.recipe || {};
    const models = info.models || {};
    infoRow(list, "target", `${info.target} (${info.arch || "?"})`);
    infoRow(list, "precision", info.active_precision || info.precision);
    infoRow(list, "release", info.release || short(info.bundle_hash));
    infoRow(list, "recipe", `${recipe.name || "?"} @ ${short(recipe.hash)}`);
    for (const name of Object.keys(models).sort()) {
      infoRow(list, name, `sha256 ${short(models[name].sha256)}`);
    }
    infoRow(list, "runtime", info.backend);
    const limits = info.limits || {};
    infoRow(list, "limits", `${(limits.max_body_bytes / 1048576).toFixed(1)} MB, ` +
      `${(limits.max_pixels / 1e6).toFixed(0)} megapixels per photo`);
    show("auth", false);
    return true;
  }

  function polygon(points, low, number, fontSize) {
    const poly = document.createElementNS(SVG, "polygon");
    poly.setAttribute("points", points.map((p) => p.join(",")).join(" "));
    if (low) poly.classList.add("low");
    const label = document.createElementNS(SVG, "text");
    // the number just left of the box's left edge, so it covers no text
    const left = points.reduce((a, b) => (b[0] < a[0] ? b : a));
    const ys = points.map((p) => p[1]);
    label.setAttribute("x", Math.max(fontSize * 0.6 * String(number).length, left[0] - 3));
    label.setAttribute("y", (Math.min(...ys) + Math.max(...ys)) / 2);
    label.setAttribute("text-anchor", "end");
    label.setAttribute("dominant-baseline", "middle");
    label.setAttribute("font-size", fontSize);
    label.textContent = String(number);
    return [poly, label];
  }

  function loaded(img) {
    return new Promise((resolve, reject) => {
      if (img.complete && img.naturalWidth) { resolve(); return; }
      img.onload = () => resolve();
      img.onerror = () => reject(new Error("the browser cannot show this image"));
    });
  }

  async function render(file, doc, roundTripMs) {
    const img = $("photo");
    if (photoUrl) URL.revokeObjectURL(photoUrl);
    photoUrl = URL.createObjectURL(file);
    img.src = photoUrl;
    show("result", true);
    const svg = $("boxes");
    svg.replaceChildren();
    const list = $("lines");
    list.replaceChildren();
    try { await loaded(img); } catch (err) { setError(err.message); }
    // The model saw the stored pixels (the service ignores EXIF orientation) and so does the
    // page (CSS image-orientation: none), but Chrome still reports the EXIF-rotated natural
    // size: when the drawn shape says width and height are swapped, swap them back.
    let w = img.naturalWidth || 1;
    let h = img.naturalHeight || 1;
    const drawn = img.clientWidth / Math.max(1, img.clientHeight);
    if (Math.abs(drawn - h / w) < Math.abs(drawn - w / h)) [w, h] = [h, w];
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const fontSize = Math.max(12, Math.round(Math.max(w, h) / 45));
    doc.lines.forEach((line, k) => {
      const low = !line.text.trim() || line.score < MIN_SCORE;
      svg.append(...polygon(line.points, low, k + 1, fontSize));
      const item = document.createElement("li");
      item.className = low ? "line low" : "line";
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = line.text || "(no text)";
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = line.score.toFixed(2);
      item.append(text, score);
      if (low) {
        const flag = document.createElement("span");
        flag.className = "flag";
        flag.textContent = "check";
        item.append(flag);
      }
      list.append(item);
    });
    $("latency").textContent = `${doc.lines.length} line${doc.lines.length === 1 ? "" : "s"} · ` +
      `model ${doc.latency_ms.toFixed(1)} ms on the device · ${Math.round(roundTripMs)} ms ` +
      `round trip (upload included)`;
    lastJson = JSON.stringify(doc, null, 2);
    $("json").textContent = lastJson;
    $("copied").textContent = "";
  }

  async function upload(input) {
    const file = input.files && input.files[0];
    input.value = ""; // the same file chosen again is a new reading
    if (!file) return;
    setError("");
    show("result", false);
    $("status").textContent = `Reading ${file.name} (${Math.round(file.size / 1024)} KB)…`;
    const form = new FormData();
    form.append("file", file, file.name);
    const t0 = performance.now();
    let answer;
    try {
      answer = await call("ocr", { method: "POST", body: form });
    } catch (err) {
      $("status").textContent = "";
      setError("The upload failed: " + err.message);
      return;
    }
    const roundTrip = performance.now() - t0;
    $("status").textContent = "";
    if (answer.res.status === 401) {
      await loadInfo();
      setError(describe(answer));
      return;
    }
    if (!answer.res.ok || !answer.doc || !Array.isArray(answer.doc.lines)) {
      setError(`${file.name}: ${describe(answer)}`);
      return;
    }
    await render(file, answer.doc, roundTrip);
    $("status").textContent = `Read ${file.name}.`;
  }

  async function copyJson() {
    let done = false;
    if (navigator.clipboard && window.isSecureContext) {
      try { await navigator.clipboard.writeText(lastJson); done = true; } catch (_) { done = false; }
    }
    if (!done) { // plain http on a LAN address is no secure context: the older way
      const area = document.createElement("textarea");
      area.value = lastJson;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.append(area);
      area.select();
      try { done = document.execCommand("copy"); } catch (_) { done = false; }
      area.remove();
    }
    $("copied").textContent = done ? "Copied." : "Copying was refused: select the JSON below.";
  }

  async function loadApi() {
    const answer = await call("openapi.json");
    if (!answer.res.ok || !answer.doc) return;
    const list = $("endpoints");
    for (const [path, methods] of Object.entries(answer.doc.paths || {})) {
      for (const [method, op] of Object.entries(methods)) {
        const item = document.createElement("li");
        const code = document.createElement("code");
        code.textContent = `${method.toUpperCase()} ${path}`;
        item.append(code, " " + (op.description || op.summary || "").replace(/\s+/g, " "));
        list.append(item);
      }
    }
  }

  $("min-score").textContent = String(MIN_SCORE);
  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault(); // never a form submission: the token stays out of every URL
    const token = $("token").value.trim();
    $("token").value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    await loadInfo();
  });
  for (const id of ["camera", "file"]) $(id).addEventListener("change", (e) => upload(e.target));
  $("copy").addEventListener("click", copyJson);
  loadInfo();
  loadApi();
})();
