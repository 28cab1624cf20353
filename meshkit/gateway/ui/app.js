// The playground: pick a route and model, chat through the gateway's OpenAI endpoint
// (streamed, stoppable), see the pipeline's graph and the path each answer took.

import { HttpError, getJSON, getKey, setKey, streamChat } from "./api.js";
import { draw, mark } from "./graph.js";
import { watch } from "./status.js";

const $ = (id) => document.getElementById(id);
const ui = {
  route: $("route"), model: $("model"), conn: $("conn"), main: $("main"),
  keyform: $("keyform"), key: $("key"), keyprompt: $("keyprompt"), keyerror: $("keyerror"),
  log: $("log"), composer: $("composer"), message: $("message"),
  send: $("send"), stop: $("stop"), clear: $("clear"),
  system: $("system"), temperature: $("temperature"), maxTokens: $("max_tokens"),
  graph: $("graph"), timing: $("timing"), status: $("status"),
};

const state = {
  catalogue: null, // GET /ui/api/graph
  routes: [], // the OpenAI routes: what the page can chat with
  messages: [], // the conversation so far (user and assistant turns)
  controller: null, // AbortController of the request in flight
  svg: null,
  stopWatching: null,
};

function route() {
  return state.routes[Number(ui.route.value)] || null;
}

function pipeline() {
  const r = route();
  return r ? state.catalogue.pipelines[r.pipeline] : null;
}

// -- key ---------------------------------------------------------------------------------

function askForKey(refused) {
  state.stopWatching?.();
  state.stopWatching = null;
  ui.keyform.hidden = false;
  ui.main.hidden = true;
  ui.conn.textContent = "locked";
  if (refused && getKey()) {
    ui.keyerror.textContent = `Wrong key: the gateway refused it (${refused}).`;
  } else {
    ui.keyerror.textContent = "";
  }
  ui.key.value = "";
  ui.key.focus();
}

ui.keyform.addEventListener("submit", (event) => {
  event.preventDefault();
  setKey(ui.key.value.trim());
  start();
});

// -- routes, models, graph ---------------------------------------------------------------

async function start() {
  ui.conn.textContent = "connecting…";
  try {
    state.catalogue = await getJSON("/ui/api/graph");
  } catch (err) {
    if (err instanceof HttpError && err.status === 401) return askForKey(err.message);
    ui.conn.textContent = `gateway unreachable: ${err.message}`;
    return;
  }
  ui.keyform.hidden = true;
  ui.main.hidden = false;
  ui.conn.textContent = getKey() ? "key accepted" : "";
  state.routes = state.catalogue.routes.filter((r) => r.dialect === "openai");
  ui.route.replaceChildren(
    ...state.routes.map((r, i) => new Option(`${r.pipeline} (${r.prefix || "/"})`, String(i))),
  );
  if (!state.routes.length) ui.conn.textContent = "no OpenAI route to chat with";
  await selectRoute();
  state.stopWatching?.();
  state.stopWatching = watch(ui.status, { onUnauthorized: () => askForKey("401") });
}

async function selectRoute() {
  const r = route();
  const p = pipeline();
  state.svg = p ? draw(ui.graph, p) : null;
  ui.timing.textContent = "";
  ui.model.replaceChildren();
  if (!r) return;
  let names = [];
  try {
    const listed = await getJSON(`${r.prefix}/v1/models`);
    names = listed.data.map((m) => m.id);
  } catch (err) {
    if (err instanceof HttpError && err.status === 401) return askForKey(err.message);
    ui.conn.textContent = `models unavailable: ${err.message}`;
  }
  if (r.model && !names.includes(r.model)) names.unshift(r.model);
  ui.model.replaceChildren(...names.map((n) => new Option(n, n)));
  if (r.model) ui.model.value = r.model;
}

ui.route.addEventListener("change", selectRoute);

// -- the conversation --------------------------------------------------------------------

function turn(role) {
  const div = document.createElement("div");
  div.className = `turn ${role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  div.append(who);
  ui.log.append(div);
  return div;
}

function block(parent, className, label) {
  const details = document.createElement("details");
  details.className = className;
  details.open = true;
  const summary = document.createElement("summary");
  summary.textContent = label;
  const body = document.createElement("pre");
  details.append(summary, body);
  parent.insertBefore(details, parent.querySelector(".answer"));
  return body;
}

function request(model) {
  const messages = [];
  const system = ui.system.value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.messages);
  const body = { model, messages, stream_options: { include_usage: true } };
  if (ui.temperature.value !== "") body.temperature = Number(ui.temperature.value);
  if (ui.maxTokens.value !== "") body.max_tokens = Number(ui.maxTokens.value);
  return body;
}

function busy(on) {
  ui.send.disabled = on;
  ui.stop.disabled = !on;
  ui.route.disabled = on;
}

async function send() {
  const text = ui.message.value.trim();
  const r = route();
  if (!text || !r || state.controller) return;
  ui.message.value = "";
  state.messages.push({ role: "user", content: text });
  const user = turn("user");
  user.append(Object.assign(document.createElement("div"), { className: "text", textContent: text }));
  const reply = turn("assistant");
  const answer = Object.assign(document.createElement("div"), { className: "answer" });
  reply.append(answer);
  reply.dataset.state = "streaming";
  let reasoning = null;
  let tools = null;
  const calls = [];
  let report = null;
  let usage = null;
  let chunks = 0;
  let first = null;
  const began = performance.now();
  const p = pipeline();
  if (state.svg) mark(state.svg, p, null);

  const onEvent = (event) => {
    if (event.meshkit) report = event.meshkit;
    if (event.usage) usage = event.usage;
    const delta = event.choices && event.choices[0] && event.choices[0].delta;
    if (!delta) return;
    const thought = delta.reasoning_content ?? delta.reasoning;
    if (thought) {
      reasoning ||= block(reply, "reasoning", "Reasoning");
      reasoning.textContent += thought;
    }
    for (const piece of delta.tool_calls || []) {
      const call = (calls[piece.index ?? calls.length] ||= { id: "", name: "", arguments: "" });
      if (piece.id) call.id = piece.id;
      if (piece.function?.name) call.name += piece.function.name;
      if (piece.function?.arguments) call.arguments += piece.function.arguments;
      tools ||= block(reply, "tools", "Tool calls");
      tools.textContent = calls.map((c) => `${c.name}(${c.arguments})`).join("\n");
    }
    if (delta.content) {
      if (first === null) first = performance.now() - began;
      chunks += 1;
      answer.textContent += delta.content;
    }
  };

  state.controller = new AbortController();
  busy(true);
  let outcome = "done";
  try {
    await streamChat(`${r.prefix}/v1/chat/completions`, request(ui.model.value), onEvent,
      state.controller.signal);
  } catch (err) {
    if (err.name === "AbortError") {
      outcome = "stopped";
    } else {
      outcome = "error";
      const note = Object.assign(document.createElement("div"), {
        className: "error", textContent: err.message,
      });
      note.setAttribute("role", "alert");
      reply.append(note);
      if (err instanceof HttpError && err.status === 401) askForKey(err.message);
    }
  } finally {
    state.controller = null;
    busy(false);
  }
  reply.dataset.state = outcome;
  if (outcome === "stopped") {
    reply.append(Object.assign(document.createElement("div"), { className: "note", textContent: "stopped" }));
  }
  // What was shown is what the model said: keep it in the conversation, even if cut short.
  if (answer.textContent) state.messages.push({ role: "assistant", content: answer.textContent });
  else if (outcome !== "done") state.messages.pop();
  if (state.svg && outcome === "done") {
    mark(state.svg, p, report || (p.nodes.length === 1 ? { path: [p.nodes[0].name] } : null));
  }
  const total = performance.now() - began;
  const parts = [];
  if (first !== null) parts.push(`first token ${Math.round(first)} ms`);
  parts.push(`${outcome} after ${(total / 1000).toFixed(2)} s`, `${chunks} chunks`);
  if (usage) parts.push(`${usage.prompt_tokens} + ${usage.completion_tokens} tokens`);
  ui.timing.textContent = parts.join(" · ");
  ui.message.focus();
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});

ui.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});

ui.stop.addEventListener("click", () => state.controller?.abort());

ui.clear.addEventListener("click", () => {
  state.controller?.abort();
  state.messages = [];
  ui.log.replaceChildren();
  ui.timing.textContent = "";
  if (state.svg) mark(state.svg, pipeline(), null);
});

start();
