// The playground: posts the code and files to /v1/execute (streamed as NDJSON) and shows the output
// live, then the result document. With "Keep state" on, it opens a session (POST /v1/sessions), runs
// in it (/v1/sessions/{id}/execute) so variables carry over, and closes it when turned off.
// Everything the program produced is shown with textContent or as data, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(b64) {
  const s = atob(b64);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
}

async function readFiles(input) {
  const files = {};
  for (const f of input.files) files[f.name] = toBase64(await f.arrayBuffer());
  return files;
}

function clear() {
  for (const id of ["stdout", "stderr", "error", "outcome", "usage", "status"]) $(id).textContent = "";
  $("figures").replaceChildren();
  $("rich").replaceChildren();
  $("outputs").replaceChildren();
  $("error").hidden = true;
  $("summary").hidden = true;
}

function show(doc) {
  $("summary").hidden = false;
  $("outcome").textContent = doc.outcome;
  $("outcome").className = doc.outcome === "ok" ? "ok" : "";
  const u = doc.usage;
  $("usage").textContent = `exit ${doc.exit_code} · ${u.wall_ms.toFixed(1)} ms wall · ${u.cpu_ms.toFixed(1)} ms CPU · ` +
    `${(u.peak_memory_bytes / 1048576).toFixed(1)} MiB`;
  $("stdout").textContent = doc.stdout + (doc.stdout_truncated ? "\n[output truncated]" : "");
  $("stderr").textContent = doc.stderr + (doc.stderr_truncated ? "\n[output truncated]" : "");
  if (doc.error) {
    $("error").hidden = false;
    $("error").textContent = doc.error.traceback || `${doc.error.type}: ${doc.error.message}`;
  }
  for (const out of doc.outputs || []) $("rich").append(richOutput(out));
  for (const img of doc.images) {
    const el = document.createElement("img");
    el.alt = img.name;
    el.src = `data:${img.mime_type};base64,${img.data_base64}`;
    $("figures").append(el);
  }
  for (const f of doc.files) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([fromBase64(f.data_base64)], { type: f.mime_type }));
    a.download = f.path.split("/").pop();
    a.textContent = `${f.path} (${f.size} bytes)`;
    li.append(a);
    $("outputs").append(li);
  }
}

// A program's rich output. HTML and plotly figures are the program's: each goes into its own
// iframe of /static/frame.html, a sandbox with an opaque origin (it cannot reach this page or its key); the
// output is handed over by postMessage. Images are data: URLs; anything else is text.
const frames = new Map();
window.addEventListener("message", (event) => {
  const frame = frames.get(event.source);
  const h = event.data && event.data.height;
  if (frame && Number.isFinite(h)) frame.style.height = `${Math.min(Math.max(h, 40), 2000)}px`;
});

function richOutput(out) {
  const box = document.createElement("div");
  box.className = out.main ? "rich main" : "rich";
  const data = out.data;
  const plotly = data["application/vnd.plotly.v1+json"];
  const html = data["text/html"];
  const image = data["image/png"] ? ["image/png", data["image/png"]] : data["image/jpeg"] ? ["image/jpeg", data["image/jpeg"]] : null;
  if (plotly || (html && !image)) {
    const frame = document.createElement("iframe");
    frame.sandbox = "allow-scripts";
    frame.title = "program output";
    frame.src = "/static/frame.html";
    frame.addEventListener("load", () => {
      frames.set(frame.contentWindow, frame);
      frame.contentWindow.postMessage(plotly ? { plotly } : { html }, "*");
    });
    box.append(frame);
  } else if (image) {
    const img = document.createElement("img");
    img.alt = data["text/plain"];
    img.src = `data:${image[0]};base64,${image[1]}`;
    box.append(img);
  } else if (data["image/svg+xml"]) {
    const img = document.createElement("img");  // an <img> never runs an SVG's scripts
    img.alt = data["text/plain"];
    img.src = URL.createObjectURL(new Blob([data["image/svg+xml"]], { type: "image/svg+xml" }));
    box.append(img);
  } else {
    const pre = document.createElement("pre");
    pre.textContent = data["text/markdown"] || data["text/plain"];
    box.append(pre);
  }
  if (out.truncated) {
    const note = document.createElement("p");
    note.textContent = "[output truncated at the configured cap]";
    box.append(note);
  }
  return box;
}

// Reads the NDJSON answer line by line: stdout/stderr text appears as the program writes it.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffered += decoder.decode(value || new Uint8Array(), { stream: !done });
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line.trim()) onEvent(JSON.parse(line));
    }
    if (done) return;
  }
}

function authHeaders() {
  const key = $("key").value.trim();
  sessionStorage.setItem("sandbox-key", key);
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function errorText(r) {
  const doc = await r.json().catch(() => ({}));
  return `${r.status}: ${doc.error ? doc.error.message : r.statusText}`;
}

let sessionId = null;   // the open session while "Keep state" is on

function sessionEnded(message) {
  sessionId = null;
  $("session").checked = false;
  $("session-status").className = "";
  $("session-status").textContent = message;
}

async function toggleSession() {
  const box = $("session");
  box.disabled = true;
  try {
    if (box.checked) {
      const r = await fetch("/v1/sessions", { method: "POST", headers: authHeaders(), body: "{}" });
      if (!r.ok) { sessionEnded(`no session: ${await errorText(r)}`); return; }
      const doc = await r.json();
      sessionId = doc.session_id;
      $("session-status").className = "on";
      $("session-status").textContent = `session open: state is kept between runs (closes after ${doc.ttl} s idle)`;
    } else if (sessionId) {
      const id = sessionId;
      sessionEnded("session closed: each run starts fresh");
      await fetch(`/v1/sessions/${encodeURIComponent(id)}`, { method: "DELETE", headers: authHeaders() });
    }
  } catch (e) {
    sessionEnded(`session request failed: ${e}`);
  } finally {
    box.disabled = false;
  }
}

async function run() {
  const button = $("run");
  button.disabled = true;
  clear();
  $("status").textContent = "running…";
  try {
    const body = { code: $("code").value, files: await readFiles($("files")) };
    const timeout = parseFloat($("timeout").value);
    if (timeout > 0) body.timeout = timeout;
    const headers = { ...authHeaders(), Accept: "application/x-ndjson" };
    const url = sessionId ? `/v1/sessions/${encodeURIComponent(sessionId)}/execute` : "/v1/execute";
    const t0 = performance.now();
    const r = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
    if (!r.ok) {
      const message = await errorText(r);
      $("status").textContent = message;
      if (sessionId && (r.status === 404 || r.status === 410)) sessionEnded(`session ended (${message}); run again to start fresh`);
      return;
    }
    let finished = false;
    await readEvents(r, (event) => {
      if (event.type === "stdout" || event.type === "stderr") {
        $(event.type).textContent += event.text;
      } else if (event.type === "result") {
        finished = true;
        show(event);
      } else if (event.type === "error") {
        $("status").textContent = `error: ${event.error.message}`;
      }
    });
    if (finished) $("status").textContent = `done in ${(performance.now() - t0).toFixed(0)} ms (round trip)`;
  } catch (e) {
    $("status").textContent = `request failed: ${e}`;
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key").value = sessionStorage.getItem("sandbox-key") || "";
  $("run").addEventListener("click", run);
  $("session").checked = false;
  $("session").addEventListener("change", toggleSession);
  window.addEventListener("pagehide", () => {   // leave no session open behind the page
    if (sessionId) fetch(`/v1/sessions/${encodeURIComponent(sessionId)}`, { method: "DELETE", headers: authHeaders(), keepalive: true });
  });
  $("code").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
  });
});
