// Drawing on the page's three stacked canvases: the image, the objects' masks over it, and the current object's
// clicks and box (all in original-image pixels; the canvases are scaled to fit the window by CSS).

import { $, state } from "./page.js";

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

export function drawImage(bitmap) {
  for (const id of ["image", "overlay", "markers"]) {
    $(id).width = state.image.width;
    $(id).height = state.image.height;
  }
  $("image").getContext("2d").drawImage(bitmap, 0, 0, state.image.width, state.image.height);
  drawOverlay();
  drawMarkers();
}

export function drawOverlay() {
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

export function drawMarkers(dragBox) {
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
