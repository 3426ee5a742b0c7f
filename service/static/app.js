// The demo page: pick a model, then pick, drop or sample an image; POST it to that model's
// v1/models/NAME/localize with the chosen options;
// draw the answer with overlay.js; list the classes and timings. Every failure ends in a visible
// message. <body data-state> is loading | idle | busy | done | error, for styling and for tests.
import { BOX_COLOURS, drawLocalization } from "./overlay.js";

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"),
  modelPicker: $("model-picker"),
  precision: $("precision"),
  form: $("controls"),
  drop: $("drop"),
  file: $("file"),
  samples: $("samples"),
  sampleList: $("sample-list"),
  topk: $("topk"),
  method: $("method"),
  threshold: $("threshold"),
  thresholdValue: $("threshold-value"),
  thresholdHint: $("threshold-hint"),
  boxMode: $("box-mode"),
  opacity: $("opacity"),
  opacityValue: $("opacity-value"),
  keyField: $("key-field"),
  apiKey: $("api-key"),
  run: $("run"),
  resultPanel: $("result"),
  status: $("status"),
  error: $("error"),
  output: $("output"),
  canvas: $("canvas"),
  predictions: $("predictions"),
  timings: $("timings"),
};

const state = {
  models: [], // GET v1/models: each served model's card, the default first
  card: null, // the chosen model's card
  file: null, // the File chosen last
  image: null, // promise of its ImageBitmap, or of null when the browser cannot decode it
  shown: null, // what the result area shows: {name, image, result}, result being the API's answer
  selected: 0, // index of the prediction whose heatmap is shown
  request: null, // AbortController of the newest localize request
};

// --- Talking to the API ----------------------------------------------------------------------

const ADVICE = {
  401: "This service needs an API key: enter it in the API key field, then try again.",
  413: "The image is too large for this service.",
  415: "The service cannot read this file as an image.",
  422: "The service could not use this request.",
  503: "The service is busy or still starting; try again in a moment.",
};

class ApiError extends Error {
  constructor(status, error) {
    const advice = ADVICE[status] ?? `The request failed (HTTP ${status}).`;
    super(error ? `${advice} Details: ${error.message} (${error.code}).` : advice);
    this.status = status;
  }
}

/** fetch, then JSON; throws an Error whose message is fit to show (or the AbortError). */
async function callApi(path, init = {}) {
  const key = ui.apiKey.value.trim();
  const headers = key ? { "X-API-Key": key } : {};
  let response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Error(
      `Could not reach the service (${error.message}). Check that it is running and that you are online.`,
    );
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401) ui.keyField.hidden = false;
    throw new ApiError(response.status, body?.error);
  }
  if (body === null) throw new Error(`The service sent an answer that is not JSON (HTTP ${response.status}).`);
  return body;
}

// --- What the page shows -----------------------------------------------------------------------

function setState(name, message) {
  document.body.dataset.state = name;
  ui.status.textContent = message;
  ui.error.hidden = true;
}

function showError(error) {
  setState("error", "");
  ui.error.textContent = error.message;
  ui.error.hidden = false;
  ui.output.hidden = true;
  if (error.status === 401) ui.apiKey.focus();
}

const percent = (score) => `${(100 * score).toFixed(1)} %`;
const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function summary(name, result) {
  const classes = result.predictions
    .map((p, i) => `${i + 1}. ${p.label}, ${percent(p.score)}, ${plural(p.boxes.length, "box", "boxes")}`)
    .join("; ");
  return `${name}: ${classes}. Took ${Math.round(result.timings_ms.total)} ms.`;
}

function renderPredictions() {
  ui.predictions.replaceChildren(
    ...state.shown.result.predictions.map((p, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.classId = p.class_id;
      button.style.setProperty("--swatch", BOX_COLOURS[i % BOX_COLOURS.length]);
      button.setAttribute("aria-pressed", String(i === state.selected));
      const boxes = p.boxes.map((b) => `[${b.join(", ")}]`).join(" ") || "no box above the threshold";
      button.append(span("label", p.label), span("score", percent(p.score)), span("boxes", boxes));
      button.addEventListener("click", () => selectPrediction(i));
      const item = document.createElement("li");
      item.append(button);
      return item;
    }),
  );
}

function span(className, text) {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  return element;
}

function renderTimings(roundTripMs) {
  const rows = [...Object.entries(state.shown.result.timings_ms), ["round trip (browser)", roundTripMs]];
  ui.timings.replaceChildren(
    ...rows.flatMap(([stage, ms]) => {
      const dt = document.createElement("dt");
      dt.textContent = stage;
      const dd = document.createElement("dd");
      dd.textContent = `${ms.toFixed(1)} ms`;
      return [dt, dd];
    }),
  );
}

async function redraw() {
  const { shown: { name, image, result }, selected } = state;
  const drawn = await drawLocalization(ui.canvas, image, result, { selected, opacity: Number(ui.opacity.value) });
  if (drawn === null) return; // a newer draw took over
  const heatmapOf = result.predictions[selected];
  ui.canvas.setAttribute(
    "aria-label",
    `${name} with ${plural(drawn.length, "box", "boxes")}` +
      (heatmapOf?.heatmap ? ` and the heatmap of ${heatmapOf.label}` : ""),
  );
}

function selectPrediction(index) {
  state.selected = index;
  for (const [i, button] of [...ui.predictions.querySelectorAll("button")].entries()) {
    button.setAttribute("aria-pressed", String(i === index));
  }
  redraw();
}

// --- Actions ---------------------------------------------------------------------------------

/** reveal: scroll the result into view if it is off screen (a new image on a phone, say). */
async function localize({ reveal = false } = {}) {
  if (!state.file) return;
  state.request?.abort(); // a newer request makes the older one's answer stale
  const request = (state.request = new AbortController());
  const { file, image: decoding } = state;
  const params = new URLSearchParams({
    topk: ui.topk.value,
    method: ui.method.value,
    threshold: ui.threshold.value,
    box_mode: ui.boxMode.value,
  });
  const body = new FormData();
  body.append("image", file, file.name);
  setState("busy", `Localizing ${file.name}…`);
  const started = performance.now();
  try {
    const path = `v1/models/${encodeURIComponent(state.card.name)}/localize?${params}`;
    const result = await callApi(path, { method: "POST", body, signal: request.signal });
    const roundTripMs = performance.now() - started;
    const image = await decoding;
    if (state.request !== request) return;
    state.shown = { name: file.name, image, result };
    state.selected = 0;
    ui.output.hidden = false;
    renderPredictions();
    renderTimings(roundTripMs);
    await redraw();
    if (state.request !== request) return;
    const grey = image ? "" : " This browser cannot show the image itself: its heatmap and boxes are drawn on grey.";
    setState("done", summary(file.name, result) + grey);
    const { top, bottom } = ui.resultPanel.getBoundingClientRect();
    if (reveal && (top > innerHeight || bottom < 0)) ui.resultPanel.scrollIntoView({ block: "start" });
  } catch (error) {
    if (error.name === "AbortError" || state.request !== request) return;
    showError(error);
  }
}

function setFile(file) {
  state.file = file;
  state.image = createImageBitmap(file).catch(() => null);
  ui.run.disabled = false;
  localize({ reveal: true });
}

async function useSample(sample) {
  setState("busy", `Loading the sample ${sample.name}…`);
  try {
    const response = await fetch(sample.url).catch((error) => {
      throw new Error(`Could not load the sample ${sample.name} (${error.message}).`);
    });
    if (!response.ok) throw new Error(`Could not load the sample ${sample.name} (HTTP ${response.status}).`);
    const blob = await response.blob();
    setFile(new File([blob], sample.name, { type: blob.type }));
  } catch (error) {
    showError(error);
  }
}

/** The served models into the picker; the default one (listed first) is chosen. */
async function loadModels() {
  let listing;
  try {
    listing = await callApi("v1/models");
  } catch (error) {
    ui.model.textContent = "Model card unavailable";
    showError(error);
    return false;
  }
  state.models = listing.models;
  ui.modelPicker.replaceChildren(
    ...state.models.map(({ name, arch, num_classes: classes }) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = `${name} (${arch}, ${plural(classes, "class", "classes")})`;
      return option;
    }),
  );
  ui.modelPicker.value = state.card?.name ?? listing.default;
  return true;
}

/** Show the picked model's card and samples. */
async function useModel(name) {
  state.card = state.models.find((card) => card.name === name) ?? state.models[0];
  const { arch, num_classes: classes } = state.card;
  ui.model.textContent = `${state.card.name} · ${arch} · ${plural(classes, "class", "classes")}`;
  showPrecision(state.card);
  ui.topk.max = classes;
  ui.topk.value = Math.min(classes, Number(ui.topk.value) || 1);
  applyDefaultThreshold();
  await loadSamples(state.card.name);
}

/** Which precision runs and, for fp16 / int8, how closely it agrees with the fp32 model (the card's figures). */
function showPrecision({ precision = "fp32", variant }) {
  const agreement = variant?.agreement;
  ui.precision.textContent = agreement
    ? `${precision}: agrees with fp32 on ${percent(agreement.top1)} of top-1 classes, ` +
      `${percent(agreement.box_iou_ge_0_9)} of top-1 boxes at IoU ≥ 0.9 (${agreement.images} held-out images)`
    : precision;
  ui.precision.hidden = false;
}

/** The strip stays hidden when the service has no samples (or no v1/samples route at all). */
async function loadSamples(model) {
  let samples;
  try {
    ({ samples } = await callApi(`v1/models/${encodeURIComponent(model)}/samples`));
  } catch {
    ui.samples.hidden = true;
    return;
  }
  ui.sampleList.replaceChildren(
    ...samples.map((sample) => {
      const image = document.createElement("img");
      image.src = sample.url;
      image.alt = ""; // the button's text names it
      image.loading = "lazy";
      const button = document.createElement("button");
      button.type = "button";
      button.append(image, span("name", sample.name));
      button.setAttribute("aria-label", `Localize the sample ${sample.name}`);
      button.addEventListener("click", () => useSample(sample));
      const item = document.createElement("li");
      item.append(button);
      return item;
    }),
  );
  ui.samples.hidden = samples.length === 0;
}

function applyDefaultThreshold() {
  const value = state.card?.box_threshold?.[ui.method.value];
  if (value === undefined) return;
  ui.threshold.value = value;
  ui.thresholdValue.value = Number(ui.threshold.value).toFixed(2);
  const method = ui.method.value.toUpperCase();
  ui.thresholdHint.textContent = `Map values above it make the boxes; the model's default for ${method} is ${value}.`;
}

// --- Wiring ----------------------------------------------------------------------------------

let rerunTimer;
/** Options changed: localize the current image again, once the user pauses. */
function rerunSoon() {
  clearTimeout(rerunTimer);
  if (state.file) rerunTimer = setTimeout(localize, 250);
}

ui.file.addEventListener("change", () => {
  if (ui.file.files.length) setFile(ui.file.files[0]);
});

// The whole page takes a dropped file (and so never navigates away to it).
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  ui.drop.classList.add("dragging");
});
document.addEventListener("dragleave", (event) => {
  if (event.relatedTarget === null) ui.drop.classList.remove("dragging");
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.drop.classList.remove("dragging");
  const [file] = event.dataTransfer.files;
  if (file) setFile(file);
  else showError(new Error("Nothing to localize was dropped: drop an image file."));
});

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  localize();
});
ui.topk.addEventListener("change", () => {
  const max = Number(ui.topk.max);
  ui.topk.value = Math.min(max, Math.max(1, Math.round(Number(ui.topk.value) || 1)));
  rerunSoon();
});
ui.modelPicker.addEventListener("change", async () => {
  await useModel(ui.modelPicker.value);
  if (state.file) localize();
});
ui.method.addEventListener("change", () => {
  applyDefaultThreshold();
  rerunSoon();
});
ui.threshold.addEventListener("input", () => {
  ui.thresholdValue.value = Number(ui.threshold.value).toFixed(2);
});
ui.threshold.addEventListener("change", rerunSoon);
ui.boxMode.addEventListener("change", rerunSoon);
ui.opacity.addEventListener("input", () => {
  ui.opacityValue.value = Number(ui.opacity.value).toFixed(2);
  if (state.shown) redraw();
});
ui.apiKey.addEventListener("change", start);

/** Load the models and the chosen one's samples; then localize the current image, if there is one. */
async function start() {
  setState("loading", "Loading the model card…");
  if (!(await loadModels())) return; // it showed why it failed
  await useModel(ui.modelPicker.value);
  if (state.file) localize();
  else setState("idle", "Choose an image to start.");
}

start();
