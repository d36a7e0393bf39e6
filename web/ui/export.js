// Downloading the image's objects: COCO json with RLE masks, or a PNG label map (the k-th object as value k).

import { cocoDocument, labelMapPng } from "./coco.js";
import { $, state } from "./page.js";

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

export function exportJson() {
  if (!state.image) return;
  const document = cocoDocument(state.image, state.objects, $("label").value || "object");
  window.samPage.lastExport = document;
  download(new Blob([JSON.stringify(document)], { type: "application/json" }), `${stem()}.coco.json`);
}

export async function exportPng() {
  if (!state.image) return;
  download(await labelMapPng(state.image, state.objects), `${stem()}.masks.png`);
}
