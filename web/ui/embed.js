// Embedding by the service (POST /sam/embed_image, binary): opening an image, and the served models (GET
// /sam/models), where choosing another embeds the open image by it and decodes every object again.

import { parseNpy } from "./sam.js";
import { decodeCurrent, decodeOnce, loadDecoder } from "./decode.js";
import { drawImage, drawMarkers } from "./draw.js";
import { newObject } from "./objects.js";
import { $, BASE, apiFetch, authHeaders, clearError, modelField, showError, state, status, updateStatus } from "./page.js";

function embed(base64) {
  return apiFetch("../sam/embed_image", { image: { type: "base64", value: base64 }, format: "binary", ...modelField() });
}

/** The served models (GET /sam/models): a choice on the page when there are several, the default selected. */
export async function loadModels() {
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

/** Another model: its decoder graph, the open image embedded by it, and every object decoded again. */
export async function switchModel() {
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

export async function openFile(file) {
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
