// The demo page: pick a model, then pick, drop or sample an image; POST it to that model's
// v1/models/NAME/localize with the chosen options; draw the answer with overlay.js; list the classes
// and timings. CAM and SCG can be shown side by side: each method's answer for the current image and
// options is kept, so switching the method or the comparison sends nothing already answered. Every
// failure ends in a visible message. <body data-state> is loading | idle | busy | done | error, for
// styling and for tests.
import { BOX_COLOURS, drawLocalization } from "./overlay.js";

const METHODS = {
  scg: { name: "SCG", about: "SPA's refined map" },
  cam: { name: "CAM", about: "plain class activation map" },
};
const otherMethod = (method) => (method === "scg" ? "cam" : "scg");

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
  compare: $("compare"),
  threshold: $("threshold"),
  thresholdMethod: $("threshold-method"),
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
  figures: $("figures"),
  // One figure per method shown: the chosen method's, then the other one's when comparing.
  views: [
    { figure: $("main-figure"), caption: $("main-caption"), canvas: $("canvas") },
    { figure: $("compare-figure"), caption: $("compare-caption"), canvas: $("compare-canvas") },
  ],
  predictions: $("predictions"),
  timings: $("timings"),
};

const state = {
  models: [], // GET v1/models: each served model's card, the default first
  card: null, // the chosen model's card
  file: null, // the File chosen last
  image: null, // promise of its ImageBitmap, or of null when the browser cannot decode it
  thresholds: {}, // box threshold per method: the card's, until the slider changes it
  answers: new Map(), // method -> {key, threshold, result, roundTripMs}: its newest answer for the file
  requests: new Map(), // method -> {key, controller, promise}: its request in flight
  call: null, // the newest localize() call: only it draws
  shown: null, // what the result area shows: {name, image, views: [{method, threshold, result, roundTripMs}]}
  selected: 0, // index (in the first view's answer) of the prediction whose heatmap is shown
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

/** Each shown method's boxes of the class `classId`, "SCG 1 box, CAM 2 boxes" or "1 box" alone. */
function boxCounts(views, classId) {
  return views
    .map(({ method, result }) => {
      const count = plural(boxesOf(result, classId).length, "box", "boxes");
      return views.length > 1 ? `${METHODS[method].name} ${count}` : count;
    })
    .join(", ");
}

function boxesOf(result, classId) {
  return result.predictions.find((p) => p.class_id === classId)?.boxes ?? [];
}

function summary(name, views) {
  const classes = views[0].result.predictions
    .map((p, i) => `${i + 1}. ${p.label}, ${percent(p.score)}, ${boxCounts(views, p.class_id)}`)
    .join("; ");
  const took = views.map(({ method, result }) => `${Math.round(result.timings_ms.total)} ms (${METHODS[method].name})`);
  const methods = views.map(({ method }) => METHODS[method].name).join(" beside ");
  return `${name}, ${methods}: ${classes}. Took ${took.join(" and ")}.`;
}

function renderPredictions() {
  const { views } = state.shown;
  ui.predictions.replaceChildren(
    ...views[0].result.predictions.map((p, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.classId = p.class_id;
      button.style.setProperty("--swatch", BOX_COLOURS[i % BOX_COLOURS.length]);
      button.setAttribute("aria-pressed", String(i === state.selected));
      button.append(span("label", p.label), span("score", percent(p.score)));
      for (const { method, result } of views) {
        const boxes = boxesOf(result, p.class_id).map((b) => `[${b.join(", ")}]`).join(" ");
        const text = boxes || "no box above the threshold";
        button.append(span("boxes", views.length > 1 ? `${METHODS[method].name} ${text}` : text));
      }
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

function cell(tag, text, scope) {
  const element = document.createElement(tag);
  element.textContent = text;
  if (scope) element.scope = scope;
  return element;
}

/** One row per stage, one column per shown method (a stage a method skips shows a dash). */
function renderTimings() {
  const { views } = state.shown;
  const stages = [...new Set(views.flatMap(({ result }) => Object.keys(result.timings_ms)))];
  const row = (...cells) => {
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  };
  const times = (header, values) =>
    row(cell("th", header, "row"), ...values.map((ms) => cell("td", ms === undefined ? "–" : `${ms.toFixed(1)} ms`)));
  const head = document.createElement("thead");
  head.append(row(cell("th", "stage", "col"), ...views.map(({ method }) => cell("th", METHODS[method].name, "col"))));
  const body = document.createElement("tbody");
  body.append(
    ...stages.map((stage) => times(stage, views.map(({ result }) => result.timings_ms[stage]))),
    times("round trip (browser)", views.map(({ roundTripMs }) => roundTripMs)),
  );
  ui.timings.replaceChildren(head, body);
}

/** Captions and which figures show; each canvas says which method it draws in data-method. */
function renderFigures() {
  const { views } = state.shown;
  ui.figures.classList.toggle("compare", views.length > 1);
  for (const [i, { figure, caption, canvas }] of ui.views.entries()) {
    const view = views[i];
    figure.hidden = !view;
    if (!view) continue;
    const { name, about } = METHODS[view.method];
    caption.textContent = `${name}: ${about}, boxes at ${view.threshold.toFixed(2)}`;
    canvas.dataset.method = view.method;
  }
}

/** Draw every shown method's answer, each with the heatmap of the selected class. */
async function redraw() {
  const { name, image, views } = state.shown;
  const classId = views[0].result.predictions[state.selected]?.class_id;
  const draw = async ({ method, result }, { canvas }) => {
    const selected = Math.max(0, result.predictions.findIndex((p) => p.class_id === classId));
    const boxes = await drawLocalization(canvas, image, result, { selected, opacity: Number(ui.opacity.value) });
    if (boxes === null) return; // a newer draw took over
    const heatmapOf = result.predictions[selected];
    canvas.setAttribute(
      "aria-label",
      `${name}, ${METHODS[method].name}, with ${plural(boxes.length, "box", "boxes")}` +
        (heatmapOf?.heatmap ? ` and the heatmap of ${heatmapOf.label}` : ""),
    );
  };
  await Promise.all(views.map((view, i) => draw(view, ui.views[i])));
}

function selectPrediction(index) {
  state.selected = index;
  for (const [i, button] of [...ui.predictions.querySelectorAll("button")].entries()) {
    button.setAttribute("aria-pressed", String(i === index));
  }
  redraw();
}

// --- Actions ---------------------------------------------------------------------------------

/** The methods the result area shows: the chosen one, then the other one when comparing. */
function shownMethods() {
  const method = ui.method.value;
  return ui.compare.checked ? [method, otherMethod(method)] : [method];
}

/** The request for `method` with the current options; it names the image's model and every option. */
function requestPath(method) {
  const params = new URLSearchParams({
    topk: ui.topk.value,
    method,
    threshold: String(state.thresholds[method]),
    box_mode: ui.boxMode.value,
  });
  return `v1/models/${encodeURIComponent(state.card.name)}/localize?${params}`;
}

const isKept = (method) => state.answers.get(method)?.key === requestPath(method);

/** The answer for `method` with the current options: the kept one, the one in flight, or a new request
 * (which replaces an older request of that method, whose options are stale). */
function answerFor(method) {
  const key = requestPath(method);
  if (isKept(method)) return Promise.resolve(state.answers.get(method));
  const running = state.requests.get(method);
  if (running?.key === key) return running.promise;
  running?.controller.abort();
  const controller = new AbortController();
  const { file } = state;
  const body = new FormData();
  body.append("image", file, file.name);
  const started = performance.now();
  const threshold = state.thresholds[method];
  const promise = callApi(key, { method: "POST", body, signal: controller.signal })
    .then((result) => {
      const answer = { key, threshold, result, roundTripMs: performance.now() - started };
      if (state.requests.get(method)?.controller === controller) state.answers.set(method, answer);
      return answer;
    })
    .finally(() => {
      if (state.requests.get(method)?.controller === controller) state.requests.delete(method);
    });
  state.requests.set(method, { key, controller, promise });
  return promise;
}

/** Forget every answer and stop every request: a new image, or the user asked to localize again. */
function dropAnswers() {
  for (const { controller } of state.requests.values()) controller.abort();
  state.requests.clear();
  state.answers.clear();
}

/** Whether the result area already shows these methods' kept answers to the current options for `file`. */
function isShown(file, methods) {
  const views = state.shown?.file === file && !ui.output.hidden ? state.shown.views : [];
  const same = (m, i) => views[i].method === m && isKept(m) && views[i].key === requestPath(m);
  return views.length === methods.length && methods.every(same);
}

function doneMessage() {
  const { name, image, views } = state.shown;
  const grey = image ? "" : " This browser cannot show the image itself: its heatmap and boxes are drawn on grey.";
  return summary(name, views) + grey;
}

/** Show the shown methods' answers, asking for those not kept.
 * reveal: scroll the result into view if it is off screen (a new image on a phone, say). */
async function localize({ reveal = false } = {}) {
  if (!state.file) return;
  const call = (state.call = {}); // a newer call makes this one's answers stale
  const { file, image: decoding } = state;
  const methods = shownMethods();
  if (isShown(file, methods)) {
    // A change that changes nothing (a field left with its value): redrawing would replace the class
    // buttons under the pointer. It still ends what an older call had started.
    setState("done", doneMessage());
    return;
  }
  if (!methods.every(isKept)) setState("busy", `Localizing ${file.name}…`);
  try {
    const answers = await Promise.all(methods.map(answerFor));
    const image = await decoding;
    if (state.call !== call) return;
    const views = answers.map((answer, i) => ({ method: methods[i], ...answer }));
    state.shown = { file, name: file.name, image, views };
    if (state.selected >= answers[0].result.predictions.length) state.selected = 0;
    ui.output.hidden = false;
    renderFigures();
    renderPredictions();
    renderTimings();
    await redraw();
    if (state.call !== call) return;
    setState("done", doneMessage());
    const { top, bottom } = ui.resultPanel.getBoundingClientRect();
    if (reveal && (top > innerHeight || bottom < 0)) ui.resultPanel.scrollIntoView({ block: "start" });
  } catch (error) {
    if (error.name === "AbortError" || state.call !== call) return;
    showError(error);
  }
}

function setFile(file) {
  dropAnswers();
  state.file = file;
  state.image = createImageBitmap(file).catch(() => null);
  state.selected = 0;
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

/** Show the picked model's card and samples; its default method and thresholds become the options. */
async function useModel(name) {
  state.card = state.models.find((card) => card.name === name) ?? state.models[0];
  const { arch, num_classes: classes, default_method: method, box_threshold: thresholds } = state.card;
  ui.model.textContent = `${state.card.name} · ${arch} · ${plural(classes, "class", "classes")}`;
  showPrecision(state.card);
  ui.topk.max = classes;
  ui.topk.value = Math.min(classes, Number(ui.topk.value) || 1);
  state.thresholds = Object.fromEntries(Object.keys(METHODS).map((m) => [m, thresholds[m]]));
  state.selected = 0;
  ui.method.value = method;
  showThreshold();
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

/** The slider shows the chosen method's threshold; the other method keeps its own. */
function showThreshold() {
  const method = ui.method.value;
  const { name } = METHODS[method];
  ui.threshold.value = state.thresholds[method];
  ui.thresholdValue.value = Number(ui.threshold.value).toFixed(2);
  ui.thresholdMethod.textContent = name;
  ui.thresholdHint.textContent =
    `Map values above it make the ${name} boxes; the model's default is ${state.card.box_threshold[method]}.`;
}

// --- Wiring ----------------------------------------------------------------------------------

let rerunTimer;
/** Options changed: show the kept answers at once, or ask again once the user pauses. */
function rerunSoon() {
  clearTimeout(rerunTimer);
  if (!state.file) return;
  if (shownMethods().every(isKept)) localize();
  else rerunTimer = setTimeout(localize, 250);
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
  dropAnswers(); // "Localize" asks again, even for kept answers
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
  showThreshold();
  rerunSoon();
});
ui.compare.addEventListener("change", rerunSoon);
ui.threshold.addEventListener("input", () => {
  ui.thresholdValue.value = Number(ui.threshold.value).toFixed(2);
});
ui.threshold.addEventListener("change", () => {
  state.thresholds[ui.method.value] = Number(ui.threshold.value);
  rerunSoon();
});
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
