// The USER dashboard: polls /api/state once a second and redraws; buttons POST commands.
// Hand-written, no framework, no build step. Text goes in with textContent only.
"use strict";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function ago(s) {
  if (s === null || s === undefined) return "-";
  if (s < 0) return "now";
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  return `${(s / 3600).toFixed(1)}h`;
}

function pct(x) { return x === null || x === undefined ? "-" : `${Math.round(100 * x)}%`; }
function num(x, d = 1) { return x === null || x === undefined ? "-" : Number(x).toFixed(d); }
function bytes(n) {
  if (!n) return "0";
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

async function sendCommand(robotId, command, button) {
  button.disabled = true;
  try {
    const res = await fetch("/api/command", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({robot_id: robotId, command: command,
                            reason: `${command} from the dashboard`}),
    });
    const body = await res.json();
    if (!res.ok) alert(`${command} ${robotId}: ${body.error}`);
  } catch (err) {
    alert(`${command} ${robotId}: ${err}`);
  } finally {
    button.disabled = false;
  }
}

// -- fleet --------------------------------------------------------------------------------

const rows = new Map();   // robot_id -> <tr>

function robotRow(r) {
  let tr = rows.get(r.robot_id);
  if (!tr) {
    tr = el("tr", {"data-robot": r.robot_id});
    for (let i = 0; i < 11; i++) tr.append(el("td"));
    const ops = tr.children[10];
    for (const [cmd, label] of [["pause", "pause"], ["resume", "resume"], ["estop", "E-STOP"]]) {
      const b = el("button", {"class": cmd === "estop" ? "estop" : "", "data-command": cmd,
                              "title": `${cmd} ${r.robot_id}`}, label);
      b.addEventListener("click", () => sendCommand(r.robot_id, cmd, b));
      ops.append(b);
    }
    tr.children[0].append(el("div", {"class": "nocam"}, "no camera"));
    rows.set(r.robot_id, tr);
  }
  const cells = tr.children;
  // Camera thumbnail: a new image only when a new frame arrived.
  if (r.frame) {
    let img = cells[0].querySelector("img");
    if (!img) {
      cells[0].textContent = "";
      img = el("img", {"class": "thumb", "alt": `${r.robot_id} ${r.frame.camera}`});
      cells[0].append(img);
    }
    if (img.dataset.seq !== String(r.frame.seq)) {
      img.dataset.seq = String(r.frame.seq);
      img.src = `/camera/${encodeURIComponent(r.robot_id)}.png?seq=${r.frame.seq}`;
      img.title = `${r.frame.camera}, frame ${r.frame.seq}`;
    }
  }
  cells[1].textContent = r.robot_id;
  cells[2].textContent = r.type;
  cells[3].textContent = r.site;
  cells[4].textContent = "";
  cells[4].append(el("span", {"class": `state state-${r.state}`, "data-state": r.state},
                     r.state + (r.silent ? " (silent)" : "")));
  cells[5].textContent = r.experiment || "-";
  cells[6].textContent = num(r.steps_per_s);
  cells[7].textContent = ago(r.last_heartbeat_s);
  cells[7].className = r.silent ? "silent" : "";
  cells[8].textContent = r.policy_version === null ? "-" : `v${r.policy_version}`;
  cells[9].textContent = bytes(r.spool_bytes) + (r.spool_full ? " FULL" : "")
    + (r.dead_letters ? ` · ${r.dead_letters} dlq` : "");
  return tr;
}

function drawFleet(robots) {
  const body = document.querySelector("#fleet tbody");
  const seen = new Set();
  robots.forEach((r, i) => {
    const tr = robotRow(r);
    seen.add(r.robot_id);
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  for (const [id, tr] of rows) if (!seen.has(id)) { tr.remove(); rows.delete(id); }
  document.getElementById("fleet-empty").hidden = robots.length > 0;
}

// -- learning curves ----------------------------------------------------------------------

function chart(curves, key, label) {
  const W = 420, H = 220, L = 44, R = 10, T = 12, B = 34;
  const series = curves.map(c => ({c, pts: c.points.filter(p =>
    p.env_steps !== null && p[key] !== null && p[key] !== undefined)}));
  const xmax = Math.max(1, ...series.flatMap(s => s.pts.map(p => p.env_steps)));
  const ys = series.flatMap(s => s.pts.map(p => p[key]));
  const ymax = key === "success_rate" ? 1 : Math.max(1e-9, ...ys);
  const ymin = key === "success_rate" ? 0 : Math.min(0, ...ys);
  const x = v => L + (W - L - R) * v / xmax;
  const y = v => H - B - (H - T - B) * (v - ymin) / ((ymax - ymin) || 1);
  const root = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`,
                           "class": `chart chart-${key}`});
  root.append(svg("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#888"}));
  root.append(svg("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#888"}));
  for (const f of [0, 0.5, 1]) {
    const v = ymin + f * (ymax - ymin);
    const t = svg("text", {x: L - 4, y: y(v) + 4, "text-anchor": "end", "font-size": 10});
    t.textContent = key === "success_rate" ? `${Math.round(100 * v)}%` : v.toPrecision(2);
    root.append(t);
  }
  const xl = svg("text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle",
                          "font-size": 11});
  xl.textContent = `env steps (max ${Math.round(xmax)}) — ${label}`;
  root.append(xl);
  series.forEach((s, i) => {
    if (!s.pts.length) return;
    const color = COLORS[i % COLORS.length];
    const points = s.pts.map(p => `${x(p.env_steps).toFixed(1)},${y(p[key]).toFixed(1)}`);
    if (points.length === 1) points.push(points[0]);
    root.append(svg("polyline", {points: points.join(" "), fill: "none", stroke: color,
                                 "stroke-width": 2, "class": "curve-line",
                                 "data-stream": s.c.stream}));
    const lg = svg("text", {x: L + 8, y: T + 12 + 13 * i, fill: color, "font-size": 11});
    lg.textContent = s.c.robot_type || s.c.stream;
    root.append(lg);
  });
  return root;
}

function drawExperiments(experiments) {
  const box = document.getElementById("experiments");
  box.textContent = "";
  const shown = experiments.filter(e => e.curves.length || ["running", "scheduled"].includes(e.state));
  if (!shown.length) { box.append(el("p", {"class": "muted"}, "no learner metrics yet")); return; }
  for (const e of shown) {
    const div = el("div", {"class": "experiment", "data-experiment": e.experiment_id},
                   el("h3", {}, `${e.experiment_id} `,
                      el("span", {"class": `state state-${e.state}`}, e.state),
                      el("span", {"class": "muted"}, `  robots: ${e.robots.join(", ") || "none"}`)));
    if (e.curves.length) {
      const row = el("div", {"class": "curves"});
      row.append(el("div", {"class": "curve"}, chart(e.curves, "success_rate", "success rate")));
      row.append(el("div", {"class": "curve"}, chart(e.curves, "critic_loss", "critic loss")));
      div.append(row);
    } else {
      div.append(el("p", {"class": "muted"}, "waiting for the learner's first metrics"));
    }
    box.append(div);
  }
}

// -- tables -------------------------------------------------------------------------------

function fill(selector, rowsData, cells) {
  const body = document.querySelector(`${selector} tbody`);
  body.textContent = "";
  for (const d of rowsData) body.append(el("tr", {}, ...cells(d).map(c => el("td", {}, c))));
}

function draw(s) {
  drawFleet(s.robots);
  drawExperiments(s.experiments);
  fill("#learners", s.learners, l => [l.stream, String(l.learner_step), `v${l.policy_version}`,
       num(l.updates_per_s), num(l.buffer, 0), num(l.version_lag), pct(l.success_rate),
       ago(l.last_metrics_s)]);
  fill("#lag", s.groups, g => [g.group, g.state, String(g.members), g.topics.join(", "),
       String(g.records), g.age]);
  fill("#tables", s.tables, t => [t.table, t.error ? t.error : String(t.version),
       t.committed_at ? ago(s.now - t.committed_at) + " ago" : "-"]);
  fill("#dlq", s.dlq, d => [d.source, String(d.count),
       d.latest.map(x => `${x.reason}: ${x.detail}`).join(" | ")]);
  const total = document.getElementById("dlq-total");
  total.textContent = String(s.dead_letters);
  total.className = s.dead_letters ? "badge bad" : "badge";
  const cmds = document.getElementById("commands");
  cmds.textContent = "";
  for (const c of s.commands) {
    cmds.append(el("li", {"data-command": c.command, "data-robot": c.robot_id},
                   `${ago(s.now - c.at)} ago: ${c.command} → ${c.robot_id} (${c.issued_by}: ${c.reason})`));
  }
  const errors = Object.entries(s.errors).map(([k, v]) => `${k}: ${v}`);
  document.getElementById("status").textContent = errors.length ? errors.join("; ")
    : (s.caught_up ? `live, ${new Date(s.now * 1000).toLocaleTimeString()}` : "catching up…");
  document.body.dataset.caughtUp = String(s.caught_up);
}

async function tick() {
  try {
    const res = await fetch("/api/state", {cache: "no-store"});
    if (res.ok) draw(await res.json());
    else document.getElementById("status").textContent = `state: HTTP ${res.status}`;
  } catch (err) {
    document.getElementById("status").textContent = `dashboard unreachable: ${err}`;
  }
  setTimeout(tick, 1000);
}

tick();
