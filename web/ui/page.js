// The page's state and the few things every part of it uses: the element lookup, the status line and the error
// box, and calls to the service with the token. `window.samPage` exposes the state to tests and the console.

import { errorText } from "./sam.js";

export const BASE = new URL(".", location.href); // the page's folder: the API is at ../sam/ under any route prefix

export const $ = (id) => document.getElementById(id);
export const state = {
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

export function authHeaders() {
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem("sam-serve-token", token);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export function status(text) {
  $("status").textContent = text;
}

export function showError(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = false;
}

export function clearError() {
  $("message").hidden = true;
  $("message").textContent = "";
}

export async function apiFetch(path, body) {
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

export function modelField() {
  return state.model ? { model: state.model } : {};
}

export function serverDecoding() {
  return $("server-decode").checked || !state.decoder;
}

export function updateStatus() {
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
