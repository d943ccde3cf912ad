// A run form generated from an app's input JSON Schema. The common fields get purpose-made controls
// (prompt box, image drop zone, segmented size choices, duration slider, audio switch); any other field an
// app adds is rendered from its type under "Advanced". The server validates; the form only shapes input.

import { h } from "./dom.js";

const MAIN_FIELDS = ["prompt", "image", "resolution", "aspect_ratio", "duration", "generate_audio"];
const IMAGE_TYPES = "image/png,image/jpeg,image/webp,image/gif,image/bmp";
const SIZES = { "720p": [1280, 720], "1080p": [1920, 1080], "4K": [3840, 2160] };

/** The contract's exact output size (kinema/domain/sizing.py output_size). */
export function outputSize(resolution, aspectRatio) {
  const [long, short] = SIZES[resolution] || [0, 0];
  if (aspectRatio === "9:16") return [short, long];
  if (aspectRatio === "1:1") return [short, short];
  return [long, short];
}

/** A property's schema with anyOf-null unwrapped and $refs resolved: {type, enum, ..., nullable}. */
export function resolveProperty(schema, property) {
  const deref = (node) => {
    if (node && node.$ref) {
      const name = node.$ref.split("/").pop();
      return { ...(schema.$defs?.[name] || {}), ...node, $ref: undefined };
    }
    return node || {};
  };
  let base = deref(property);
  let nullable = false;
  if (Array.isArray(base.anyOf)) {
    const options = base.anyOf.map(deref);
    const concrete = options.filter((option) => option.type !== "null");
    nullable = concrete.length < options.length;
    if (concrete.length === 1) base = { ...concrete[0], ...stripAnyOf(base) };
  }
  return { ...base, nullable };
}

function stripAnyOf(node) {
  const { anyOf: _ignored, ...rest } = node;
  return rest;
}

function label(name, spec) {
  return spec.title || name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function fieldShell(name, spec, control, { hint, wide = false } = {}) {
  const error = h("p", { class: "field-error", id: `error-${name}`, role: "alert" });
  const shell = h(
    "div",
    { class: `field field-${name}${wide ? " wide" : ""}`, dataset: { field: name } },
    h("label", { class: "field-label", for: `input-${name}` }, label(name, spec)),
    control,
    hint ? h("p", { class: "hint" }, hint) : null,
    error,
  );
  shell.errorElement = error;
  return shell;
}

// Widgets: {name, element, read() -> value | undefined (omitted), write(value), pending()} -----------------

function textWidget(name, spec, required, multiline) {
  const attrs = {
    id: `input-${name}`,
    name,
    maxlength: spec.maxLength,
    placeholder: spec.description || "",
    "aria-describedby": `error-${name}`,
  };
  const input = multiline ? h("textarea", { ...attrs, rows: name === "prompt" ? 4 : 2 }) : h("input", { ...attrs, type: "text" });
  const counter = spec.maxLength ? h("span", { class: "counter" }) : null;
  const count = () => counter && (counter.textContent = `${input.value.length} / ${spec.maxLength}`);
  input.addEventListener("input", count);
  count();
  const element = fieldShell(name, spec, h("div", { class: "text-wrap" }, input, counter), { wide: multiline });
  return {
    name,
    element,
    focus: () => input.focus(),
    read: () => (input.value === "" && !required ? undefined : input.value),
    write: (value) => {
      input.value = value ?? "";
      count();
    },
  };
}

function numberWidget(name, spec, required) {
  const integer = spec.type === "integer";
  const input = h("input", {
    id: `input-${name}`,
    name,
    type: "number",
    inputmode: integer ? "numeric" : "decimal",
    step: integer ? "1" : "any",
    min: spec.minimum,
    max: spec.maximum,
    placeholder: spec.nullable ? "random / automatic" : "",
    "aria-describedby": `error-${name}`,
  });
  if (spec.default !== undefined && spec.default !== null) input.value = String(spec.default);
  const element = fieldShell(name, spec, input, { hint: spec.description });
  return {
    name,
    element,
    focus: () => input.focus(),
    read: () => (input.value === "" ? (required ? null : undefined) : Number(input.value)),
    write: (value) => (input.value = value === undefined || value === null ? "" : String(value)),
  };
}

function durationWidget(name, spec, fps) {
  const min = spec.minimum ?? 0.1;
  const max = spec.maximum ?? 20;
  const number = h("input", {
    id: `input-${name}`,
    name,
    type: "number",
    inputmode: "decimal",
    step: "any",
    min,
    max,
    "aria-describedby": `error-${name}`,
  });
  const slider = h("input", {
    type: "range",
    min,
    max,
    step: String(1 / fps >= 0.1 ? 1 / fps : 0.1),
    "aria-label": `${label(name, spec)} slider`,
    tabindex: "-1",
  });
  const sync = () => {
    if (number.value !== "" && Number.isFinite(Number(number.value))) slider.value = number.value;
  };
  number.addEventListener("input", sync);
  slider.addEventListener("input", () => {
    number.value = String(Number(slider.value));
    number.dispatchEvent(new Event("input", { bubbles: true }));
  });
  const control = h("div", { class: "duration" }, slider, h("span", { class: "unit-input" }, number, h("span", { class: "unit" }, "s")));
  const element = fieldShell(name, spec, control, { hint: `${min} to ${max} seconds at ${fps} fps` });
  const widget = {
    name,
    element,
    focus: () => number.focus(),
    read: () => (number.value === "" ? undefined : Number(number.value)),
    write: (value) => {
      number.value = value === undefined || value === null ? "" : String(value);
      sync();
    },
  };
  widget.write(spec.default);
  return widget;
}

function switchWidget(name, spec) {
  const input = h("input", { id: `input-${name}`, name, type: "checkbox", role: "switch" });
  input.checked = spec.default === true;
  const control = h(
    "label",
    { class: "switch" },
    input,
    h("span", { class: "track", "aria-hidden": "true" }),
    h("span", { class: "switch-text" }, spec.description || label(name, spec)),
  );
  const element = fieldShell(name, spec, control);
  element.querySelector(".field-label").removeAttribute("for");
  return {
    name,
    element,
    focus: () => input.focus(),
    read: () => input.checked,
    write: (value) => (input.checked = value === true),
  };
}

function choiceWidget(name, spec, { segmented, autoLabel }) {
  const options = spec.enum.map((value) => ({ value, text: String(value) }));
  if (spec.nullable) options.unshift({ value: null, text: autoLabel || "Auto" });
  const initial = spec.default === undefined ? options[0].value : spec.default;
  if (!segmented) {
    const select = h(
      "select",
      { id: `input-${name}`, name, "aria-describedby": `error-${name}` },
      options.map((option, index) => h("option", { value: String(index) }, option.text)),
    );
    const element = fieldShell(name, spec, select, { hint: spec.description });
    const widget = {
      name,
      element,
      focus: () => select.focus(),
      read: () => options[Number(select.value)]?.value ?? undefined,
      write: (value) => {
        const index = options.findIndex((option) => option.value === (value ?? null));
        select.value = String(Math.max(0, index));
      },
    };
    widget.write(initial);
    return widget;
  }
  const group = h("div", { class: "segmented", role: "radiogroup", id: `input-${name}`, "aria-describedby": `error-${name}` });
  const radios = options.map((option, index) => {
    const radio = h("input", { type: "radio", name, value: String(index), id: `input-${name}-${index}` });
    group.append(radio, h("label", { for: `input-${name}-${index}` }, option.text));
    return radio;
  });
  const element = fieldShell(name, spec, group);
  element.querySelector(".field-label").removeAttribute("for");
  const widget = {
    name,
    element,
    focus: () => radios.find((radio) => radio.checked)?.focus(),
    read: () => {
      const checked = radios.find((radio) => radio.checked);
      return checked ? (options[Number(checked.value)].value ?? undefined) : undefined;
    },
    write: (value) => {
      const index = options.findIndex((option) => option.value === (value ?? null));
      radios[Math.max(0, index)].checked = true;
    },
  };
  widget.write(initial);
  return widget;
}

function imageWidget(name, spec, api, onChange) {
  let state = { kind: "none" }; // or {kind: "upload", promise, fileId} | {kind: "value", value}
  const preview = h("img", { class: "preview", alt: "Reference image preview", hidden: true });
  const status = h("p", { class: "image-status", "aria-live": "polite" });
  const file = h("input", { type: "file", accept: IMAGE_TYPES, hidden: true, id: `file-${name}`, "data-testid": `file-${name}` });
  const choose = h("button", { type: "button", class: "link", onclick: () => file.click() }, "choose a file");
  const remove = h("button", { type: "button", class: "ghost small", hidden: true, onclick: () => clear() }, "Remove");
  const url = h("input", {
    id: `input-${name}`,
    type: "text",
    inputmode: "url",
    placeholder: "…or an https:// image URL",
    "aria-describedby": `error-${name}`,
  });
  const zone = h(
    "div",
    { class: "dropzone", tabindex: "0", role: "button", "aria-label": "Reference image: drop a file or press to choose" },
    preview,
    h("div", { class: "drop-hint" }, "Drop an image here or ", choose, h("br"), h("small", {}, "PNG, JPEG, WebP, GIF or BMP; optional first frame")),
    status,
    remove,
    file,
  );
  let objectUrl = null;
  const showPreview = (src) => {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = src && src.startsWith("blob:") ? src : null;
    preview.hidden = !src;
    if (src) preview.src = src;
    else preview.removeAttribute("src");
    zone.classList.toggle("has-image", Boolean(src));
    remove.hidden = !src && state.kind === "none";
  };
  const element = fieldShell(name, spec, h("div", { class: "image-input" }, zone, url), { wide: true });
  const clear = () => {
    state = { kind: "none" };
    file.value = "";
    status.textContent = "";
    element.errorElement.textContent = "";
    showPreview(null);
    onChange();
  };
  const take = (chosen) => {
    if (!chosen) return;
    url.value = "";
    element.errorElement.textContent = "";
    showPreview(URL.createObjectURL(chosen));
    status.textContent = `Uploading ${chosen.name}…`;
    const upload = { kind: "upload", fileId: null, promise: null };
    upload.promise = api.upload(chosen).then(
      (stored) => {
        upload.fileId = stored.id;
        if (state === upload) status.textContent = `Uploaded ${chosen.name} (${stored.id})`;
        return stored.id;
      },
      (error) => {
        if (state === upload) {
          status.textContent = "";
          element.errorElement.textContent = `Upload failed: ${error.message}`;
          element.classList.add("invalid");
        }
        throw error;
      },
    );
    upload.promise.catch(() => {}); // reported above; Generate awaits it again
    state = upload;
    remove.hidden = false;
    onChange();
  };
  file.addEventListener("change", () => take(file.files[0]));
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      file.click();
    }
  });
  zone.addEventListener("click", (event) => {
    if (event.target === zone || event.target === preview) file.click();
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    take(event.dataTransfer?.files?.[0]);
  });
  url.addEventListener("input", () => {
    if (url.value.trim() && state.kind !== "value") {
      state = { kind: "none" };
      showPreview(null);
      status.textContent = "";
    }
  });
  return {
    name,
    element,
    focus: () => url.focus(),
    read: () => {
      if (state.kind === "upload") return state.fileId ?? undefined;
      if (state.kind === "value") return state.value;
      return url.value.trim() || undefined;
    },
    write: (value) => {
      clear();
      if (!value) return;
      if (typeof value === "string" && value.startsWith("file_")) {
        state = { kind: "value", value };
        status.textContent = `Uploaded image (${value})`;
        remove.hidden = false;
        api.file(value).then((stored) => state.value === value && showPreview(stored.url), () => {});
      } else if (typeof value === "string" && value.startsWith("data:image/")) {
        state = { kind: "value", value };
        status.textContent = "Inline image (data: URI)";
        showPreview(value);
      } else {
        url.value = String(value);
      }
    },
    /** Resolves once an upload in flight has finished (Generate waits for it). */
    pending: () => (state.kind === "upload" ? state.promise : Promise.resolve()),
  };
}

function widgetFor(name, spec, required, { app, api, onChange, main }) {
  const type = spec.type;
  if (type === "string" && /(^|_)image$/.test(name) && !spec.enum) return imageWidget(name, spec, api, onChange);
  if (Array.isArray(spec.enum)) {
    const autoLabel = name === "aspect_ratio" ? "Auto" : "Default";
    return choiceWidget(name, spec, { segmented: main && spec.enum.length <= 4, autoLabel });
  }
  if (type === "boolean") return switchWidget(name, spec);
  if (name === "duration" && type === "number") return durationWidget(name, spec, app.fps);
  if (type === "number" || type === "integer") return numberWidget(name, spec, required);
  const multiline = name.endsWith("prompt") || (spec.maxLength ?? 0) > 200;
  return textWidget(name, spec, required, multiline);
}

/**
 * The form for an app. Returns {element, widgets, values(), write(input), showErrors(details), clearErrors(),
 * pending(), settings()}; onChange runs after any edit (the price updates from it).
 */
export function buildForm(app, { api, onChange }) {
  const schema = app.input_schema || {};
  const properties = schema.properties || {};
  const required = new Set(schema.required || []);
  const names = Object.keys(properties);
  const ordered = [...MAIN_FIELDS.filter((name) => name in properties), ...names.filter((name) => !MAIN_FIELDS.includes(name))];
  const widgets = new Map();
  const main = h("div", { class: "fields" });
  const advancedFields = h("div", { class: "fields" });
  for (const name of ordered) {
    const spec = resolveProperty(schema, properties[name]);
    const isMain = MAIN_FIELDS.includes(name);
    const widget = widgetFor(name, spec, required.has(name), { app, api, onChange, main: isMain });
    widgets.set(name, widget);
    (isMain ? main : advancedFields).append(widget.element);
  }
  const advanced = advancedFields.childElementCount
    ? h("details", { class: "advanced" }, h("summary", {}, "Advanced"), advancedFields)
    : null;
  const element = h("div", { class: "run-fields" }, main, advanced);
  element.addEventListener("input", onChange);
  element.addEventListener("change", onChange);

  const values = () => {
    const input = {};
    for (const [name, widget] of widgets) {
      const value = widget.read();
      if (value !== undefined) input[name] = value;
    }
    return input;
  };
  const clearErrors = () => {
    for (const widget of widgets.values()) {
      widget.element.classList.remove("invalid");
      widget.element.errorElement.textContent = "";
    }
  };
  /** Put each 422 detail under its field; returns the messages no field took. */
  const showErrors = (details) => {
    clearErrors();
    const unplaced = [];
    let first = null;
    for (const item of Array.isArray(details) ? details : []) {
      const name = String(item.field || "").split(".")[0];
      const widget = widgets.get(name);
      const message = item.message || item.msg || "invalid";
      if (!widget) {
        unplaced.push(`${item.field}: ${message}`);
        continue;
      }
      widget.element.classList.add("invalid");
      const previous = widget.element.errorElement.textContent;
      widget.element.errorElement.textContent = previous ? `${previous}; ${message}` : message;
      if (advanced && advanced.contains(widget.element)) advanced.open = true;
      first = first || widget;
    }
    first?.focus();
    return unplaced;
  };
  const write = (input) => {
    for (const [name, widget] of widgets) {
      const spec = resolveProperty(schema, properties[name]);
      widget.write(name in input ? input[name] : spec.default);
    }
    if (advanced && Object.keys(input).some((name) => advancedFields.contains(widgets.get(name)?.element))) {
      advanced.open = true;
    }
    onChange();
  };
  const pending = () => Promise.all([...widgets.values()].map((widget) => (widget.pending ? widget.pending() : null)));
  const settings = () => {
    const input = values();
    const durationSpec = properties.duration ? resolveProperty(schema, properties.duration) : {};
    return {
      resolution: input.resolution ?? resolveProperty(schema, properties.resolution || {}).default ?? "720p",
      aspectRatio: input.aspect_ratio ?? null,
      generateAudio: input.generate_audio === true,
      duration: input.duration ?? durationSpec.default,
      minDuration: durationSpec.minimum,
      maxDuration: durationSpec.maximum,
    };
  };
  return { element, widgets, values, write, showErrors, clearErrors, pending, settings };
}

/** A short one-line summary of an input for lists: "720p · 1:1 · 0.5 s · audio". */
export function describeInput(input) {
  const parts = [input.resolution || "720p"];
  if (input.aspect_ratio) parts.push(input.aspect_ratio);
  if (input.duration !== undefined) parts.push(`${input.duration} s`);
  if (input.generate_audio) parts.push("audio");
  if (input.image) parts.push("image");
  return parts.join(" · ");
}
