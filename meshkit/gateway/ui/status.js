// The live status panel, computed here from the gateway's own GET /metrics text
// (Prometheus exposition format): the same numbers a scraper sees.

import { getText } from "./api.js";

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** Parse exposition text into samples `{name, labels, value}`. */
export function parse(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = LINE.exec(line.trim());
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(LABEL)) {
      labels[k] = v.replace(/\\n/g, "\n").replace(/\\(.)/g, "$1");
    }
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

function sum(samples, name, keep = () => true) {
  let total = 0;
  for (const s of samples) if (s.name === name && keep(s.labels)) total += s.value;
  return total;
}

/** The q-quantile of a cumulative histogram, interpolated within its bucket. */
export function quantile(q, samples, name) {
  const byLe = new Map();
  for (const s of samples) {
    if (s.name !== `${name}_bucket`) continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  const buckets = [...byLe].sort((a, b) => a[0] - b[0]);
  if (!buckets.length) return null;
  const count = buckets[buckets.length - 1][1];
  if (!count) return null;
  const rank = q * count;
  let lower = 0;
  let below = 0;
  for (const [le, cumulative] of buckets) {
    if (cumulative >= rank) {
      if (le === Infinity) return lower; // beyond the last bound: its lower edge
      const inBucket = cumulative - below;
      return inBucket ? lower + ((le - lower) * (rank - below)) / inBucket : le;
    }
    lower = le;
    below = cumulative;
  }
  return lower;
}

// Output tokens: the type label is "completion" (or "output"); prompts are not generated.
const generated = (labels) => labels.type !== "prompt" && labels.type !== "input";

/** What the panel shows, from this scrape and the previous one (for rates). */
export function summarise(samples, previous, seconds) {
  const total = sum(samples, "meshkit_requests_total");
  const tokens = sum(samples, "meshkit_tokens_total", generated);
  const rate = (now, before) => (previous && seconds > 0 ? Math.max(0, now - before) / seconds : null);
  return {
    in_flight: sum(samples, "meshkit_requests_in_flight"),
    total,
    tokens,
    rate: rate(total, previous?.total),
    errors: sum(samples, "meshkit_requests_total", (l) => Number(l.code) >= 400),
    ttft_p50: quantile(0.5, samples, "meshkit_time_to_first_token_seconds"),
    ttft_p99: quantile(0.99, samples, "meshkit_time_to_first_token_seconds"),
    tokens_rate: rate(tokens, previous?.tokens),
    replicas: samples
      .filter((s) => s.name === "meshkit_upstream_up")
      .map((s) => ({ service: s.labels.service || "", replica: s.labels.replica || "", up: s.value >= 1 })),
  };
}

const secs = (v) => (v === null ? "–" : v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(2)} s`);
const perSec = (v) => (v === null ? "–" : v.toFixed(v < 10 ? 1 : 0));

/** Poll /metrics every `interval` ms and keep `panel` up to date; returns a stopper. */
export function watch(panel, { interval = 1000, onUnauthorized = () => {} } = {}) {
  const dd = (name) => panel.querySelector(`[data-stat="${name}"]`);
  const state = document.getElementById("metrics-state");
  const replicas = document.getElementById("replicas");
  let previous = null;
  let timer = null;
  let stopped = false;

  function off(reason) {
    state.textContent = reason;
    panel.dataset.metrics = "off";
    for (const d of panel.querySelectorAll("[data-stat]")) d.textContent = "off";
    replicas.replaceChildren();
  }

  function show(s) {
    state.textContent = "live";
    panel.dataset.metrics = "on";
    dd("in_flight").textContent = String(s.in_flight);
    dd("rate").textContent = perSec(s.rate);
    dd("errors").textContent = String(s.errors);
    dd("ttft_p50").textContent = secs(s.ttft_p50);
    dd("ttft_p99").textContent = secs(s.ttft_p99);
    dd("tokens").textContent = perSec(s.tokens_rate);
    replicas.replaceChildren(
      ...s.replicas.map((r) => {
        const li = document.createElement("li");
        li.className = r.up ? "up" : "out";
        li.textContent = `${r.service} ${r.replica}: ${r.up ? "up" : "out"}`;
        return li;
      }),
    );
  }

  async function tick() {
    if (stopped) return;
    try {
      const text = await getText("/metrics");
      if (text === null) {
        off("metrics off (this gateway serves no /metrics)");
      } else {
        const now = performance.now();
        const samples = parse(text);
        const s = summarise(samples, previous, previous ? (now - previous.at) / 1000 : 0);
        previous = { at: now, total: s.total, tokens: s.tokens };
        show(s);
      }
    } catch (err) {
      if (err.status === 401) {
        onUnauthorized();
        return; // resumed by the caller once a key is given
      }
      off(`metrics off (${err.message})`);
    }
    if (!stopped) timer = setTimeout(tick, interval);
  }

  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
