// Calls to the gateway the page came from, with the user's key as a bearer token.
// The key lives in this tab only (sessionStorage): it is never written into the page.

const KEY = "meshkit.key";

/** An answer the gateway refused; `status` 401 means the key is missing or wrong. */
export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// The message out of an error body in either dialect's shape, else the status line.
async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    const err = body.error;
    message = typeof err === "string" ? err : (err && err.message) || message;
  } catch {
    // not JSON: keep the status line
  }
  return new HttpError(response.status, message);
}

/** GET a JSON document; throws HttpError on any non-2xx answer. */
export async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** GET a text document; null when the gateway has no such endpoint (404). */
export async function getText(path) {
  const response = await fetch(path, { headers: headers() });
  if (response.status === 404) return null;
  if (!response.ok) throw await failure(response);
  return response.text();
}

/**
 * POST a streamed chat completion and hand each SSE event's JSON to `onEvent`.
 * Resolves when the stream ends with [DONE]; rejects with HttpError before the stream
 * starts, or with an Error carrying the in-stream error event's message after it; an
 * abort through `signal` rejects with an AbortError (and closes the connection, which
 * makes the gateway cancel the upstream call).
 */
export async function streamChat(path, body, onEvent, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") {
        await reader.cancel();
        return;
      }
      const event = JSON.parse(data);
      if (event.error) {
        const err = event.error;
        throw new Error(typeof err === "string" ? err : err.message || "stream failed");
      }
      onEvent(event);
    }
  }
  throw new Error("the stream ended without [DONE]: the answer may be cut short");
}
