// Decoding the current object's prompt into its mask: in the page by onnxruntime-web on the service's decoder
// graph (loaded once per model), or by the service (POST /sam/segment_image, rle) when "server decoding" is on.

import { ClientDecoder } from "./sam.js";
import { decodeRle } from "./coco.js";
import { drawMarkers, drawOverlay } from "./draw.js";
import { $, BASE, apiFetch, authHeaders, clearError, modelField, serverDecoding, showError, state, updateStatus } from "./page.js";

export async function loadDecoder() {
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

/** Decodes the current object's prompt; clicks that land while a decode runs are folded into the next one. */
export async function decodeCurrent() {
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

export async function decodeOnce() {
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
