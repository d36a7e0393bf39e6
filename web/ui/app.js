// The labelling page: an image is embedded once by the service (POST /sam/embed_image, binary), then every click
// is decoded here by onnxruntime-web on the service's own decoder graph, or by the service when "server
// decoding" is on (POST /sam/segment_image, rle). Several objects per image, each its own mask; COCO and PNG out.
// `window.samPage` exposes the state and timings to tests and to anyone curious in the console.
//
// This module is the entry the page loads: pointer and key input, and the wiring of the page's controls. The
// rest: page.js (state, status, service calls), embed.js (opening an image, models), objects.js (prompts),
// decode.js (prompt -> mask, in the page or on the server), draw.js (canvases), export.js (COCO and PNG).

import { loadDecoder } from "./decode.js";
import { drawMarkers } from "./draw.js";
import { loadModels, openFile, switchModel } from "./embed.js";
import { exportJson, exportPng } from "./export.js";
import { addPoint, deleteObject, newObject, reset, setBox, undo } from "./objects.js";
import { $, state, updateStatus } from "./page.js";

const DRAG_PIXELS = 5; // a pointer that moves less than this (screen pixels) is a click, more is a box

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
