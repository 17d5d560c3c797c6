// The page's script: plain JavaScript, served by `marport ui` itself (no CDN, no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const AUDIO_TYPES = { wav: "audio/wav", flac: "audio/flac", ogg: "audio/ogg", mp3: "audio/mpeg" };
const TITLES = {
  400: "The model could not read this input",
  403: "Refused",
  406: "Not acceptable",
  413: "Too large for the model's caps",
  415: "Unsupported format",
  503: "The model is not available right now",
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

// One request through the page's server, with a running clock while it waits.
async function send(model, body, contentType, statusBox) {
  const started = performance.now();
  const tick = () => { statusBox.textContent = `Working… ${((performance.now() - started) / 1000).toFixed(0)} s`; };
  tick();
  const timer = setInterval(tick, 500);
  try {
    const reply = await fetch(`/api/predict/${encodeURIComponent(model)}`, {
      method: "POST", headers: { "Content-Type": contentType }, body,
    });
    const text = await reply.text();
    let answer = null;
    try { answer = JSON.parse(text); } catch (_) { /* not JSON: shown as text below */ }
    statusBox.textContent = `Answered in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
    return { ok: reply.ok, status: reply.status, answer, text };
  } catch (err) {
    statusBox.textContent = "";
    return { ok: false, status: 0, answer: null, text: `The page could not reach its server: ${err}` };
  } finally {
    clearInterval(timer);
  }
}

function showError(box, reply) {
  const a = reply.answer || {};
  const title = TITLES[reply.status] || (reply.status >= 500 ? "The server failed on this request" : "Request failed");
  const message = a.message || reply.text || "no details";
  box.replaceChildren(el("div", { class: "error", role: "alert" },
    el("strong", { text: `${title}` }), el("br"),
    el("span", { text: message }),
    a.type ? el("div", { class: "muted", text: `(${a.type}, HTTP ${reply.status})` }) : ""));
}

function reviewNote(answer) {
  if (answer.review === undefined) return "";
  return el("div", { class: answer.review ? "review" : "muted",
    text: answer.review ? "Marked for review by a person." : "Not marked for review." });
}

// ------------------------------------------------------------------ sentiment

function shadedWords(attributions) {
  const top = Math.max(1e-9, ...attributions.map((w) => Math.abs(w.score)));
  const box = el("p", { class: "words", "aria-label": "words shaded by attribution" });
  for (const w of attributions) {
    const alpha = Math.min(1, Math.abs(w.score) / top) * 0.75;
    const colour = w.score >= 0 ? `rgba(0, 128, 60, ${alpha})` : `rgba(190, 20, 30, ${alpha})`;
    const span = el("span", { class: "word", title: `${w.score.toFixed(3)}`,
      "data-score": String(w.score), "aria-label": `${w.text}: ${w.score >= 0 ? "toward" : "against"} the label, ${w.score.toFixed(3)}` });
    span.textContent = w.text;
    span.style.background = colour; // through the CSSOM: the page's CSP allows no inline style attributes
    box.append(span, " ");
  }
  return box;
}

function sentimentAnswer(answer, text) {
  const box = el("div", { class: "answer sentiment-answer" });
  box.append(el("div", { class: "muted", text }));
  box.append(el("div", { class: "label", text: `${answer.label} (${(answer.score * 100).toFixed(1)}%)` }));
  for (const [name, score] of Object.entries(answer.scores || {})) {
    box.append(el("div", { class: "bar" }, el("span", { class: "name", text: name }),
      el("meter", { min: "0", max: "1", value: String(score), "aria-label": `${name} ${(score * 100).toFixed(1)}%` }),
      el("span", { text: `${(score * 100).toFixed(1)}%` })));
  }
  if (answer.truncated) box.append(el("div", { class: "muted", text: "Only the first part of this text was read." }));
  if (answer.attributions) {
    box.append(el("div", { text: `Words toward “${answer.label}” in green, against it in red:` }));
    box.append(shadedWords(answer.attributions));
  }
  box.append(reviewNote(answer));
  return box;
}

$("sentiment-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const texts = $("sentiment-text").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (!texts.length) return;
  const explain = $("sentiment-explain").checked;
  const doc = texts.length === 1 ? { text: texts[0], explain } : { inputs: texts, explain };
  $("sentiment-submit").disabled = true;
  const reply = await send($("sentiment-model").value, JSON.stringify(doc), "application/json", $("sentiment-status"));
  $("sentiment-submit").disabled = false;
  const out = $("sentiment-result");
  if (!reply.ok) return showError(out, reply);
  const answers = Array.isArray(reply.answer) ? reply.answer : [reply.answer];
  out.replaceChildren(...answers.map((a, i) => sentimentAnswer(a, texts[i])));
});

// ------------------------------------------------------------------ respiratory

let recorded = null; // a WAV Blob recorded in the page

function windowsPlot(answer) {
  const width = 600, height = 180, pad = 30;
  const duration = Math.max(answer.duration_s || 0, 1);
  const x = (s) => pad + (s / duration) * (width - 2 * pad);
  const y = (p) => height - pad - p * (height - 2 * pad);
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", id: "windows-plot",
    "aria-label": `probability of unhealthy over time, ${(answer.windows || []).length} windows` });
  svg.append(svgEl("rect", { x: pad, y: pad, width: width - 2 * pad, height: height - 2 * pad, fill: "#f7f7f7", stroke: "#999" }));
  for (const a of answer.attributions || []) { // occlusion heat: what silencing each stretch changed
    const top = Math.max(1e-9, ...answer.attributions.map((b) => Math.abs(b.score)));
    const alpha = Math.min(1, Math.abs(a.score) / top) * 0.6;
    svg.append(svgEl("rect", { x: x(a.start_s), y: pad, width: Math.max(1, x(a.end_s) - x(a.start_s)),
      height: height - 2 * pad, fill: a.score >= 0 ? `rgba(190,20,30,${alpha})` : `rgba(0,90,200,${alpha})`, class: "heat" }));
  }
  const threshold = answer.threshold ?? 0.5;
  svg.append(svgEl("line", { x1: pad, x2: width - pad, y1: y(threshold), y2: y(threshold), stroke: "#a4161a", "stroke-dasharray": "6 4" }));
  const points = (answer.windows || []).map((w) => `${x(w.start_s)},${y(w.probability)}`).join(" ");
  svg.append(svgEl("polyline", { points, fill: "none", stroke: "#0b4f8a", "stroke-width": 2 }));
  for (const w of answer.windows || []) svg.append(svgEl("circle", { cx: x(w.start_s), cy: y(w.probability), r: 4, fill: "#0b4f8a" }));
  const label = (text, attrs) => { const t = svgEl("text", { "font-size": 12, fill: "#111", ...attrs }); t.textContent = text; svg.append(t); };
  label("1", { x: 8, y: y(1) + 4 }); label("0", { x: 8, y: y(0) + 4 });
  label(`threshold ${threshold.toFixed(2)}`, { x: width - pad - 110, y: y(threshold) - 6 });
  label(`${duration.toFixed(1)} s`, { x: width - pad - 30, y: height - 8 });
  return svg;
}

function respiratoryAnswer(answer) {
  const box = el("div", { class: "answer respiratory-answer" });
  const p = answer.probability;
  box.append(el("div", { class: "label", text: `${answer.label}: P(unhealthy) = ${p.toFixed(3)}` }));
  box.append(el("div", { class: "bar" }, el("span", { class: "name", text: "probability" }),
    el("meter", { min: "0", max: "1", value: String(p), high: String(answer.threshold), "aria-label": `probability ${p.toFixed(3)}` }),
    el("span", { text: `threshold ${answer.threshold.toFixed(3)}` })));
  box.append(el("div", { class: "muted", text: `${answer.duration_s} s, ${(answer.windows || []).length} window(s)` +
    (answer.flags ? `; ${answer.flags.join(", ")}` : "") }));
  box.append(reviewNote(answer));
  box.append(windowsPlot(answer));
  if (answer.attributions) box.append(el("div", { class: "muted",
    text: "Shaded: the seconds whose silencing lowered (red) or raised (blue) the probability." }));
  return box;
}

function audioType(file) {
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  return AUDIO_TYPES[ext] || file.type || "application/octet-stream";
}

$("respiratory-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("respiratory-file").files[0];
  const out = $("respiratory-result");
  const body = file || recorded;
  if (!body) {
    out.replaceChildren(el("div", { class: "error", role: "alert", text: "Choose a recording or record one first." }));
    return;
  }
  let contentType = file ? audioType(file) : "audio/wav";
  if ($("respiratory-explain").checked) contentType += "; explain=true"; // every route keeps media-type options
  $("respiratory-submit").disabled = true;
  const reply = await send($("respiratory-model").value, body, contentType, $("respiratory-status"));
  $("respiratory-submit").disabled = false;
  if (!reply.ok) return showError(out, reply);
  out.replaceChildren(respiratoryAnswer(reply.answer));
});

// Microphone: raw samples through the Web Audio API, written as a 16-bit WAV (a format the model reads).
let capture = null;

function wavBlob(chunks, rate) {
  const length = chunks.reduce((n, c) => n + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * length));
  const text = (at, s) => [...s].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * length, true); text(8, "WAVE"); text(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * length, true);
  let at = 44;
  for (const chunk of chunks) for (const s of chunk) { view.setInt16(at, Math.max(-1, Math.min(1, s)) * 32767, true); at += 2; }
  return new Blob([view], { type: "audio/wav" });
}

$("record").addEventListener("click", async () => {
  const button = $("record");
  if (capture) { // stop
    capture.stream.getTracks().forEach((t) => t.stop());
    capture.node.disconnect();
    await capture.context.close();
    recorded = wavBlob(capture.chunks, capture.context.sampleRate);
    $("record-status").textContent = `Recorded ${(recorded.size / 2 / capture.context.sampleRate).toFixed(1)} s; press Classify.`;
    $("respiratory-file").value = "";
    capture = null;
    button.textContent = "Record from the microphone";
    button.setAttribute("aria-pressed", "false");
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const context = new AudioContext();
    const source = context.createMediaStreamSource(stream);
    const node = context.createScriptProcessor(4096, 1, 1);
    const chunks = [];
    node.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
    source.connect(node); node.connect(context.destination);
    capture = { stream, context, node, chunks };
    button.textContent = "Stop recording";
    button.setAttribute("aria-pressed", "true");
    $("record-status").textContent = "Recording…";
  } catch (err) {
    $("record-status").textContent = `The microphone is not available: ${err.message || err}`;
  }
});

// ------------------------------------------------------------------ start

(async () => {
  let listing;
  try {
    listing = await (await fetch("/api/models")).json();
  } catch (err) {
    $("serving").textContent = `The page's server did not answer: ${err}`;
    return;
  }
  $("serving").textContent = `Serving: ${listing.serving}.`;
  for (const kind of ["sentiment", "respiratory"]) {
    const models = listing.models.filter((m) => m.kind === kind);
    if (!models.length) continue;
    $(`${kind}-model`).replaceChildren(...models.map((m) => el("option", { value: m.name, text: m.name })));
    $(kind).hidden = false;
  }
  if (!listing.models.length) $("serving").textContent += " No archives found: build some with `marport build`.";
})();
