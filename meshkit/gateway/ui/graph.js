// The pipeline as an SVG drawing: request → nodes in ranks → response, edges with their
// conditions, and after a request the path it took (taken nodes and edges marked,
// skipped nodes dimmed, each node's time).

const SVG = "http://www.w3.org/2000/svg";
const W = 116; // node box
const H = 46;
const GAP_X = 84;
const GAP_Y = 30; // leaves room for each node's time, written under it
const PAD = 16;
const ARC = 44; // height of the arc of an edge that skips ranks
const END = "\u00a0"; // names of the two virtual ends cannot clash with node names
const REQUEST = `${END}request`;
const RESPONSE = `${END}response`;

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

// Rank = longest distance from the request; nodes arrive in topological order.
function layout(pipeline) {
  const rank = new Map([[REQUEST, 0]]);
  const preds = new Map(pipeline.nodes.map((n) => [n.name, []]));
  for (const e of pipeline.edges) preds.get(e.to).push(e.from);
  for (const n of pipeline.nodes) {
    const from = preds.get(n.name);
    rank.set(n.name, from.length ? 1 + Math.max(...from.map((p) => rank.get(p))) : 1);
  }
  rank.set(RESPONSE, Math.max(...pipeline.nodes.map((n) => rank.get(n.name))) + 1);
  const columns = [];
  for (const [name, r] of rank) (columns[r] ||= []).push(name);
  const tallest = Math.max(...columns.map((c) => c.length));
  const long = pipeline.edges.some((e) => rank.get(e.to) - rank.get(e.from) > 1);
  const top = long ? ARC : 0; // room for the arcs of edges that skip ranks
  const height = tallest * H + (tallest - 1) * GAP_Y + 2 * PAD + top + 10;
  const pos = new Map();
  columns.forEach((names, r) => {
    const span = names.length * H + (names.length - 1) * GAP_Y;
    names.forEach((name, i) => {
      pos.set(name, {
        x: PAD + r * (W + GAP_X), y: top + (height - top - 10 - span) / 2 + i * (H + GAP_Y),
      });
    });
  });
  const width = 2 * PAD + columns.length * W + (columns.length - 1) * GAP_X;
  return { pos, rank, width, height };
}

// Side to side between neighbouring ranks; an edge that skips ranks arcs over the nodes
// between, from top to top, so it never runs through them. Returns the path and where
// its label goes.
function edgePath(a, b, span) {
  if (span <= 1) {
    const [x1, y1, x2, y2] = [a.x + W, a.y + H / 2, b.x, b.y + H / 2];
    const bend = (x2 - x1) / 2;
    return {
      d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
      x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6,
    };
  }
  const [x1, y1, x2, y2] = [a.x + W / 2 + 12, a.y, b.x + W / 2 - 12, b.y];
  const top = Math.min(y1, y2) - ARC - 8 * (span - 2);
  return {
    d: `M${x1},${y1} C${x1},${top} ${x2},${top} ${x2},${y2}`,
    x: (x1 + x2) / 2, y: Math.min(y1, y2) - ARC * 0.75 - 6 * (span - 2) - 4,
  };
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** Draw `pipeline` (from /ui/api/graph) into `container`; returns the drawing. */
export function draw(container, pipeline) {
  const { pos, rank, width, height } = layout(pipeline);
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `Pipeline ${pipeline.name}`,
    "data-pipeline": pipeline.name,
    class: "pipeline",
  });
  const defs = el("defs");
  const marker = el("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto",
  });
  marker.append(el("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }));
  defs.append(marker);
  svg.append(defs);

  const edges = [
    ...pipeline.nodes.filter((n) => n.entry).map((n) => ({ from: REQUEST, to: n.name, when: null })),
    ...pipeline.edges,
    { from: pipeline.sink, to: RESPONSE, when: null },
  ];
  for (const e of edges) {
    const kind = e.from === REQUEST ? "in" : e.to === RESPONSE ? "out" : "inner";
    const g = el("g", { class: "edge", "data-kind": kind, "data-from": e.from, "data-to": e.to });
    const a = pos.get(e.from);
    const b = pos.get(e.to);
    const span = rank.get(e.to) - rank.get(e.from);
    const line = edgePath(a, b, span);
    g.append(el("path", { d: line.d, "marker-end": "url(#arrow)" }));
    if (e.when) {
      g.append(el("title", {}, `when ${e.when}`));
      g.append(el("text", { x: line.x, y: line.y, class: "cond", "text-anchor": "middle" },
        clip(e.when, span > 1 ? 40 : 16)));
    }
    svg.append(g);
  }
  for (const end of [REQUEST, RESPONSE]) {
    const p = pos.get(end);
    const g = el("g", { class: "end" });
    g.append(el("rect", { x: p.x, y: p.y + 6, width: W, height: H - 12, rx: 17 }));
    g.append(el("text", { x: p.x + W / 2, y: p.y + H / 2 + 4, "text-anchor": "middle" }, end.trim()));
    svg.append(g);
  }
  for (const n of pipeline.nodes) {
    const p = pos.get(n.name);
    const g = el("g", {
      class: `node${n.optional ? " optional" : ""}`, "data-node": n.name, "data-state": "idle",
    });
    g.append(el("title", {}, `${n.name} (${n.type})${n.optional ? ", optional" : ""}`));
    g.append(el("rect", { x: p.x, y: p.y, width: W, height: H, rx: 8 }));
    g.append(el("text", { x: p.x + W / 2, y: p.y + 19, "text-anchor": "middle", class: "name" },
      clip(n.name, 16)));
    g.append(el("text", { x: p.x + W / 2, y: p.y + 36, "text-anchor": "middle", class: "type" },
      n.type));
    svg.append(g);
  }
  container.replaceChildren(svg);
  return svg;
}

function fmtMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

/**
 * Mark what the last request did: `report` is the answer's `meshkit` field (path,
 * skipped, failed, edges, node_ms), or for a one-node pipeline (which sends none)
 * `{path: [node]}`; null clears the marks.
 */
export function mark(svg, pipeline, report) {
  const path = new Set(report ? report.path || [] : []);
  const skipped = new Set(report ? report.skipped || [] : []);
  const failed = report ? report.failed || {} : {};
  const times = report ? report.node_ms || {} : {};
  for (const g of svg.querySelectorAll("g.node")) {
    const name = g.dataset.node;
    let state = "idle";
    if (name in failed) state = "failed";
    else if (skipped.has(name)) state = "skipped";
    else if (path.has(name)) state = "taken";
    g.dataset.state = state;
    g.querySelector("text.ms")?.remove();
    const title = g.querySelector("title");
    const base = title.textContent.split(" — ")[0];
    title.textContent = state === "idle" ? base : `${base} — ${state}`;
    if (name in times) {
      const box = g.querySelector("rect");
      const x = Number(box.getAttribute("x")) + W / 2;
      const y = Number(box.getAttribute("y")) + H + 14;
      g.append(el("text", { x, y, "text-anchor": "middle", class: "ms" }, fmtMs(times[name])));
      title.textContent += `, ${fmtMs(times[name])} until its output was ready`;
    }
  }
  // Edges taken: as reported, else (one-node pipelines) every edge along the path.
  const taken = new Set((report && report.edges ? report.edges : []).map(([a, b]) => `${a}>${b}`));
  const guess = !(report && report.edges);
  const entries = new Set(pipeline.nodes.filter((n) => n.entry).map((n) => n.name));
  for (const g of svg.querySelectorAll("g.edge")) {
    const { kind, from, to } = g.dataset;
    let on;
    if (kind === "in") on = path.has(to) && entries.has(to);
    else if (kind === "out") on = path.has(from);
    else on = guess ? path.has(from) && path.has(to) : taken.has(`${from}>${to}`);
    g.classList.toggle("taken", Boolean(on));
  }
  const ran = [...path].join(" → ");
  const label = [`Pipeline ${pipeline.name}`];
  if (ran) label.push(`last request took ${ran}`);
  if (skipped.size) label.push(`skipped ${[...skipped].join(", ")}`);
  svg.setAttribute("aria-label", label.join("; "));
}
