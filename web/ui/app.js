// The labelling page: an image is embedded once by the service (POST /sam/embed_image, binary), then every click
// is decoded here by onnxruntime-web on the service's own decoder graph, or by the service when "server
// decoding" is on (POST /sam/segment_image, rle). Several objects per image, each its own mask; COCO and PNG out.
// `window.samPage` exposes the state and timings to tests and to anyone curious in the console.

import { ClientDecoder, errorText, parseNpy } from "./sam.js";
import { cocoDocument, decodeRle, labelMapPng } from "./coco.js";

const BASE = new URL(".", location.href); // the page's folder: the API is at ../sam/ under any route prefix
const COLORS = [
  [30, 144, 255],
  [255, 99, 71],
  [60, 179, 113],
  [238, 130, 238],
  [255, 215, 0],
  [0, 206, 209],
  [244, 164, 96],
  [147, 112, 219],
];
const MASK_ALPHA = 140;
const DRAG_PIXELS = 5; // a pointer that moves less than this (screen pixels) is a click, more is a box

const $ = (id) => document.getElementById(id);
const state = {
  image: null, // {name, width, height, id, base64}
  embedding: null, // Float32Array (1, 256, 64, 64)
  objects: [], // {points: [{x, y, label}], box: [x0, y0, x1, y1] | null, history: [], mask, score, label}
  current: -1,
  model: null, // the served model's id when the service lists several (null: its default)
  decoder: null, // ClientDecoder once loaded
  decoderError: null,
  busy: false,
  pending: false,
  generation: 0, // bumps when an image opens: answers for an older image are dropped
  // Per click (ms): click to overlay on screen, and its decode (the ONNX run, or the server's answer) alone.
  timings: { clicks: [], serverClicks: [], decodes: [], serverDecodes: [], openToFirstMaskMs: null, embedMs: null, decoderLoadMs: null },
};
window.samPage = { state, ready: false };

function authHeaders() {
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem("sam-serve-token", token);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function status(text) {
  $("status").textContent = text;
}

function showError(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = false;
}

function clearError() {
  $("message").hidden = true;
  $("message").textContent = "";
}

async function apiFetch(path, body) {
  let response;
  try {
    response = await fetch(new URL(path, BASE), {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    });
  } catch (error) {
    throw new Error(`the service did not answer (${error.message}): is it running at ${BASE.origin}?`);
  }
  if (!response.ok) throw new Error(`the service refused the request: ${await errorText(response)}`);
  return response;
}

/** The served models (GET /sam/models): a choice on the page when there are several, the default selected. */
async function loadModels() {
  let models = [];
  try {
    const response = await fetch(new URL("../sam/models", BASE), { headers: authHeaders() });
    if (response.ok) models = (await response.json()).models;
  } catch {
    // an older service, or none answering: the default model, and the embed will say what is wrong
  }
  if (models.length < 2) return;
  $("model").replaceChildren(...models.map((m) => new Option(`${m.id} (${m.model_type})`, m.id, m.default, m.default)));
  state.model = models.find((m) => m.default)?.id ?? models[0].id;
  $("model-choice").hidden = false;
}

function modelField() {
  return state.model ? { model: state.model } : {};
}

/** Another model: its decoder graph, the open image embedded by it, and every object decoded again. */
async function switchModel() {
  state.model = $("model").value;
  state.decoder = null;
  state.decoderError = null;
  $("server-decode").disabled = false;
  window.samPage.decoderReady = loadDecoder();
  await window.samPage.decoderReady;
  if (!state.image) return updateStatus();
  const generation = ++state.generation;
  let response;
  try {
    response = await embed(state.image.base64);
  } catch (error) {
    return showError(String(error.message));
  }
  const buffer = await response.arrayBuffer();
  if (generation !== state.generation) return;
  state.embedding = parseNpy(buffer).data;
  const current = state.current;
  state.busy = true; // a click meanwhile waits for this, and is decoded after it (decodeCurrent's pending)
  try {
    for (let index = 0; index < state.objects.length; index++) {
      state.current = index;
      await decodeOnce();
    }
  } finally {
    state.current = current;
    state.busy = false;
  }
  if (state.pending) await decodeCurrent();
  drawMarkers();
  updateStatus();
  window.samPage.switchedTo = state.model; // the image embedded by the model and every object decoded again
}

function embed(base64) {
  return apiFetch("../sam/embed_image", { image: { type: "base64", value: base64 }, format: "binary", ...modelField() });
}

async function loadDecoder() {
  const started = performance.now();
  try {
    state.decoder = await ClientDecoder.load(BASE, authHeaders(), state.model);
    state.timings.decoderLoadMs = performance.now() - started;
  } catch (error) {
    state.decoderError = String(error.message || error);
    $("server-decode").checked = true;
    $("server-decode").disabled = true;
    showError(`decoding in the page is unavailable (${state.decoderError}); clicks are decoded by the service`);
  }
  updateStatus();
}

function serverDecoding() {
  return $("server-decode").checked || !state.decoder;
}

function updateStatus() {
  if (!state.image) return status(state.decoder ? `decoder ready (${state.decoder.modelId}). Open an image.` : "Open an image to start.");
  const where = serverDecoding() ? "server decoding" : `decoding in the page (${state.decoder.threads} threads)`;
  const object = state.objects[state.current];
  const last = state.timings.clicks.at(-1);
  status(
    `${state.image.name} ${state.image.width}x${state.image.height} · ${where} · object ${state.current + 1} of ` +
      `${state.objects.length}, ${object ? object.points.length : 0} clicks${object?.box ? " + box" : ""}` +
      (last !== undefined ? ` · last click ${last.toFixed(0)} ms` : "")
  );
  const list = $("objects");
  list.replaceChildren(
    ...state.objects.map((o, i) => {
      const item = document.createElement("li");
      item.textContent = `${o.label}: ${o.points.length} clicks${o.box ? " + box" : ""}` + (o.mask ? `, score ${o.score.toFixed(3)}` : "");
      if (i === state.current) item.className = "current";
      return item;
    })
  );
}

// ---- opening an image ---------------------------------------------------------------------------------------

async function openFile(file) {
  clearError();
  const generation = ++state.generation;
  const opened = performance.now();
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    showError(`${file.name} is not an image this browser can read (${file.type || "unknown type"})`);
    return;
  }
  status(`embedding ${file.name} (${bitmap.width}x${bitmap.height})...`);
  const base64 = await readBase64(file);
  let response;
  try {
    response = await embed(base64);
  } catch (error) {
    showError(String(error.message));
    status("Open an image to start.");
    return;
  }
  const buffer = await response.arrayBuffer();
  if (generation !== state.generation) return;
  const [height, width] = response.headers.get("X-Original-Size").split(",").map(Number);
  state.embedding = parseNpy(buffer).data;
  state.timings.embedMs = performance.now() - opened;
  state.image = { name: file.name, width, height, id: decodeURIComponent(response.headers.get("X-Image-Id")), base64 };
  state.objects = [];
  state.timings.openedAt = opened;
  state.timings.openToFirstMaskMs = null;
  newObject();
  drawImage(bitmap);
  if (bitmap.width !== width || bitmap.height !== height) {
    showError(`the browser shows ${bitmap.width}x${bitmap.height} but the service read ${width}x${height}`);
  }
  $("stage").hidden = false;
  $("drop-hint").hidden = true;
  window.samPage.ready = true;
  updateStatus();
}

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result); // a data: URL; the service accepts the prefix
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function drawImage(bitmap) {
  for (const id of ["image", "overlay", "markers"]) {
    $(id).width = state.image.width;
    $(id).height = state.image.height;
  }
  $("image").getContext("2d").drawImage(bitmap, 0, 0, state.image.width, state.image.height);
  drawOverlay();
  drawMarkers();
}

// ---- objects and prompts ------------------------------------------------------------------------------------

function newObject() {
  const current = state.objects[state.current];
  if (current && !current.points.length && !current.box) return; // the empty one is still there to use
  state.objects.push({ points: [], box: null, history: [], mask: null, score: 0, label: $("label").value || "object" });
  state.current = state.objects.length - 1;
  drawMarkers();
  updateStatus();
}

function addPoint(x, y, label) {
  const object = state.objects[state.current];
  object.history.push({ points: object.points.slice(), box: object.box });
  object.points.push({ x, y, label });
  return decodeCurrent();
}

function setBox(box) {
  const object = state.objects[state.current];
  object.history.push({ points: object.points.slice(), box: object.box });
  object.box = box;
  return decodeCurrent();
}

function undo() {
  const object = state.objects[state.current];
  if (!object || !object.history.length) return;
  Object.assign(object, object.history.pop());
  return decodeCurrent();
}

function reset() {
  const object = state.objects[state.current];
  if (!object) return;
  object.history.push({ points: object.points.slice(), box: object.box });
  object.points = [];
  object.box = null;
  return decodeCurrent();
}

function deleteObject() {
  if (state.current < 0) return;
  state.objects.splice(state.current, 1);
  if (!state.objects.length) newObject();
  state.current = Math.min(state.current, state.objects.length - 1);
  drawOverlay();
  drawMarkers();
  updateStatus();
}

/** Decodes the current object's prompt; clicks that land while a decode runs are folded into the next one. */
async function decodeCurrent() {
  if (state.busy) {
    state.pending = true;
    return;
  }
  state.busy = true;
  try {
    do {
      state.pending = false;
      await decodeOnce();
    } while (state.pending);
  } finally {
    state.busy = false;
  }
}

async function decodeOnce() {
  const started = performance.now();
  const generation = state.generation;
  const object = state.objects[state.current];
  const points = object.points.map((p) => ({ ...p }));
  const box = object.box ? object.box.slice() : null;
  drawMarkers();
  if (!points.length && !box) {
    object.mask = null;
    drawOverlay();
    updateStatus();
    return;
  }
  const server = serverDecoding();
  let answer;
  try {
    answer = server ? await serverDecode(points, box) : await state.decoder.decode(state.embedding, state.image.height, state.image.width, points, box);
  } catch (error) {
    showError(String(error.message || error));
    return;
  }
  const decoded = performance.now() - started;
  if (generation !== state.generation) return;
  object.mask = answer.mask;
  object.score = answer.score;
  drawOverlay();
  await new Promise(requestAnimationFrame); // the overlay is on screen: that is what the annotator waits for
  const elapsed = performance.now() - started;
  (server ? state.timings.serverClicks : state.timings.clicks).push(elapsed);
  (server ? state.timings.serverDecodes : state.timings.decodes).push(decoded);
  if (state.timings.openToFirstMaskMs === null) state.timings.openToFirstMaskMs = performance.now() - state.timings.openedAt;
  clearErrorUnlessDecoderMissing();
  updateStatus();
}

function clearErrorUnlessDecoderMissing() {
  if (!state.decoderError) clearError();
}

async function serverDecode(points, box) {
  const body = {
    image_id: state.image.id,
    point_coords: points.length ? points.map((p) => [p.x, p.y]) : [],
    point_labels: points.map((p) => p.label),
    format: "rle",
    ...modelField(),
  };
  if (box) body.box = box;
  let response;
  try {
    response = await apiFetch("../sam/segment_image", body);
  } catch (error) {
    // Evicted from the shared cache (or the cache restarted): send the image along, it is embedded again.
    if (!String(error.message).includes("404")) throw error;
    response = await apiFetch("../sam/segment_image", { ...body, image: { type: "base64", value: state.image.base64 } });
  }
  const answer = await response.json();
  return { mask: decodeRle(answer.masks[0]), score: answer.scores[0] };
}

// ---- drawing ------------------------------------------------------------------------------------------------

function drawOverlay() {
  const canvas = $("overlay");
  const context = canvas.getContext("2d");
  if (!state.image) return;
  const pixels = context.createImageData(state.image.width, state.image.height);
  state.objects.forEach((object, index) => {
    if (!object.mask) return;
    const [r, g, b] = COLORS[index % COLORS.length];
    const data = pixels.data;
    for (let i = 0; i < object.mask.length; i++) {
      if (object.mask[i]) {
        data[4 * i] = r;
        data[4 * i + 1] = g;
        data[4 * i + 2] = b;
        data[4 * i + 3] = MASK_ALPHA;
      }
    }
  });
  context.putImageData(pixels, 0, 0);
}

function drawMarkers(dragBox) {
  const canvas = $("markers");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const object = state.objects[state.current];
  if (!object || !state.image) return;
  const scale = state.image.width / (canvas.clientWidth || state.image.width); // markers keep their screen size
  context.lineWidth = 2 * scale;
  for (const box of [object.box, dragBox].filter(Boolean)) {
    context.strokeStyle = box === dragBox ? "#ffffff" : "#ffd400";
    context.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  for (const point of object.points) {
    context.beginPath();
    context.arc(point.x, point.y, 5 * scale, 0, 2 * Math.PI);
    context.fillStyle = point.label === 1 ? "#19c219" : "#e02020";
    context.fill();
    context.strokeStyle = "#fff";
    context.stroke();
  }
}

// ---- input --------------------------------------------------------------------------------------------------

/** (x, y) in original-image pixels of a pointer event on the markers canvas, inside the image. */
function imagePoint(event) {
  const rect = $("markers").getBoundingClientRect();
  const x = ((event.clientX - rect.left) / rect.width) * state.image.width;
  const y = ((event.clientY - rect.top) / rect.height) * state.image.height;
  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
  return [clamp(Math.round(x * 10) / 10, state.image.width - 1), clamp(Math.round(y * 10) / 10, state.image.height - 1)];
}

let press = null;
function onPointerDown(event) {
  if (!state.image) return;
  event.preventDefault();
  $("markers").setPointerCapture(event.pointerId);
  press = { clientX: event.clientX, clientY: event.clientY, point: imagePoint(event), negative: event.button === 2 || event.shiftKey || event.altKey };
}

function dragBoxOf(event) {
  const [x, y] = imagePoint(event);
  const [x0, y0] = press.point;
  return [Math.min(x, x0), Math.min(y, y0), Math.max(x, x0), Math.max(y, y0)];
}

function dragged(event) {
  return Math.hypot(event.clientX - press.clientX, event.clientY - press.clientY) >= DRAG_PIXELS;
}

function onPointerMove(event) {
  if (press && dragged(event)) drawMarkers(dragBoxOf(event));
}

function onPointerUp(event) {
  if (!press) return;
  const wasDrag = dragged(event);
  const box = wasDrag ? dragBoxOf(event) : null;
  const { point, negative } = press;
  press = null;
  if (box) setBox(box);
  else addPoint(point[0], point[1], negative ? 0 : 1);
}

function onKey(event) {
  if (event.target instanceof HTMLInputElement && event.target.type !== "checkbox") return;
  const key = event.key.toLowerCase();
  if (key === "z" && !event.shiftKey) undo();
  else if (key === "escape") reset();
  else if (key === "n" || key === "enter") newObject();
  else if (key === "delete" || key === "backspace") deleteObject();
  else if (key === "s" && !$("server-decode").disabled) {
    $("server-decode").checked = !$("server-decode").checked;
    updateStatus();
  } else if (key === "e") exportJson();
  else if (key === "p") exportPng();
  else return;
  event.preventDefault();
}

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function stem() {
  return (state.image?.name || "image").replace(/\.[^.]+$/, "");
}

function exportJson() {
  if (!state.image) return;
  const document = cocoDocument(state.image, state.objects, $("label").value || "object");
  window.samPage.lastExport = document;
  download(new Blob([JSON.stringify(document)], { type: "application/json" }), `${stem()}.coco.json`);
}

async function exportPng() {
  if (!state.image) return;
  download(await labelMapPng(state.image, state.objects), `${stem()}.masks.png`);
}

function wire() {
  $("token").value = sessionStorage.getItem("sam-serve-token") || "";
  $("file").addEventListener("change", (event) => event.target.files[0] && openFile(event.target.files[0]));
  $("server-decode").addEventListener("change", updateStatus);
  $("model").addEventListener("change", switchModel);
  $("new-object").addEventListener("click", newObject);
  $("undo").addEventListener("click", undo);
  $("reset").addEventListener("click", reset);
  $("delete").addEventListener("click", deleteObject);
  $("export-json").addEventListener("click", exportJson);
  $("export-png").addEventListener("click", exportPng);
  const markers = $("markers");
  markers.addEventListener("pointerdown", onPointerDown);
  markers.addEventListener("pointermove", onPointerMove);
  markers.addEventListener("pointerup", onPointerUp);
  markers.addEventListener("contextmenu", (event) => event.preventDefault());
  document.addEventListener("keydown", onKey);
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) openFile(file);
  });
  updateStatus();
}

Object.assign(window.samPage, { openFile, addPoint, setBox, undo, reset, newObject, exportJson });
wire();
window.samPage.decoderReady = loadModels().then(loadDecoder);
