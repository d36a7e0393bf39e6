// COCO run-length encoding, as pycocotools writes and reads it (its `counts` string), and the page's exports.
// Masks here are Uint8Array(height * width), row-major, 1 inside; COCO's runs go down the columns.

/** COCO RLE {size: [h, w], counts: string} of a mask (pycocotools.mask.encode, then its string form). */
export function encodeRle(mask, height, width) {
  const runs = [];
  let current = 0;
  let run = 0;
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      const value = mask[y * width + x];
      if (value !== current) {
        runs.push(run);
        run = 0;
        current = value;
      }
      run++;
    }
  }
  runs.push(run);
  let counts = "";
  for (let i = 0; i < runs.length; i++) {
    let x = runs[i];
    if (i > 2) x -= runs[i - 2];
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      counts += String.fromCharCode(c + 48);
    }
  }
  return { size: [height, width], counts };
}

/** The mask of a COCO RLE {size, counts: string} (pycocotools.mask.decode). */
export function decodeRle(rle) {
  const [height, width] = rle.size;
  const runs = [];
  const s = rle.counts;
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++;
      k++;
      if (!more && c & 0x10) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  const mask = new Uint8Array(height * width);
  let index = 0;
  let value = 0;
  for (const run of runs) {
    for (let j = 0; j < run; j++, index++) {
      if (value) mask[(index % height) * width + Math.floor(index / height)] = 1;
    }
    value = 1 - value;
  }
  return mask;
}

/** [x, y, w, h] of a mask's inside, and its area (COCO's bbox and area). */
export function maskStats(mask, height, width) {
  let area = 0;
  let x0 = width;
  let y0 = height;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (mask[y * width + x]) {
        area++;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return { area, bbox: area ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : [0, 0, 0, 0] };
}

/** The objects as one COCO file: the image, one annotation per object with its RLE, bbox, area and score. */
export function cocoDocument(image, objects, label) {
  const annotations = objects
    .filter((o) => o.mask)
    .map((o, i) => {
      const { area, bbox } = maskStats(o.mask, image.height, image.width);
      return {
        id: i + 1,
        image_id: 1,
        category_id: 1,
        segmentation: encodeRle(o.mask, image.height, image.width),
        area,
        bbox,
        iscrowd: 0,
        score: o.score,
        points: o.points.map((p) => [p.x, p.y, p.label]),
        box: o.box,
      };
    });
  return {
    images: [{ id: 1, file_name: image.name, height: image.height, width: image.width, sam_image_id: image.id }],
    annotations,
    categories: [{ id: 1, name: label }],
  };
}

/** A PNG label map of the objects: pixel value k (grey k, k, k) is object k, 0 the background. */
export async function labelMapPng(image, objects) {
  const canvas = new OffscreenCanvas(image.width, image.height);
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(image.width, image.height);
  objects.forEach((o, index) => {
    if (!o.mask) return;
    const k = Math.min(index + 1, 255);
    for (let i = 0; i < o.mask.length; i++) {
      if (o.mask[i]) {
        pixels.data[4 * i] = k;
        pixels.data[4 * i + 1] = k;
        pixels.data[4 * i + 2] = k;
      }
    }
  });
  for (let i = 3; i < pixels.data.length; i += 4) pixels.data[i] = 255;
  context.putImageData(pixels, 0, 0);
  return canvas.convertToBlob({ type: "image/png" });
}
