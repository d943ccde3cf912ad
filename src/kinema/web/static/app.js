// The playground: sign in with an API key, pick an app, fill its form (with the price shown before you run),
// follow the run live, play and download the result, and browse your history. It only uses the public /v1
// API, with the key kept in this tab's sessionStorage.

import { Api, ApiError } from "./api.js";
import { append, formatBytes, formatDuration, formatWhen, h, replace } from "./dom.js";
import { buildForm, describeInput, outputSize } from "./form.js";
import { priceFor } from "./pricing.js";

const KEY_STORAGE = "kinema.apiKey";
const FAILURE_HINTS = {
  model_not_available: "The kinema/tiny app needs no download: use it to check that the rest of the install works.",
  insufficient_resources: "The model does not fit this server's GPU or memory; see the server log for what to try.",
  worker_lost: "The worker stopped in the middle of this task. Running it again usually works.",
};

const view = document.getElementById("view");
const banner = document.getElementById("banner");
const nav = document.getElementById("nav");

let api = null;
let current = null; // AbortController of the view on screen
const apps = new Map(); // id -> GET /v1/apps/{id}
const tasks = new Map(); // id -> the latest task seen (instant render after navigation)

// Messages ---------------------------------------------------------------------------------------------

/** A sentence a user can act on, for any ApiError. */
export function explain(error) {
  if (!(error instanceof ApiError)) return `Something went wrong in the page: ${error.message}`;
  switch (error.status) {
    case 0:
      return error.message;
    case 401:
      return `This API key was not accepted (${error.message}). Check it and sign in again.`;
    case 402:
      return `Not enough balance for this run: ${error.message}. Top up the account or choose a shorter or smaller video.`;
    case 429: {
      // The server's message may already say when; Retry-After is the authority either way.
      const said = /retry|try again/i.test(error.message);
      const wait = said ? "" : error.retryAfter !== null ? ` Try again in ${error.retryAfter} s.` : " Try again shortly.";
      return `Too many requests: ${error.message.replace(/\.$/, "")}.${wait}`;
    }
    case 422:
      return `Some inputs are not valid: ${error.message.replace(/^invalid input: /, "")}`;
    default:
      return `${error.message} (HTTP ${error.status}, ${error.code})`;
  }
}

function showBanner(message, kind = "error") {
  replace(
    banner,
    h("span", { class: "banner-text" }, message),
    h("button", { type: "button", class: "ghost small", "aria-label": "Dismiss", onclick: clearBanner }, "×"),
  );
  banner.className = `banner banner-${kind}`;
  banner.hidden = false;
}

function clearBanner() {
  banner.hidden = true;
  banner.replaceChildren();
}

/** Route an error from a view: sign out on 401, ignore aborts, else a banner. */
function fail(error) {
  if (error?.name === "AbortError") return;
  if (error instanceof ApiError && error.status === 401) {
    signOut(explain(error));
    return;
  }
  showBanner(explain(error));
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });

// Session ----------------------------------------------------------------------------------------------

function signIn(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
  api = new Api(key);
  nav.hidden = false;
  refreshAccount();
}

/** The account's name, and its available balance when billing is on (GET /v1/me; quiet if absent). */
async function refreshAccount() {
  const chip = document.getElementById("account");
  try {
    const me = await api.json("GET", "v1/me");
    chip.textContent = me.billing_enabled ? `${me.name} · ${me.available} ${me.currency}` : me.name;
    chip.title = me.billing_enabled ? `Balance ${me.balance} ${me.currency}, held ${me.held} for running tasks` : "";
    chip.hidden = false;
  } catch {
    chip.hidden = true;
  }
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  document.getElementById("account").hidden = true;
  api = null;
  apps.clear();
  tasks.clear();
  nav.hidden = true;
  showLogin(message);
}

function showLogin(message) {
  current?.abort();
  document.title = "Sign in · kinema playground";
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "kin_…",
    required: true,
    "aria-describedby": "login-error",
  });
  const error = h("p", { class: "form-error", id: "login-error", role: "alert" }, message || "");
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card login", novalidate: true },
    h("h1", {}, "Sign in"),
    h(
      "p",
      {},
      "Paste an API key for this server. ",
      h("code", {}, "kinema serve"),
      " prints the admin key once when it first starts (or set ",
      h("code", {}, "KINEMA_ADMIN_KEY"),
      ").",
    ),
    h("label", { for: "api-key", class: "field-label" }, "API key"),
    input,
    error,
    button,
    h("p", { class: "hint" }, "The key stays in this browser tab only (session storage) and is sent only to this server."),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      error.textContent = "Enter an API key.";
      return;
    }
    button.disabled = true;
    error.textContent = "";
    try {
      const list = await new Api(key).apps();
      signIn(key);
      for (const app of list.data) apps.set(app.id, { ...app, summary: true });
      route();
    } catch (caught) {
      error.textContent =
        caught instanceof ApiError && caught.status === 401
          ? "That API key was not accepted (401: invalid API key). Use the key kinema serve printed on its " +
            "first start, or the value of KINEMA_ADMIN_KEY."
          : explain(caught);
      input.select();
    } finally {
      button.disabled = false;
    }
  });
  replace(view, form);
  input.focus();
}

// Apps -------------------------------------------------------------------------------------------------

async function showApps(signal) {
  document.title = "Apps · kinema playground";
  replace(view, h("p", { class: "loading" }, "Loading apps…"));
  const list = await api.apps({ signal });
  const cards = list.data.map((app) =>
    h(
      "a",
      {
        class: `card app-card${app.available === false ? " unavailable" : ""}`,
        href: `#/apps/${app.id}`,
        dataset: { app: app.id },
      },
      h("h2", {}, app.title),
      h("code", {}, `${app.id} · v${app.version}`),
      h("p", {}, app.description),
      app.available === false
        ? h("p", { class: "unavailable-reason" }, h("strong", {}, "Not available here: "), app.unavailable_reason || "")
        : null,
      h("span", { class: "cta" }, "Open →"),
    ),
  );
  replace(
    view,
    h("h1", {}, "Apps"),
    h("p", { class: "lede" }, "Pick an app, describe the video, see the price, press Generate."),
    h("div", { class: "app-grid" }, cards),
  );
}

async function loadApp(id, signal) {
  const known = apps.get(id);
  if (known && !known.summary) return known;
  const app = await api.app(id, { signal });
  apps.set(id, app);
  return app;
}

function usableExample(example) {
  const image = example.image;
  return !image || /^(https:|data:|file_)/.test(image);
}

async function showApp(id, params, signal) {
  replace(view, h("p", { class: "loading" }, "Loading the app…"));
  const app = await loadApp(id, signal);
  document.title = `${app.title} · kinema playground`;

  const price = h("strong", { class: "price-amount", id: "price", "data-testid": "price" }, "–");
  const priceDetail = h("small", { class: "price-detail", id: "price-detail" });
  const formError = h("p", { class: "form-error", id: "form-error", role: "alert" });
  const generate = h("button", { type: "submit", class: "primary", id: "generate" }, "Generate");

  const updatePrice = () => {
    const settings = form.settings();
    const { duration, minDuration, maxDuration } = settings;
    const quote = priceFor(app.pricing, app.fps, settings);
    const outOfRange =
      typeof duration === "number" && ((minDuration !== undefined && duration < minDuration) || (maxDuration !== undefined && duration > maxDuration));
    if (!quote || outOfRange) {
      price.textContent = "–";
      priceDetail.textContent =
        outOfRange || quote === null ? `Set a duration from ${minDuration ?? "?"} to ${maxDuration ?? "?"} s to see the price.` : "";
      return;
    }
    const [width, height] = outputSize(settings.resolution, settings.aspectRatio || "16:9");
    price.textContent = `${quote.cost} ${quote.currency}`;
    price.dataset.cost = quote.cost;
    priceDetail.textContent =
      `${quote.seconds} s (${quote.frames} frames at ${app.fps} fps) × ${quote.rate} ${quote.currency}/s ` +
      `· ${settings.resolution}${settings.generateAudio ? " with audio" : ""}` +
      (settings.aspectRatio ? ` · ${width}×${height}` : "");
  };
  const form = buildForm(app, { api, onChange: updatePrice });

  const examples = (app.examples || []).filter(usableExample);
  const exampleChips = examples.length
    ? h(
        "p",
        { class: "examples" },
        "Try: ",
        examples.map((example) =>
          h("button", { type: "button", class: "chip", onclick: () => form.write(example) }, example.prompt),
        ),
      )
    : null;

  const formElement = h(
    "form",
    { class: "card run-form", id: "run-form", novalidate: true },
    exampleChips,
    form.element,
    h(
      "div",
      { class: "run-bar" },
      h("div", { class: "price" }, h("span", { class: "price-label" }, "Price"), price, priceDetail),
      generate,
    ),
    formError,
  );
  formElement.addEventListener("submit", async (event) => {
    event.preventDefault();
    form.clearErrors();
    formError.textContent = "";
    generate.disabled = true;
    generate.textContent = "Submitting…";
    let cooldown = 0;
    try {
      await form.pending().catch((error) => {
        throw Object.assign(error, { upload: true });
      });
      const task = await api.submit(app.id, form.values(), { signal });
      tasks.set(task.id, task);
      location.hash = `#/tasks/${task.id}`;
    } catch (error) {
      if (error.name === "AbortError") return;
      if (error instanceof ApiError && error.status === 401) return signOut(explain(error));
      if (error.upload) {
        formError.textContent = `The image could not be uploaded: ${explain(error)}`;
      } else if (error instanceof ApiError && error.status === 422) {
        const unplaced = form.showErrors(error.details);
        formError.textContent = unplaced.length
          ? explain(error)
          : "Fix the highlighted field" + (error.details?.length > 1 ? "s" : "") + " and press Generate again.";
      } else {
        formError.textContent = explain(error);
        if (error instanceof ApiError && error.status === 429) cooldown = error.retryAfter ?? 0;
      }
    } finally {
      generate.textContent = "Generate";
      generate.disabled = app.available === false;
    }
    if (cooldown > 0) {
      generate.disabled = true;
      for (let left = cooldown; left > 0 && !signal.aborted; left--) {
        generate.textContent = `Generate (wait ${left} s)`;
        await sleep(1000, signal);
      }
      generate.textContent = "Generate";
      generate.disabled = false;
    }
  });

  replace(
    view,
    h(
      "div",
      { class: "app-head" },
      h("a", { href: "#/", class: "back" }, "← Apps"),
      h("h1", {}, app.title),
      h("code", {}, `${app.id} · v${app.version}`),
      h("p", {}, app.description),
      (app.notes || []).map((note) => h("p", { class: "note" }, note)),
      app.available === false
        ? h(
            "p",
            { class: "note note-error", "data-testid": "unavailable" },
            h("strong", {}, "This server cannot run this app now: "),
            app.unavailable_reason || "no reason given",
          )
        : null,
    ),
    formElement,
  );
  if (app.available === false) generate.disabled = true;
  updatePrice();

  const from = params.get("from");
  if (from) {
    const task = tasks.get(from) || (await api.task(from, { signal }));
    form.write(task.input);
  }
}

// One task ---------------------------------------------------------------------------------------------

function statusBadge(status) {
  return h("span", { class: `status status-${status}`, "data-testid": "status" }, status);
}

async function rerun(task, signal) {
  try {
    const fresh = await api.submit(task.app, task.input, { signal });
    tasks.set(fresh.id, fresh);
    location.hash = `#/tasks/${fresh.id}`;
  } catch (error) {
    fail(error);
  }
}

function taskActions(task, signal) {
  return h(
    "div",
    { class: "actions" },
    h("button", { type: "button", class: "secondary", id: "rerun", onclick: () => rerun(task, signal) }, "Re-run"),
    h("a", { class: "button secondary", href: `#/apps/${task.app}?from=${encodeURIComponent(task.id)}` }, "Edit & re-run"),
  );
}

/** A measured duration to the millisecond: 0.208008 -> "0.208". */
const seconds = (value) => String(Number(Number(value).toFixed(3)));

function metaTable(meta) {
  const billing = meta.billing || {};
  const rows = [
    ["Resolution", `${meta.width}×${meta.height} (${meta.resolution}, ${meta.aspect_ratio})`],
    ["Duration", `${seconds(meta.duration)} s · ${meta.frames} frames at ${meta.fps} fps`],
    ["Audio", meta.has_audio ? `yes (${meta.audio_codec})` : "no"],
    ["Video codec", meta.video_codec],
    ["File size", formatBytes(meta.size_bytes)],
    ["Seed", String(meta.seed)],
    ["Generation time", meta.timings?.total !== undefined ? formatDuration(meta.timings.total) : "–"],
    [
      "Cost",
      h(
        "span",
        {},
        h("strong", { "data-testid": "cost" }, `${billing.cost} ${billing.currency}`),
        h("small", {}, ` (${billing.billable_seconds} s × ${billing.rate_per_second} ${billing.currency}/s)`),
      ),
    ],
  ];
  return h(
    "table",
    { class: "meta", "data-testid": "output-meta" },
    h("tbody", {}, rows.map(([name, value]) => h("tr", {}, h("th", { scope: "row" }, name), h("td", {}, value)))),
  );
}

function resultView(task, signal) {
  if (task.status === "completed") {
    const video = h("video", {
      controls: true,
      playsinline: true,
      preload: "metadata",
      src: task.output.video,
      id: "player",
      "data-testid": "player",
    });
    return h(
      "div",
      { class: "result" },
      h("div", { class: "player-wrap" }, video),
      h(
        "div",
        { class: "result-side" },
        metaTable(task.output_meta),
        h(
          "div",
          { class: "actions" },
          h("a", { class: "button primary", href: task.output.video, download: `${task.id}.mp4`, id: "download" }, "Download MP4"),
        ),
        taskActions(task, signal),
      ),
    );
  }
  if (task.status === "failed") {
    const error = task.error || { code: "failed", message: "the task failed" };
    return h(
      "div",
      { class: "card failure", role: "alert", "data-testid": "failure" },
      h("h2", {}, "The task failed"),
      h("p", {}, h("code", {}, error.code), " ", error.message),
      FAILURE_HINTS[error.code] ? h("p", { class: "hint" }, FAILURE_HINTS[error.code]) : null,
      taskActions(task, signal),
    );
  }
  return h(
    "div",
    { class: "card cancelled", "data-testid": "cancelled" },
    h("h2", {}, "Cancelled"),
    h("p", {}, "The task was cancelled before it finished: nothing was stored and nothing was charged."),
    taskActions(task, signal),
  );
}

/** The live panel while a task is queued or running: stage list, step k/n, elapsed time, log, Cancel. */
function progressPanel(task, { onCancel, stages: appStages = [] }) {
  // The app's stages and their labels, as GET /v1/apps/{id} serves them (one list for API, CLI and page).
  const labels = Object.fromEntries(appStages.map((stage) => [stage.name, stage.label]));
  const stageLabel = h("strong", { class: "stage-label", "data-testid": "stage" });
  const step = h("span", { class: "step", "data-testid": "step" });
  const elapsed = h("span", { class: "elapsed", "data-testid": "elapsed" });
  const bar = h("progress", { max: 1, value: 0, "aria-label": "Denoising progress" });
  const stages = h("ol", { class: "stages" });
  const log = h("p", { class: "log", "data-testid": "log" });
  const note = h("p", { class: "hint" });
  const cancel = h("button", { type: "button", class: "danger", id: "cancel", onclick: () => onCancel(cancel) }, "Cancel");
  let status = task.status;
  // Time since submission (queue wait included), on the server's clock mapped to this browser's.
  const created = Date.parse(task.created_at);
  const since = Number.isNaN(created) ? Date.now() : created + api.clockSkew;
  const withAudio = task.input?.generate_audio === true;

  const drawStages = (currentStage) => {
    const names = appStages.map((stage) => stage.name).filter((name) => withAudio || name !== "decode_audio");
    if (currentStage && !names.includes(currentStage)) names.push(currentStage);
    const index = names.indexOf(currentStage);
    replace(
      stages,
      names.map((name, i) =>
        h("li", { class: i < index ? "done" : i === index ? "current" : "pending" }, labels[name] || name),
      ),
    );
  };
  const tick = () => {
    const prefix = status === "queued" ? "Waiting" : "Elapsed";
    elapsed.textContent = `${prefix} ${formatDuration(Math.max(0, (Date.now() - since) / 1000))}`;
  };
  const setStatus = (next) => {
    status = next;
    if (next === "queued") stageLabel.textContent = "Queued: waiting for a worker";
    else if (next === "running" && !stageLabel.textContent.trim()) stageLabel.textContent = "Starting";
    tick();
  };
  const setProgress = (progress) => {
    if (!progress) return;
    stageLabel.textContent = labels[progress.stage] || progress.stage;
    if (progress.total) {
      step.textContent = `step ${progress.step ?? 0}/${progress.total}`;
      bar.max = progress.total;
      bar.value = progress.step ?? 0;
    } else {
      step.textContent = "";
      if (progress.stage !== "denoise" && bar.value > 0) bar.value = bar.max;
    }
    drawStages(progress.stage);
  };
  setStatus(task.status);
  drawStages(task.progress?.stage);
  setProgress(task.progress);
  const timer = setInterval(tick, 200);
  const element = h(
    "div",
    { class: "card progress", "data-testid": "progress", "aria-live": "polite" },
    h("div", { class: "progress-top" }, stageLabel, step, elapsed),
    bar,
    stages,
    log,
    note,
    h("div", { class: "actions" }, cancel),
  );
  return {
    element,
    stop: () => clearInterval(timer),
    update(kind, data) {
      if (kind === "status") setStatus(data.status);
      else if (kind === "progress") setProgress(data);
      else if (kind === "log") log.textContent = data.message;
    },
    note: (text) => (note.textContent = text),
  };
}

/** Follow the task's SSE stream (resuming with Last-Event-ID after a drop) until its final `task` event. */
async function follow(taskId, panel, signal) {
  let lastEventId = null;
  let attempt = 0;
  while (!signal.aborted) {
    try {
      for await (const event of api.events(taskId, { lastEventId, signal })) {
        attempt = 0;
        panel.note("");
        if (event.id) lastEventId = event.id;
        const data = JSON.parse(event.data);
        if (event.event === "task") return data;
        panel.update(event.event, data);
      }
    } catch (error) {
      if (signal.aborted || error.name === "AbortError") return null;
      if (error instanceof ApiError && [401, 403, 404].includes(error.status)) throw error;
      panel.note(`Connection lost; reconnecting… (${explain(error)})`);
    }
    attempt += 1;
    await sleep(Math.min(250 * 2 ** attempt, 5000), signal);
  }
  return null;
}

/** Whether a signed URL expires within five minutes (then the task is read again for a fresh one). */
function expiresSoon(url) {
  if (!url) return false;
  const expires = Number(new URL(url, location.href).searchParams.get("expires"));
  return !Number.isFinite(expires) || expires * 1000 - Date.now() < 5 * 60 * 1000;
}

async function showTask(id, signal) {
  document.title = `Task ${id} · kinema playground`;
  let task = tasks.get(id);
  if (!task || expiresSoon(task.output?.video)) {
    replace(view, h("p", { class: "loading" }, "Loading the task…"));
    task = await api.task(id, { signal });
  }
  const badge = h("span", {}, statusBadge(task.status));
  const live = h("div", { class: "live" });
  const input = task.input || {};
  replace(
    view,
    h(
      "div",
      { class: "task-head" },
      h("a", { href: "#/history", class: "back" }, "← History"),
      h("h1", {}, "Task ", h("code", { class: "task-id" }, task.id), " ", badge),
      h("p", { class: "sub" }, h("a", { href: `#/apps/${task.app}` }, task.app), ` · ${describeInput(input)} · created ${formatWhen(task.created_at)}`),
      h("blockquote", { class: "prompt" }, input.prompt || ""),
    ),
    live,
  );

  let finished = false;
  const finish = (final) => {
    if (finished || signal.aborted) return;
    finished = true;
    tasks.set(final.id, final);
    if (final.status === "completed") refreshAccount();
    replace(badge, statusBadge(final.status));
    replace(live, resultView(final, signal));
  };
  if (["completed", "failed", "cancelled"].includes(task.status)) {
    finish(task);
    return;
  }

  let app = null;
  try {
    app = await loadApp(task.app, signal);
  } catch (error) {
    if (signal.aborted) return;
    // An app this server no longer has: the stage list stays empty, the current stage still shows.
  }
  const panel = progressPanel(task, {
    stages: app?.stages || [],
    onCancel: async (button) => {
      button.disabled = true;
      button.textContent = "Cancelling…";
      try {
        const answer = await api.cancel(task.id, { signal });
        if (["completed", "failed", "cancelled"].includes(answer.status)) finish(answer);
        else panel.update("log", { message: "Cancel requested; the run stops at its next step." });
      } catch (error) {
        if (error instanceof ApiError && error.status === 409) {
          panel.note("The task had already finished.");
        } else {
          button.disabled = false;
          button.textContent = "Cancel";
          fail(error);
        }
      }
    },
  });
  signal.addEventListener("abort", panel.stop, { once: true });
  replace(live, panel.element);
  panel.update("status", { status: task.status });
  replace(badge, statusBadge(task.status));
  const onStatus = panel.update;
  panel.update = (kind, data) => {
    onStatus(kind, data);
    if (kind === "status") replace(badge, statusBadge(data.status));
  };
  try {
    const final = await follow(task.id, panel, signal);
    if (final) finish(final);
  } finally {
    panel.stop();
  }
}

// History ----------------------------------------------------------------------------------------------

function thumbnail(task) {
  if (task.status === "completed" && task.output?.video) {
    // The first frame as the poster: metadata only, muted, never autoplayed.
    return h("video", { muted: true, preload: "metadata", playsinline: true, src: `${task.output.video}#t=0.001`, "aria-hidden": "true", tabindex: "-1" });
  }
  const glyph = { failed: "!", cancelled: "×", running: "…", queued: "…" }[task.status] || "?";
  return h("span", { class: `placeholder placeholder-${task.status}`, "aria-hidden": "true" }, glyph);
}

function historyItem(task, signal) {
  const cost = task.output_meta?.billing;
  const meta = task.output_meta;
  const facts = meta ? `${meta.width}×${meta.height} · ${seconds(meta.duration)} s${meta.has_audio ? " · audio" : ""}` : describeInput(task.input || {});
  return h(
    "li",
    { class: "history-item", dataset: { taskId: task.id } },
    h("a", { class: "thumb", href: `#/tasks/${task.id}`, "aria-label": `Open task ${task.id}` }, thumbnail(task)),
    h(
      "div",
      { class: "info" },
      h("a", { class: "prompt-line", href: `#/tasks/${task.id}` }, task.input?.prompt || task.id),
      h("p", { class: "sub" }, `${task.app} · ${facts} · ${formatWhen(task.created_at)}`),
      task.error && task.status === "failed" ? h("p", { class: "sub error-line" }, `${task.error.code}: ${task.error.message}`) : null,
    ),
    h(
      "div",
      { class: "side" },
      statusBadge(task.status),
      h("span", { class: "cost", "data-testid": "cost" }, cost ? `${cost.cost} ${cost.currency}` : "–"),
      h("button", { type: "button", class: "secondary small", onclick: () => rerun(task, signal) }, "Re-run"),
    ),
  );
}

async function showHistory(signal) {
  document.title = "History · kinema playground";
  replace(view, h("p", { class: "loading" }, "Loading your tasks…"));
  const list = h("ul", { class: "history", "data-testid": "history" });
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  let cursor = null;
  const load = async () => {
    more.disabled = true;
    try {
      const page = await api.tasks({ limit: 20, cursor, signal });
      for (const task of page.data) tasks.set(task.id, task);
      append(list, page.data.map((task) => historyItem(task, signal)));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      if (!list.childElementCount) {
        list.replaceWith(h("p", { class: "empty" }, "No tasks yet. ", h("a", { href: "#/" }, "Pick an app"), " and press Generate."));
      }
    } finally {
      more.disabled = false;
    }
  };
  more.addEventListener("click", () => load().catch(fail));
  replace(view, h("h1", {}, "History"), h("p", { class: "lede" }, "Your recent tasks, newest first."), list, more);
  await load();
}

// Router -----------------------------------------------------------------------------------------------

function route() {
  current?.abort();
  current = new AbortController();
  const { signal } = current;
  clearBanner();
  if (!api) return showLogin();
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  for (const link of nav.querySelectorAll("a[data-nav]")) {
    link.classList.toggle("active", path === link.dataset.nav || (link.dataset.nav === "/" && path.startsWith("/apps")));
  }
  let match;
  let shown;
  if (path === "/" || path === "") shown = showApps(signal);
  else if ((match = /^\/apps\/([^/]+\/[^/]+)$/.exec(path))) shown = showApp(decodeURIComponent(match[1]), params, signal);
  else if ((match = /^\/tasks\/([^/]+)$/.exec(path))) shown = showTask(decodeURIComponent(match[1]), signal);
  else if (path === "/history") shown = showHistory(signal);
  else {
    replace(view, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the apps")));
    return;
  }
  shown.catch(fail);
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
const saved = sessionStorage.getItem(KEY_STORAGE);
if (saved) signIn(saved);
route();
