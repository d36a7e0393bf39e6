// SAM's prompt math in the browser, exactly as the service does it (sam_core/frames.py, sam_core/model/prompts.py),
// and the decoder run on onnxruntime-web. Frames: points and boxes are (x, y) in original-image pixels; the decoder
// takes them in the 1024 input frame; its masks come back as 256x256 logits, upscaled here to the original size.

export const INPUT_SIZE = 1024;
export const LOW_RES = 256;

/** (h, w) of an image of (height, width) once its longest side is INPUT_SIZE (sam_core.frames.preprocess_shape). */
export function preprocessShape(height, width) {
  const scale = (INPUT_SIZE * 1.0) / Math.max(height, width);
  return [Math.floor(height * scale + 0.5), Math.floor(width * scale + 0.5)];
}

/**
 * The decoder's point_coords (1, K, 2) in the 1024 frame and point_labels (1, K), as SamPredictor builds them:
 * clicks first (1 positive, 0 negative), then a box as two corners labelled 2 and 3, or without a box a (0, 0)
 * point labelled -1 (sam_core.model.prompts.onnx_prompt_inputs).
 */
export function promptInputs(points, box, height, width) {
  const rows = points.map((p) => [p.x, p.y, p.label]);
  if (box) {
    rows.push([box[0], box[1], 2], [box[2], box[3], 3]);
  } else {
    rows.push([0, 0, -1]);
  }
  const [newH, newW] = preprocessShape(height, width);
  const coords = new Float32Array(rows.length * 2);
  const labels = new Float32Array(rows.length);
  rows.forEach(([x, y, label], i) => {
    coords[2 * i] = x * (newW / width); // float64 math, then float32: as numpy does
    coords[2 * i + 1] = y * (newH / height);
    labels[i] = label;
  });
  return { coords, labels, rows: rows.length };
}

/** A little-endian float32 or float16 .npy (numpy's format 1.0-3.0) as {shape, data: Float32Array}. */
export function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (!magic.every((b, i) => bytes[i] === b)) throw new Error("not a .npy file");
  const view = new DataView(buffer);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder("latin1").decode(bytes.subarray(start, start + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? "")
    .split(",")
    .filter((s) => s.trim())
    .map((s) => parseInt(s, 10));
  if (fortran) throw new Error("Fortran-ordered .npy is not supported");
  const offset = start + headerLength;
  const count = shape.reduce((a, b) => a * b, 1);
  if (descr === "<f4") return { shape, data: new Float32Array(buffer.slice(offset, offset + 4 * count)) };
  if (descr === "<f2") {
    const halves = new Uint16Array(buffer.slice(offset, offset + 2 * count));
    return { shape, data: Float32Array.from(halves, halfToFloat) };
  }
  throw new Error(`unsupported .npy dtype ${descr}`);
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** Source index and weight of each output index of a bilinear resize of `inSize` samples to `outSize`, as OpenCV's
 * INTER_LINEAR (and torch's align_corners=False) place them: half-pixel centres, edges clamped. */
function linearTaps(outSize, inSize) {
  const scale = 1 / (outSize / inSize);
  const first = new Int32Array(outSize);
  const weight = new Float32Array(outSize);
  for (let d = 0; d < outSize; d++) {
    const src = (d + 0.5) * scale - 0.5;
    let i = Math.floor(src);
    let f = src - i;
    if (i < 0) [i, f] = [0, 0];
    if (i >= inSize - 1) [i, f] = [inSize - 1, 0];
    first[d] = i;
    weight[d] = f;
  }
  return { first, weight };
}

/** `source` (rows x cols, row-major) resized bilinearly to outRows x outCols; only the top-left keepRows x keepCols
 * of that result are computed (a crop after the resize costs nothing). Rows first, then columns, as OpenCV does. */
function resizeBilinear(source, rows, cols, outRows, outCols, keepRows = outRows, keepCols = outCols) {
  const x = linearTaps(outCols, cols);
  const y = linearTaps(outRows, rows);
  const across = new Float32Array(rows * keepCols);
  for (let r = 0; r < rows; r++) {
    const row = r * cols;
    const out = r * keepCols;
    for (let c = 0; c < keepCols; c++) {
      const i = row + x.first[c];
      const next = x.first[c] + 1 < cols ? i + 1 : i;
      across[out + c] = source[i] + (source[next] - source[i]) * x.weight[c];
    }
  }
  const result = new Float32Array(keepRows * keepCols);
  for (let r = 0; r < keepRows; r++) {
    const top = y.first[r] * keepCols;
    const bottom = (y.first[r] + 1 < rows ? y.first[r] + 1 : y.first[r]) * keepCols;
    const w = y.weight[r];
    const out = r * keepCols;
    for (let c = 0; c < keepCols; c++) result[out + c] = across[top + c] + (across[bottom + c] - across[top + c]) * w;
  }
  return result;
}

/** One 256x256 logit map upscaled as the service does it (sam_core.model.decoder.upscale_logits, SAM's
 * postprocess_masks): bilinear to the padded 1024 frame, the padding cropped, bilinear to height x width; the
 * mask is where the logits are > 0: Uint8Array(height * width), row-major 0/1. */
export function upscaleMask(lowRes, height, width) {
  const [inputH, inputW] = preprocessShape(height, width);
  const padded = resizeBilinear(lowRes, LOW_RES, LOW_RES, INPUT_SIZE, INPUT_SIZE, inputH, inputW);
  const logits = resizeBilinear(padded, inputH, inputW, height, width);
  const mask = new Uint8Array(height * width);
  for (let i = 0; i < mask.length; i++) mask[i] = logits[i] > 0 ? 1 : 0;
  return mask;
}

/** The service's own decoder graph (GET /sam/decoder.onnx?low_res=true: scores and 256x256 logits) in an
 * onnxruntime-web WASM session; the one mask is upscaled here, as the service upscales it. */
export class ClientDecoder {
  constructor(ort, session, modelId, threads) {
    this.ort = ort;
    this.session = session;
    this.modelId = modelId;
    this.threads = threads;
  }

  /** Loads onnxruntime-web from the app (never a CDN) and the graph of `model` (null: the service's default);
   * `headers` carries the token if any. */
  static async load(baseUrl, headers, model = null) {
    const vendor = new URL("vendor/onnxruntime-web/", baseUrl).href;
    const ort = await import(new URL("ort.wasm.min.mjs", vendor).href);
    ort.env.wasm.wasmPaths = vendor;
    // Threads need SharedArrayBuffer, which only a cross-origin isolated page has (the app sends COOP + COEP).
    const threads = self.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
    ort.env.wasm.numThreads = threads;
    const url = new URL("../sam/decoder.onnx", baseUrl);
    url.searchParams.set("low_res", "true");
    if (model) url.searchParams.set("model", model);
    const response = await fetch(url, { headers, cache: "no-cache" });
    if (!response.ok) throw new Error(await errorText(response));
    const graph = new Uint8Array(await response.arrayBuffer());
    const session = await ort.InferenceSession.create(graph, { executionProviders: ["wasm"] });
    return new ClientDecoder(ort, session, response.headers.get("X-Model-Id"), threads);
  }

  /** The mask of one prompt: {mask: Uint8Array(height*width) row-major 0/1, score}. */
  async decode(embedding, height, width, points, box) {
    const { Tensor } = this.ort;
    const prompt = promptInputs(points, box, height, width);
    const feeds = {
      image_embeddings: new Tensor("float32", embedding, [1, 256, 64, 64]),
      point_coords: new Tensor("float32", prompt.coords, [1, prompt.rows, 2]),
      point_labels: new Tensor("float32", prompt.labels, [1, prompt.rows]),
      mask_input: new Tensor("float32", new Float32Array(LOW_RES * LOW_RES), [1, 1, LOW_RES, LOW_RES]),
      has_mask_input: new Tensor("float32", new Float32Array([0]), [1]),
    };
    const results = await this.session.run(feeds);
    // (1, 1, 256, 256): the single-mask graph's one mask in the low-res frame
    const mask = upscaleMask(results.low_res_masks.data, height, width);
    const score = results.iou_predictions.data[0];
    for (const tensor of Object.values(results)) tensor.dispose?.();
    return { mask, score };
  }
}

/** An error answer of the API ({error, field, reason}) as one line for the page. */
export async function errorText(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not the API's JSON (a proxy's page, say)
  }
  if (body && body.reason) return `${response.status} ${body.error}: ${body.field ? body.field + ": " : ""}${body.reason}`;
  return `${response.status} ${response.statusText || "error"}`;
}
