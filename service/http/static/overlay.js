// Draws a localization onto a canvas: the image, one class's heatmap in a colour map, and the
// boxes of every prediction with its label and score. Shared by the demo page and the embedding
// example (examples/embed/), which loads it from the service at /static/overlay.js.
//
//   import { drawLocalization } from "http://SERVICE/static/overlay.js";
//   const response = await (await fetch("http://SERVICE/v1/localize", {method: "POST", body})).json();
//   await drawLocalization(canvas, await createImageBitmap(file), response, { opacity: 0.5 });
//
// The boxes drawn, in image pixels as the API gives them, are also written to the canvas as
// `data-boxes` JSON ([{class_id, label, score, box}, ...]), so scripts and tests can read what is shown.

/** One colour per prediction rank; light, so the black label text on them stays readable. */
export const BOX_COLOURS = ["#ffd60a", "#4cc9f0", "#ff8fab", "#95f9a5", "#ffffff"];

/** Jet colour map as a 256 x RGB lookup table: 0 is dark blue, then cyan, yellow, 255 dark red.
 * Each channel is a clipped tent; the clipping to 0..255 is the array's own. */
const JET = new Uint8ClampedArray(256 * 3);
for (let i = 0; i < 256; i++) {
  const x = i / 255;
  JET[3 * i] = 255 * (1.5 - Math.abs(4 * x - 3));
  JET[3 * i + 1] = 255 * (1.5 - Math.abs(4 * x - 2));
  JET[3 * i + 2] = 255 * (1.5 - Math.abs(4 * x - 1));
}

// Decoding and colouring a heatmap PNG is the slow part; do it once per prediction object, so that
// redrawing (another opacity, another selected class) is cheap.
const colouredHeatmaps = new WeakMap();
// The latest call per canvas: an older call that finishes its decoding later draws nothing.
const latestCall = new WeakMap();

/**
 * Draw `result` (the JSON of POST /v1/localize) over `image` onto `canvas`.
 *
 * image:    anything drawImage accepts (ImageBitmap, HTMLImageElement, ...), or null for a grey
 *           background (a format the browser cannot show).
 * selected: index of the prediction whose heatmap is shown.
 * opacity:  of the heatmap, 0 to 1.
 * maxSide:  the canvas is scaled down to this long side; boxes keep their image coordinates.
 * Resolves to the boxes drawn, or null when a later call on the same canvas took over.
 */
export async function drawLocalization(canvas, image, result, options = {}) {
  const { selected = 0, opacity = 0.5, maxSide = 2048 } = options;
  const call = {};
  latestCall.set(canvas, call);
  const prediction = result.predictions[selected];
  const heatmap = prediction?.heatmap ? await colouredHeatmap(prediction) : null;
  if (latestCall.get(canvas) !== call) return null;

  const scale = Math.min(1, maxSide / Math.max(result.width, result.height));
  canvas.width = Math.max(1, Math.round(result.width * scale));
  canvas.height = Math.max(1, Math.round(result.height * scale));
  const ctx = canvas.getContext("2d");
  if (image) {
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  } else {
    ctx.fillStyle = "#808080";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }
  if (heatmap && opacity > 0) {
    // The heatmap may be smaller than the image (the server caps its size): stretch it over the image.
    ctx.globalAlpha = opacity;
    ctx.drawImage(heatmap, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
  }

  const style = boxStyle(canvas);
  const shown = result.predictions.flatMap((p, rank) => {
    const colour = BOX_COLOURS[rank % BOX_COLOURS.length];
    return p.boxes.map((box) => ({ box, colour, text: `${p.label} ${p.score.toFixed(2)}` }));
  });
  // All frames first, then all labels, so that no frame crosses a label.
  for (const { box, colour } of shown) drawFrame(ctx, box, scale, style, colour);
  const placed = [];
  for (const { box, colour, text } of shown) placed.push(drawLabel(ctx, box, scale, style, colour, text, placed));

  const drawn = result.predictions.flatMap((p) =>
    p.boxes.map((box) => ({ class_id: p.class_id, label: p.label, score: p.score, box })),
  );
  canvas.dataset.boxes = JSON.stringify(drawn);
  return drawn;
}

function colouredHeatmap(prediction) {
  if (!colouredHeatmaps.has(prediction)) colouredHeatmaps.set(prediction, colourize(prediction.heatmap));
  return colouredHeatmaps.get(prediction);
}

/** A canvas holding the grayscale PNG data URI mapped through the colour map. */
async function colourize(dataUri) {
  const png = new Image();
  png.src = dataUri;
  await png.decode();
  const canvas = document.createElement("canvas");
  canvas.width = png.naturalWidth;
  canvas.height = png.naturalHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(png, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const v = 3 * data[i]; // gray: R = G = B
    data[i] = JET[v];
    data[i + 1] = JET[v + 1];
    data[i + 2] = JET[v + 2];
    data[i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

/** Line width and font size that stay readable whatever the canvas size, and however much CSS
 * shrinks it (a phone): at least 2 and 12 pixels on screen. */
function boxStyle(canvas) {
  const side = Math.max(canvas.width, canvas.height);
  const perScreenPixel = canvas.clientWidth ? canvas.width / canvas.clientWidth : 1; // 0 while hidden
  return {
    line: Math.round(Math.max(side / 250, 2 * perScreenPixel)),
    font: Math.round(Math.max(side / 32, 12 * perScreenPixel)),
  };
}

/** Boxes are inclusive pixel ranges: [x0, y0, x1, y1] covers x0 .. x1 + 1 in canvas coordinates. */
function canvasRect([x0, y0, x1, y1], scale) {
  return [x0 * scale, y0 * scale, (x1 - x0 + 1) * scale, (y1 - y0 + 1) * scale];
}

function drawFrame(ctx, box, scale, style, colour) {
  const rect = canvasRect(box, scale);
  ctx.lineJoin = "round";
  ctx.strokeStyle = "rgba(0, 0, 0, 0.75)"; // a dark rim keeps light frames visible on light images
  ctx.lineWidth = style.line + 2;
  ctx.strokeRect(...rect);
  ctx.strokeStyle = colour;
  ctx.lineWidth = style.line;
  ctx.strokeRect(...rect);
}

/** Draws the label at the first free place, from above the box downwards; returns where it went. */
function drawLabel(ctx, box, scale, style, colour, text, taken) {
  const [x, y] = canvasRect(box, scale);
  ctx.font = `600 ${style.font}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  const pad = Math.round(style.font / 4);
  const width = ctx.measureText(text).width + 2 * pad;
  const height = style.font + 2 * pad;
  const left = Math.max(0, Math.min(x, ctx.canvas.width - width)); // never past the right edge
  const overlaps = (top) =>
    taken.some(
      (r) => left < r.left + r.width && r.left < left + width && top < r.top + r.height && r.top < top + height,
    );
  const first = y - height >= 0 ? y - height : y; // above the box if there is room, else inside it
  let top = first;
  while (overlaps(top) && top + 2 * height <= ctx.canvas.height) top += height;
  if (overlaps(top)) top = first; // nowhere free: overlap rather than leave the canvas
  ctx.fillStyle = colour;
  ctx.fillRect(left, top, width, height);
  ctx.fillStyle = "#000";
  ctx.fillText(text, left + pad, top + pad);
  return { left, top, width, height };
}
