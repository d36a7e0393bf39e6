// The image's objects and their prompts: a new object, a click or a box added to the current one, undo, reset and
// delete. Each change to a prompt is remembered for undo and decoded again.

import { decodeCurrent } from "./decode.js";
import { drawMarkers, drawOverlay } from "./draw.js";
import { $, state, updateStatus } from "./page.js";

export function newObject() {
  const current = state.objects[state.current];
  if (current && !current.points.length && !current.box) return; // the empty one is still there to use
  state.objects.push({ points: [], box: null, history: [], mask: null, score: 0, label: $("label").value || "object" });
  state.current = state.objects.length - 1;
  drawMarkers();
  updateStatus();
}

function remember(object) {
  object.history.push({ points: object.points.slice(), box: object.box });
}

export function addPoint(x, y, label) {
  const object = state.objects[state.current];
  remember(object);
  object.points.push({ x, y, label });
  return decodeCurrent();
}

export function setBox(box) {
  const object = state.objects[state.current];
  remember(object);
  object.box = box;
  return decodeCurrent();
}

export function undo() {
  const object = state.objects[state.current];
  if (!object || !object.history.length) return;
  Object.assign(object, object.history.pop());
  return decodeCurrent();
}

export function reset() {
  const object = state.objects[state.current];
  if (!object) return;
  remember(object);
  object.points = [];
  object.box = null;
  return decodeCurrent();
}

export function deleteObject() {
  if (state.current < 0) return;
  state.objects.splice(state.current, 1);
  if (!state.objects.length) newObject();
  state.current = Math.min(state.current, state.objects.length - 1);
  drawOverlay();
  drawMarkers();
  updateStatus();
}
