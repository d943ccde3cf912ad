// The public /v1 API from the browser: every call carries the key in the Authorization header (never in a
// URL), errors become ApiError from the {"error": {...}} body, and task events are read as SSE over fetch()
// because EventSource cannot send headers.

/** An error answer from the API, or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, code, message, { details = null, retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
    this.retryAfter = retryAfter;
  }
}

/** Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or null. */
export function retryAfterSeconds(value, now = Date.now()) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - now) / 1000));
}

async function errorFrom(response) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText || "error"}`;
  let details = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      details = body.error.details ?? null;
    }
  } catch {
    // not JSON (a proxy's error page): keep the status line
  }
  return new ApiError(response.status, code, message, {
    details,
    retryAfter: retryAfterSeconds(response.headers.get("Retry-After")),
  });
}

/** Parse an SSE byte stream into {id, event, data} objects (the WHATWG event-stream format). */
export async function* parseEventStream(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let fields = { data: [], event: "", id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // A trailing "\r" may be half of "\r\n": keep it for the next chunk.
      const lines = buffer.split(/\r\n|\r(?!$)|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (fields.data.length) {
            yield { id: fields.id, event: fields.event || "message", data: fields.data.join("\n") };
          }
          fields = { data: [], event: "", id: null };
          continue;
        }
        if (line.startsWith(":")) continue; // comment / keep-alive ping
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (name === "data") fields.data.push(value);
        else if (name === "event") fields.event = value;
        else if (name === "id") fields.id = value;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/** A client for one API key. Paths are relative so the page also works behind a path-prefix proxy. */
export class Api {
  constructor(key) {
    this.key = key;
    this.clockSkew = 0; // ms to add to a server timestamp to get this browser's clock
  }

  async fetch(method, path, { json, body, headers = {}, signal } = {}) {
    const init = { method, headers: { Authorization: `Bearer ${this.key}`, ...headers }, signal };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (body !== undefined) {
      init.body = body;
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "network_error", "Cannot reach the kinema server. Is `kinema serve` running?");
    }
    this.noteClock(response.headers.get("Date"));
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  /** Only a clearly different clock counts: the Date header has a one-second resolution. */
  noteClock(date) {
    const server = Date.parse(date || "");
    if (Number.isNaN(server)) return;
    const skew = Date.now() - server;
    this.clockSkew = Math.abs(skew) > 2000 ? skew : 0;
  }

  async json(method, path, options) {
    const response = await this.fetch(method, path, options);
    return response.json();
  }

  apps(options) {
    return this.json("GET", "v1/apps", options);
  }

  app(id, options) {
    return this.json("GET", `v1/apps/${id}`, options);
  }

  submit(appId, input, options) {
    return this.json("POST", `v1/apps/${appId}/run?wait=false`, { ...options, json: input });
  }

  task(id, options) {
    return this.json("GET", `v1/tasks/${encodeURIComponent(id)}`, options);
  }

  tasks({ limit = 20, cursor = null, signal } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (cursor) query.set("cursor", cursor);
    return this.json("GET", `v1/tasks?${query}`, { signal });
  }

  cancel(id, options) {
    return this.json("POST", `v1/tasks/${encodeURIComponent(id)}/cancel`, options);
  }

  file(id, options) {
    return this.json("GET", `v1/files/${encodeURIComponent(id)}`, options);
  }

  upload(file, options) {
    const form = new FormData();
    form.append("file", file, file.name || "image");
    return this.json("POST", "v1/files", { ...options, body: form });
  }

  /** The task's events once, from after lastEventId; ends when the server closes the stream. */
  async *events(id, { lastEventId = null, signal } = {}) {
    const headers = { Accept: "text/event-stream" };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    const response = await this.fetch("GET", `v1/tasks/${encodeURIComponent(id)}/events`, { headers, signal });
    yield* parseEventStream(response.body);
  }
}
