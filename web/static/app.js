// The live page: a grid of every camera with its state and a thumbnail, an "add camera" form, the selected
// camera's video with boxes and groups coloured by risk, the alert feed (live, then older pages from the REST
// history) with crop snapshots, and the key pool. One WebSocket to /ws, REST under /api; reconnects by itself.
// The traffic-safety layer: the camera's zones and masks drawn over the video, speeds once calibrated, conflicts
// (TTC/PET) on the groups, the incidents panel (REST history merged with live `incident` events) and editors for
// zones, the ground calibration rectangle and the camera's context.
// The Reports view (a tab): incident counts as an SVG chart, a camera's near-miss heat map, the safety ranking, CSV.
const $ = (id) => document.getElementById(id);
const COLORS = { none: "#4caf50", low: "#cddc39", medium: "#ff9800", high: "#f44336" };
const RANK = { none: 0, low: 1, medium: 2, high: 3 };

// With TC_API_TOKEN set on the server, the API answers 401 until the browser has the session cookie: the page
// then shows a login form that POSTs the token to /api/login, which sets the (HttpOnly) cookie. The token is
// never stored by the page nor put in a URL: REST, snapshots and the WebSocket carry the cookie. An old bookmark
// /?token=... is logged in with once, and the token is taken out of the address bar first.
const params = new URLSearchParams(location.search);
const bookmarkToken = params.get("token");
if (bookmarkToken !== null) {
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.toString() ? `?${params}` : "") + location.hash);
}
const autostart = params.get("autostart") !== "0";   // the demo starts the sample video when nothing runs

const cameras = new Map();     // cameraId -> {info, card, canvas}
const groupRisk = new Map();   // `${cameraId}/${groupId}` -> riskLevel, from assessments
const seenTasks = new Set();   // an assessment is identified by its task id: show each once
let selected = null, ws = null, retry = 500, sampleVideo = "", olderCursor = null, frames = 0, lastFrameAt = 0;
let reconnectTimer = null, historyRun = 0;
let drawing = null;   // {mode: "zone"|"calib", points: [[fx, fy], ...]} while drawing on the live canvas
let live = null;      // {d, img}: the selected camera's last frame, to repaint the overlays between frames
const incidents = new Map();   // incidentId -> incident, the panel's (selected camera's, or all when none)
let incidentRun = 0, incidentCursor = null, shownGeometry = "", shownContext = null;

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function api(method, path, body) {
  const res = await fetch(path, {
    method, headers: body ? { "Content-Type": "application/json" } : {}, credentials: "same-origin",
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = res.status === 204 ? null : await res.json().catch(() => ({ error: res.statusText }));
  if (res.status === 401 && path !== "/api/login") showLogin();
  if (!res.ok) throw Object.assign(new Error(data?.error || res.statusText), { field: data?.field, status: res.status });
  return data;
}

// --- login (only with TC_API_TOKEN set on the server) ---------------------------------------------------------
function showLogin() {
  if (!$("login").hidden) return;
  $("login").hidden = false;
  $("login-token").focus();
}

async function login(tokenValue) {
  await api("POST", "/api/login", { token: tokenValue });   // 204 + the session cookie, or 401 "wrong token"
  $("login").hidden = true;
  $("login-error").textContent = "";
  await Promise.all([refreshCameras(), refreshKeys()]);
  if (!ws || ws.readyState !== WebSocket.OPEN) { clearTimeout(reconnectTimer); retry = 500; connect(); }
}

function send(type, data = {}) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type, data }));
}

function connect() {
  if (ws && ws.readyState <= WebSocket.OPEN) return;   // connecting or open already
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws = socket;
  socket.onopen = () => { retry = 500; setConn(true); };
  socket.onclose = () => {
    if (ws !== socket) return;
    setConn(false);
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connect, retry);
    retry = Math.min(retry * 2, 8000);
  };
  socket.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    HANDLERS[msg.type]?.(msg.data || {});
  };
}

function setConn(on) {
  $("conn").textContent = on ? "connected" : "disconnected — retrying";
  $("conn").className = `pill ${on ? "on" : "off"}`;
}

const HANDLERS = {
  async connection_ack(data) {
    sampleVideo = data.sampleVideo || "";
    if (!$("camera-url").value) $("camera-url").value = sampleVideo;
    await refreshCameras();
    for (const id of cameras.keys()) send("subscribe", { cameraId: id });   // again after a reconnect
    if (autostart && cameras.size === 0 && sampleVideo) await addCamera("1", sampleVideo);
    if (selected === null) loadIncidents(true);   // no camera: every camera's incidents
  },
  camera_status(data) { updateCamera(data.cameraId, { state: data.state || (data.status ? "online" : "offline"),
                                                      message: data.message }); },
  stream_stopped(data) { updateCamera(data.cameraId, { state: "stopped", message: data.reason }); },
  detection_result: drawDetections,
  risk_assessment: (a) => addAssessment(a, true),
  error(data) { addError(data); },
  incident(data) { liveIncident(data); },
  subscribed() {}, unsubscribed() {}, pong() {},
};

// --- cameras ---------------------------------------------------------------------------------------------
async function refreshCameras() {
  let list;
  try { list = await api("GET", "/api/cameras"); } catch (e) { if (e.status !== 401) notice(e.message); return; }
  const ids = new Set(list.map((c) => c.cameraId));
  for (const id of [...cameras.keys()]) if (!ids.has(id)) { cameras.get(id).card.remove(); cameras.delete(id); }
  for (const info of list) updateCamera(info.cameraId, info);
  if (!selected && list.length) select(list[0].cameraId);
}

function updateCamera(id, info) {
  let cam = cameras.get(id);
  if (!cam) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.camera = id;
    card.innerHTML = `<canvas width="192" height="144"></canvas><div class="card-head"><b>${esc(id)}</b>
      <span class="state"></span></div><div class="msg"></div><div class="actions">
      <button data-act="start">Start</button><button data-act="stop">Stop</button>
      <button data-act="remove">Remove</button></div>`;
    card.addEventListener("click", (ev) => {
      const act = ev.target.dataset?.act;
      if (act) { ev.stopPropagation(); cameraAction(id, act); } else select(id);
    });
    $("grid").append(card);
    cam = { info: {}, card, canvas: card.querySelector("canvas") };
    cameras.set(id, cam);
    send("subscribe", { cameraId: id });
  }
  Object.assign(cam.info, info);
  const state = cam.info.state || "starting";
  cam.card.dataset.state = state;
  cam.card.querySelector(".state").textContent = state;
  cam.card.querySelector(".msg").textContent = cam.info.message || "";
  cam.card.classList.toggle("selected", id === selected);
  if (id === selected) {
    $("status").textContent = `${state} — ${cam.info.message || ""}`; $("status").dataset.state = state;
    showGeometry(cam.info);
  }
}

async function cameraAction(id, act) {
  try {
    if (act === "remove") {
      await api("DELETE", `/api/cameras/${encodeURIComponent(id)}`);
      if (selected === id) unselect();
    } else {
      updateCamera(id, await api("POST", `/api/cameras/${encodeURIComponent(id)}/${act}`));
    }
    await refreshCameras();
  } catch (e) { notice(e.message); }
}

async function addCamera(id, url, interval) {
  const body = { cameraId: /^\d+$/.test(id) ? Number(id) : id, url };
  if (interval) body.frameInterval = Number(interval);
  const info = await api("POST", "/api/cameras", body);
  updateCamera(info.cameraId, info);
  select(info.cameraId);
  return info;
}

function select(id) {
  const changed = id !== selected;
  selected = id;
  frames = 0; lastFrameAt = 0;
  $("live-title").textContent = `camera ${id}`;
  for (const [cid, cam] of cameras) cam.card.classList.toggle("selected", cid === id);
  if (changed) {
    clearAlerts();   // the feed is the selected camera's: not the previous one's plus this one's
    stopDrawing();
    live = null;
    shownGeometry = ""; shownContext = null;
    loadIncidents(true);
  }
  updateCamera(id, {});
  loadHistory(true);
  repaintLive();
}

function unselect() {
  selected = null;
  live = null; stopDrawing();
  $("live-title").textContent = "no camera selected";
  clearAlerts();
  loadIncidents(true);
}

// --- video ---------------------------------------------------------------------------------------------------
function paint(ctx, d, scale) {
  for (const g of d.trafficGroups || []) {
    const level = g.riskLevel || groupRisk.get(`${d.cameraId}/${g.groupId}`);   // undefined: not assessed
    const [x1, y1, x2, y2] = g.bbox.map((v) => v * scale);
    ctx.setLineDash([6, 4]); ctx.lineWidth = scale < 0.5 ? 2 : 3; ctx.strokeStyle = COLORS[level] || "#9e9e9e";
    ctx.strokeRect(x1 - 6 * scale, y1 - 6 * scale, x2 - x1 + 12 * scale, y2 - y1 + 12 * scale);
    ctx.setLineDash([]);
    if (scale >= 0.5) {
      ctx.fillStyle = ctx.strokeStyle; ctx.font = "bold 13px sans-serif";
      ctx.fillText(`${g.groupId} (${g.objectCount})${level ? ` ${level}` : ""}`, x1 - 6, y1 - 10);
    }
    const brief = conflictBrief(g.conflict);
    if (brief) {   // a conflict between the group's tracks: TTC (or PET) under the box, in its severity colour
      const y = y2 + 6 * scale + (scale >= 0.5 ? 16 : 9);
      ctx.font = scale >= 0.5 ? "bold 13px sans-serif" : "bold 9px sans-serif";
      const w = ctx.measureText(brief).width;
      ctx.fillStyle = "rgba(0,0,0,.65)"; ctx.fillRect(x1 - 6 * scale, y - (scale >= 0.5 ? 13 : 9), w + 6, scale >= 0.5 ? 17 : 11);
      ctx.fillStyle = COLORS[g.conflict.severity] || COLORS.medium;
      ctx.fillText(brief, x1 - 6 * scale + 3, y);
    }
  }
  for (const o of d.detectedObjects || []) {
    const [x1, y1, x2, y2] = o.bbox.map((v) => v * scale);
    const masked = o.masked === true;   // inside a mask: still sent, drawn greyed and dashed
    ctx.lineWidth = scale < 0.5 ? 1 : 2;
    ctx.strokeStyle = masked ? "rgba(158,158,158,.8)" : o.class === "person" ? "#29b6f6" : "#ffeb3b";
    if (masked) ctx.setLineDash([4, 3]);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.setLineDash([]);
    if (scale >= 0.5) {
      ctx.fillStyle = ctx.strokeStyle; ctx.font = "11px sans-serif";
      ctx.fillText(trackLabel(o, d), x1, y2 + 11);
    }
  }
}

const num = (v, digits = 1) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : null);

function trackLabel(o, d) {
  const id = o.trackId === null || o.trackId === undefined ? "" : ` #${o.trackId}`;
  const metric = d.units === "metric" || (d.units === undefined && d.calibrated);
  if (metric && num(o.speed, 0) !== null) return `${o.class}${id} · ${num(o.speed, 0)} km/h`;   // calibrated
  return `${o.class}${id} ${(o.confidence * 100).toFixed(0)}%${o.masked ? " · masked" : ""}`;
}

function conflictBrief(c) {
  if (!c) return "";
  if (num(c.ttc) !== null) return `TTC ${num(c.ttc)} s`;
  if (num(c.pet) !== null) return `PET ${num(c.pet)} s`;
  return c.conflictType ? String(c.conflictType).replace(/_/g, " ") : "conflict";
}

// The camera's zones and masks, in fractions of the frame: translucent fill, outline and name (masks grey, hatched
// and dashed). Under the boxes, on every frame, on the live canvas and (without names) on the thumbnails.
const ZONE_COLORS = ["#3d7bd9", "#ab47bc", "#26a69a", "#ec407a", "#ffa726", "#7e57c2"];

function polygon(points, W, H) {
  const p = new Path2D();
  points.forEach(([x, y], i) => (i ? p.lineTo(x * W, y * H) : p.moveTo(x * W, y * H)));
  p.closePath();
  return p;
}

function paintZones(ctx, info, W, H, big) {
  (info?.zones || []).forEach((z, i) => {
    if (!Array.isArray(z.points) || z.points.length < 2) return;
    const mask = z.kind === "mask", color = mask ? "#9e9e9e" : ZONE_COLORS[i % ZONE_COLORS.length];
    const p = polygon(z.points, W, H);
    ctx.save();
    ctx.fillStyle = mask ? "rgba(110,110,110,.35)" : `${color}2e`;
    ctx.fill(p);
    if (mask) {   // hatching, clipped to the polygon
      ctx.clip(p);
      ctx.strokeStyle = "rgba(200,200,200,.35)"; ctx.lineWidth = 1;
      ctx.beginPath();
      for (let x = -H; x < W; x += big ? 14 : 6) { ctx.moveTo(x, H); ctx.lineTo(x + H, 0); }
      ctx.stroke();
    }
    ctx.restore();
    ctx.setLineDash(mask ? [8, 5] : []); ctx.lineWidth = big ? 2 : 1; ctx.strokeStyle = color;
    ctx.stroke(p);
    ctx.setLineDash([]);
    if (big) {
      const cx = z.points.reduce((a, q) => a + q[0], 0) / z.points.length * W;
      const top = Math.min(...z.points.map((q) => q[1])) * H;
      const text = mask ? `${z.name} (mask)` : String(z.name);
      ctx.font = "bold 12px sans-serif";
      const w = ctx.measureText(text).width;
      const y = Math.max(14, top + 16);
      ctx.fillStyle = "rgba(0,0,0,.6)"; ctx.fillRect(cx - w / 2 - 3, y - 12, w + 6, 16);
      ctx.fillStyle = mask ? "#bdbdbd" : color; ctx.fillText(text, cx - w / 2, y);
    }
  });
}

// While editing: the points being drawn (dots and lines; numbered markers for the calibration), and the saved
// calibration rectangle while the editors are open.
function paintEditing(ctx, info, W, H) {
  const marker = (x, y, color, label) => {
    ctx.beginPath(); ctx.arc(x, y, label ? 9 : 5, 0, 2 * Math.PI);
    ctx.fillStyle = color; ctx.fill(); ctx.lineWidth = 2; ctx.strokeStyle = "#000"; ctx.stroke();
    if (label) { ctx.fillStyle = "#000"; ctx.font = "bold 12px sans-serif"; ctx.fillText(label, x - 3.5, y + 4.5); }
  };
  const shape = (points, color, closed, numbered, dash) => {
    if (!points.length) return;
    ctx.beginPath();
    points.forEach(([x, y], i) => (i ? ctx.lineTo(x * W, y * H) : ctx.moveTo(x * W, y * H)));
    ctx.setLineDash(dash); ctx.lineWidth = 2; ctx.strokeStyle = color; ctx.stroke();
    if (closed && points.length >= 3) {
      ctx.beginPath(); ctx.moveTo(...scaled(points.at(-1))); ctx.lineTo(...scaled(points[0]));
      ctx.setLineDash([5, 5]); ctx.stroke();
    }
    ctx.setLineDash([]);
    points.forEach((q, i) => marker(q[0] * W, q[1] * H, color, numbered ? String(i + 1) : ""));
  };
  const scaled = ([x, y]) => [x * W, y * H];
  if ($("editors").open && info?.calibration?.image && drawing?.mode !== "calib") {
    shape(info.calibration.image, "#00bcd4", true, true, [3, 3]);
  }
  if (drawing?.mode === "zone") shape(drawing.points, $("zone-kind").value === "mask" ? "#bdbdbd" : "#ffffff", true, false, []);
  if (drawing?.mode === "calib") shape(drawing.points, "#00e5ff", drawing.points.length === 4, true, []);
}

function drawDetections(d) {
  const cam = cameras.get(d.cameraId);
  if (!cam) return;
  const targets = [[cam.canvas, cam.canvas.width / d.imageWidth]];
  const big = $("frame");
  if (d.cameraId === selected) {
    if (big.width !== d.imageWidth) { big.width = d.imageWidth; big.height = d.imageHeight; }
    targets.push([big, 1]);
    frames += 1;
    const now = performance.now();
    const fps = lastFrameAt ? 1000 / (now - lastFrameAt) : 0;
    lastFrameAt = now;
    $("stats").textContent = `${d.detectedObjects.length} objects, ${d.trafficGroups.length} groups, ` +
      `${(d.processTime * 1000).toFixed(0)} ms analysis, ${fps.toFixed(1)} frames/s shown, ${frames} frames`;
  }
  const draw = (img) => {
    for (const [canvas, scale] of targets) {
      const big = canvas === $("frame");
      if (big) {
        if (d.cameraId !== selected) continue;   // the selection changed while the frame was decoding
        live = { d, img };
      }
      paintFrame(canvas, d, img, scale, big);
      canvas.dataset.boxes = String(d.detectedObjects.length);   // for tests and curious operators
    }
  };
  if (d.frame) {
    const img = new Image();
    img.onload = () => draw(img);
    img.src = `data:image/jpeg;base64,${d.frame}`;
  } else draw(null);
}

function paintFrame(canvas, d, img, scale, big) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  if (img) ctx.drawImage(img, 0, 0, W, H); else ctx.clearRect(0, 0, W, H);
  const info = cameras.get(d ? d.cameraId : selected)?.info;
  paintZones(ctx, info, W, H, big);
  if (d) paint(ctx, d, scale);
  if (big) paintEditing(ctx, info, W, H);
}

// Zones, calibration or the points being drawn changed: the live canvas again, on the last frame (or black)
function repaintLive() {
  if (selected === null) return;
  const l = live && live.d.cameraId === selected ? live : null;
  paintFrame($("frame"), l?.d, l?.img, 1, true);
}

// --- alerts --------------------------------------------------------------------------------------------------
function alertItem(a) {
  const li = document.createElement("li");
  li.className = `assessment ${a.riskLevel}`;
  li.dataset.task = a.taskId;
  li.dataset.cameraId = a.cameraId;
  const when = new Date(1000 * (a.assessedAt || a.frameTimestamp || Date.now() / 1000)).toLocaleTimeString();
  const delay = a.frameTimestamp && a.assessedAt ? ` · ${(a.assessedAt - a.frameTimestamp).toFixed(1)} s after the frame` : "";
  const snap = `/api/cameras/${encodeURIComponent(a.cameraId)}/alerts/${encodeURIComponent(a.taskId)}/snapshot.jpg`;   // the cookie authenticates it
  li.innerHTML = `<img class="thumb" alt="crop of group ${esc(a.groupId)}" loading="lazy" src="${esc(snap)}">
    <div><span class="level">${esc(a.riskLevel)}</span> camera ${esc(a.cameraId)} · group ${esc(a.groupId)}
    <div>${esc(a.description)}</div>
    <div class="meta">${esc((a.riskTypes || []).join(", ") || "—")} · conf ${(a.confidence * 100).toFixed(0)}% ·
      ${esc(a.llmModel)} via ${esc(a.apiKeyId)} · LLM ${(a.llmLatency * 1000).toFixed(0)} ms${delay} · ${when}</div></div>`;
  li.querySelector("img").onerror = (ev) => { ev.target.remove(); };
  return li;
}

function addAssessment(a, live) {
  const cam = cameras.get(a.cameraId);
  if (live) {
    groupRisk.set(`${a.cameraId}/${a.groupId}`, a.riskLevel);   // every camera's boxes and cards show it
    if (cam && RANK[a.riskLevel] >= RANK.medium) cam.card.dataset.alert = a.riskLevel;
  }
  if (String(a.cameraId) !== String(selected) || seenTasks.has(a.taskId)) return;   // the feed: selected only
  seenTasks.add(a.taskId);
  const list = $("assessments");
  if (live) list.prepend(alertItem(a)); else list.append(alertItem(a));
  while (list.children.length > 300) list.lastChild.remove();
  countAlerts();
}

function countAlerts() {
  $("alert-count").textContent = String($("assessments").querySelectorAll("li.assessment:not(.error)").length);
}

function clearAlerts() {
  historyRun += 1;   // a history page still on its way belongs to the previous camera: dropped when it lands
  $("assessments").replaceChildren();
  seenTasks.clear();
  olderCursor = null;
  $("older").hidden = true;
  countAlerts();
}

async function loadHistory(reset) {
  if (!selected) return;
  const camera = selected, run = historyRun;
  if (!reset && !olderCursor) return;
  const cursor = reset ? "" : `&before=${encodeURIComponent(olderCursor)}`;
  try {
    const page = await api("GET", `/api/cameras/${encodeURIComponent(camera)}/alerts?limit=20${cursor}`);
    if (camera !== selected || run !== historyRun) return;
    for (const a of page.items) addAssessment(a, false);
    olderCursor = page.next;
    $("older").hidden = !olderCursor;
  } catch (e) { if (e.status !== 404 && e.status !== 401) notice(e.message); }
}

function addError(e) {
  const li = document.createElement("li");
  li.className = "assessment error";
  li.innerHTML = `<div><span class="level">error</span> ${esc(e.code)}${e.cameraId ? ` · camera ${esc(e.cameraId)}` : ""}
    <div>${esc(e.message)}</div></div>`;
  $("assessments").prepend(li);
}

// --- incidents -------------------------------------------------------------------------------------------------
// The selected camera's incidents (every camera's when none is selected): a page of the REST history, then the live
// `incident` events merged in by incidentId (new/update/end replace the item in place), newest first.
const sameCamera = (a, b) => String(a) === String(b);

async function loadIncidents(reset) {
  const list = $("incident-list");
  if (reset) {
    incidentRun += 1;
    incidents.clear(); list.replaceChildren(); incidentCursor = null; $("incidents-older").hidden = true;
    countIncidents();
  } else if (!incidentCursor) return;
  const run = incidentRun, q = new URLSearchParams({ limit: "20" });
  if (selected !== null) q.set("cameraId", String(selected));
  if (!reset) q.set("cursor", incidentCursor);
  $("incident-scope").textContent = selected === null ? "all cameras" : `camera ${selected}`;
  try {
    const page = await api("GET", `/api/incidents?${q}`);
    if (run !== incidentRun) return;   // the selection changed meanwhile
    for (const inc of page.items || []) mergeIncident(inc);
    incidentCursor = page.next || null;
    $("incidents-older").hidden = !incidentCursor;
  } catch (e) { if (e.status !== 404 && e.status !== 401) notice(`incidents: ${e.message}`); }
}

function liveIncident(inc) {
  const cam = cameras.get(inc.cameraId) || [...cameras.entries()].find(([id]) => sameCamera(id, inc.cameraId))?.[1];
  if (cam && inc.state !== "end" && RANK[inc.severity] >= RANK.medium) cam.card.dataset.alert = inc.severity;
  if (selected !== null && !sameCamera(inc.cameraId, selected)) return;
  mergeIncident(inc);
}

function mergeIncident(inc) {
  if (inc.incidentId === undefined || inc.incidentId === null) return;
  const id = String(inc.incidentId), old = incidents.get(id);
  if (old && (old.updatedAt || 0) > (inc.updatedAt || 0)) return;   // an older copy (history after a live update)
  if (old && old.state === "end" && inc.state !== "end" && (old.updatedAt || 0) >= (inc.updatedAt || 0)) return;
  const merged = { ...old, ...inc };
  incidents.set(id, merged);
  const li = incidentItem(merged), list = $("incident-list");
  const prev = [...list.children].find((el) => el.dataset.incidentId === id);
  if (prev) {
    const oldVideo = prev.querySelector("video"), newVideo = li.querySelector("video");
    if (oldVideo && newVideo && oldVideo.getAttribute("src") === newVideo.getAttribute("src")) newVideo.replaceWith(oldVideo);
    const oldImg = prev.querySelector("img.snap"), newImg = li.querySelector("img.snap");
    if (oldImg && newImg && oldImg.getAttribute("src") === newImg.getAttribute("src")) newImg.replaceWith(oldImg);
    prev.replaceWith(li);
  } else {
    const at = merged.startedAt || 0;
    const before = [...list.children].find((el) => Number(el.dataset.startedAt || 0) < at);
    list.insertBefore(li, before || null);
    while (list.children.length > 200) { incidents.delete(list.lastChild.dataset.incidentId); list.lastChild.remove(); }
  }
  countIncidents();
}

function countIncidents() {
  const open = $("incident-list").querySelectorAll('li.incident:not([data-state="end"])').length;
  $("incident-count").textContent = `${$("incident-list").children.length}${open ? ` · ${open} open` : ""}`;
}

function metricsText(m) {
  if (!m) return "";
  const metric = m.units === "metric", dist = metric ? "m" : "heights", speed = metric ? "km/h" : "heights/s";
  const parts = [];
  if (num(m.ttc) !== null) parts.push(`TTC ${num(m.ttc)} s`);
  if (num(m.pet) !== null) parts.push(`PET ${num(m.pet)} s`);
  if (num(m.minDistance) !== null) parts.push(`min distance ${num(m.minDistance)} ${dist}`);
  else if (num(m.distance) !== null) parts.push(`distance ${num(m.distance)} ${dist}`);
  if (num(m.relativeSpeed) !== null) parts.push(`relative speed ${num(m.relativeSpeed)} ${speed}`);
  return parts.join(" · ");
}

const clock = (t) => (t ? new Date(1000 * t).toLocaleTimeString() : "");

function incidentItem(inc) {
  const li = document.createElement("li");
  const severity = RANK[inc.severity] !== undefined ? inc.severity : "none";
  li.className = `incident ${severity}`;
  li.dataset.incidentId = String(inc.incidentId);
  li.dataset.state = inc.state || "new";
  li.dataset.cameraId = String(inc.cameraId);
  li.dataset.startedAt = String(inc.startedAt || 0);
  const ended = inc.state === "end";
  const m = inc.metrics || null;
  const kind = inc.conflictType || m?.conflictType;
  const span = ended && inc.endedAt && inc.startedAt ? ` · ${(inc.endedAt - inc.startedAt).toFixed(1)} s` : "";
  const verdicts = (inc.verdicts || []).map((v) => `<li class="verdict ${esc(v.riskLevel)}">
      <span class="level">${esc(v.riskLevel)}</span> ${esc(v.description)}
      <div class="meta">${esc((v.riskTypes || []).join(", ") || "—")}${num(v.confidence, 2) !== null ? ` · conf ${(v.confidence * 100).toFixed(0)}%` : ""}
        · ${esc(v.llmModel)} via ${esc(v.apiKeyId)}${v.at ? ` · ${esc(clock(v.at))}` : ""}</div></li>`).join("");
  li.innerHTML = `<div class="inc-head"><span class="level">${esc(inc.severity)}</span>
      <span class="inc-state">${ended ? "ended" : "open"}</span>
      <span>camera ${esc(inc.cameraId)}${inc.groupId !== undefined && inc.groupId !== null ? ` · group ${esc(inc.groupId)}` : ""}</span></div>
    <div class="inc-what">${kind ? `${esc(String(kind).replace(/_/g, " "))} · ` : ""}${esc((inc.classes || []).join(", ") || "—")}
      ${(inc.trackIds || []).length ? `<span class="meta">(#${(inc.trackIds || []).map(esc).join(", #")})</span>` : ""}</div>
    <div class="meta">zones: ${esc((inc.zones || []).join(", ") || "—")} · ${inc.openedBy === "verdict" ? "opened by an LLM verdict" : "opened by a near miss"}
      · ${esc(clock(inc.startedAt))}${ended ? ` → ${esc(clock(inc.endedAt))}` : ""}${span}</div>
    ${m ? `<div class="metrics">${esc(metricsText(m))}</div>` : ""}
    ${verdicts ? `<ul class="verdicts">${verdicts}</ul>` : ""}
    <div class="media">${inc.snapshotUrl ? `<img class="snap" alt="snapshot of incident ${esc(inc.incidentId)}" loading="lazy" src="${esc(inc.snapshotUrl)}">` : ""}
      ${inc.clipUrl ? `<video class="clip" controls muted playsinline preload="metadata" src="${esc(inc.clipUrl)}"></video>` : ""}</div>`;
  li.querySelector("img.snap")?.addEventListener("error", (ev) => ev.target.remove());
  return li;
}

// --- editors: zones, calibration, context ----------------------------------------------------------------------
const selectedInfo = () => (selected === null ? null : cameras.get(selected)?.info || null);
const cameraPath = () => `/api/cameras/${encodeURIComponent(selected)}`;
const isCalibrated = (info) => Boolean(info && (info.calibrated ?? info.calibration));

// The selected camera's entry changed (or another camera was selected): badge, zone list, context, canvas.
function showGeometry(info) {
  const calibrated = isCalibrated(info);
  const badge = $("calibration-badge");
  badge.textContent = calibrated ? "calibrated" : "uncalibrated";
  badge.dataset.calibrated = String(calibrated);
  badge.title = calibrated ? "speeds in km/h, distances in metres"
    : "speeds in object heights per second: draw a ground rectangle in the editors below";
  $("calib-state").textContent = calibrated ? "calibrated" : "not calibrated";
  const geometry = JSON.stringify([info.zones || [], info.calibration || null]);
  if (geometry !== shownGeometry) {
    shownGeometry = geometry;
    renderZoneList(info.zones || []);
    repaintLive();
  }
  const context = info.context ?? "";
  if (context !== shownContext && document.activeElement !== $("camera-context")) {
    $("camera-context").value = context;
    shownContext = context;
  }
}

function renderZoneList(zones) {
  $("zone-list").replaceChildren(...zones.map((z, i) => {
    const li = document.createElement("li");
    li.className = `zone-item ${z.kind === "mask" ? "mask" : "zone"}`;
    li.dataset.name = z.name;
    li.innerHTML = `<span class="swatch" style="background:${z.kind === "mask" ? "#9e9e9e" : ZONE_COLORS[i % ZONE_COLORS.length]}"></span>
      <b>${esc(z.name)}</b> <span class="meta">${esc(z.kind)} · ${(z.points || []).length} points</span>
      <button type="button" class="zone-delete" title="delete ${esc(z.kind)} ${esc(z.name)}">Delete</button>`;
    li.querySelector("button").addEventListener("click", () => deleteZone(z.name));
    return li;
  }));
  if (!zones.length) $("zone-list").innerHTML = `<li class="meta">no zones yet</li>`;
}

function startDrawing(mode) {
  $(mode === "zone" ? "zone-error" : "calib-error").textContent = "";
  if (selected === null) { $(mode === "zone" ? "zone-error" : "calib-error").textContent = "select a camera first"; return; }
  drawing = { mode, points: [] };
  $("frame").classList.add("drawing");
  $("editors").open = true;
  drawHint();
  repaintLive();
}

function stopDrawing() {
  drawing = null;
  $("frame").classList.remove("drawing");
  drawHint();
  repaintLive();
}

function drawHint() {
  const hint = $("draw-hint");
  hint.hidden = !drawing;
  for (const id of ["zone-draw", "calib-draw"]) $(id).classList.toggle("active", drawing?.mode === (id === "zone-draw" ? "zone" : "calib"));
  if (!drawing) return;
  const n = drawing.points.length;
  hint.textContent = drawing.mode === "zone"
    ? `Drawing a ${$("zone-kind").value}: ${n} point${n === 1 ? "" : "s"} — click on the video to add one, right-click removes the last, then Save zone (Esc cancels).`
    : n < 4 ? `Calibration: click corner ${n + 1} of 4, in order around the rectangle (1→2 is the width, 2→3 the length).`
      : "Calibration: 4 corners — set the width and length in metres, then Save calibration.";
}

function canvasPoint(ev) {
  const r = $("frame").getBoundingClientRect();
  const f = (v) => Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000;
  return [f((ev.clientX - r.left) / r.width), f((ev.clientY - r.top) / r.height)];
}

// The camera's entry as the server has it now, then the change: another editor may have saved meanwhile.
async function saveGeometry(errorId, method, path, body) {
  $(errorId).textContent = "";
  if (selected === null) { $(errorId).textContent = "select a camera first"; return null; }
  const camera = selected;
  try {
    const info = await api(method, path, body);
    updateCamera(info.cameraId ?? camera, info);
    return info;
  } catch (e) {
    $(errorId).textContent = e.field && !e.message.includes(e.field) ? `${e.field}: ${e.message}` : e.message;
    return null;
  }
}

const plainZones = (zones) => (zones || []).map((z) => ({ name: z.name, kind: z.kind, points: z.points }));

async function currentZones() {
  try { return plainZones((await api("GET", cameraPath())).zones); } catch { return plainZones(selectedInfo()?.zones); }
}

async function saveZone() {
  if (selected === null) { $("zone-error").textContent = "select a camera first"; return; }
  const zones = await currentZones();
  const kind = $("zone-kind").value;
  const name = $("zone-name").value.trim() || `${kind} ${zones.length + 1}`;
  const points = drawing?.mode === "zone" ? drawing.points : [];
  const info = await saveGeometry("zone-error", "PUT", `${cameraPath()}/zones`, { zones: [...zones, { name, kind, points }] });
  if (info) { $("zone-name").value = ""; stopDrawing(); }
}

async function deleteZone(name) {
  const zones = (await currentZones()).filter((z) => z.name !== name);
  await saveGeometry("zone-error", "PUT", `${cameraPath()}/zones`, { zones });
}

async function saveCalibration() {
  const points = drawing?.mode === "calib" ? drawing.points : [];
  if (points.length !== 4) {
    $("calib-error").textContent = `click the 4 corners of the rectangle first (${points.length} so far): Draw rectangle`;
    return;
  }
  const w = Number($("calib-width").value), l = Number($("calib-length").value);
  if (!(w > 0) || !(l > 0)) { $("calib-error").textContent = "the width and length must be positive, in metres"; return; }
  const world = [[0, 0], [w, 0], [w, l], [0, l]];
  if (await saveGeometry("calib-error", "PUT", `${cameraPath()}/calibration`, { image: points, world })) stopDrawing();
}

$("frame").addEventListener("click", (ev) => {
  if (!drawing) return;   // the canvas acts only while drawing
  if (drawing.mode === "calib" && drawing.points.length >= 4) return;
  drawing.points.push(canvasPoint(ev));
  drawHint(); repaintLive();
});
$("frame").addEventListener("contextmenu", (ev) => {
  if (!drawing) return;
  ev.preventDefault();
  drawing.points.pop();
  drawHint(); repaintLive();
});
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && drawing) stopDrawing(); });
$("zone-draw").addEventListener("click", () => startDrawing("zone"));
$("zone-cancel").addEventListener("click", () => { $("zone-error").textContent = ""; stopDrawing(); });
$("zone-save").addEventListener("click", saveZone);
$("zone-kind").addEventListener("change", () => { drawHint(); repaintLive(); });
$("calib-draw").addEventListener("click", () => startDrawing("calib"));
$("calib-save").addEventListener("click", saveCalibration);
$("calib-clear").addEventListener("click", async () => {
  if (drawing?.mode === "calib") stopDrawing();
  await saveGeometry("calib-error", "DELETE", `${cameraPath()}/calibration`);
});
$("context-save").addEventListener("click", async () => {
  const value = $("camera-context").value.trim();
  const info = await saveGeometry("context-error", "PATCH", cameraPath(), { context: value || null });
  if (info) { shownContext = info.context ?? ""; $("camera-context").value = shownContext; }
});
$("editors").addEventListener("toggle", () => { if (!$("editors").open && drawing) stopDrawing(); else repaintLive(); });
$("incidents-older").addEventListener("click", () => loadIncidents(false));

// --- reports ---------------------------------------------------------------------------------------------------
// The Reports view (a tab; /#reports opens it): incidents per bucket as a stacked bar chart drawn here as inline SVG
// (no chart library), the near-miss heat map of one camera, the safety ranking and the CSV downloads, all from
// /api/reports/*. It refreshes when opened, on Refresh and when a control changes.
const STACK = ["low", "medium", "high"];   // bottom first
let reportRun = 0;

function showView(name) {
  const reports = name === "reports";
  $("live-view").hidden = reports;
  $("reports-view").hidden = !reports;
  for (const [id, on] of [["tab-live", !reports], ["tab-reports", reports]]) {
    $(id).classList.toggle("active", on);
    $(id).setAttribute("aria-selected", String(on));
  }
  history.replaceState(null, "", location.pathname + location.search + (reports ? "#reports" : ""));
  if (reports) refreshReports();
}

async function refreshReports() {
  const run = ++reportRun;
  const until = Math.floor(Date.now() / 1000), since = until - Number($("report-period").value);
  const bucket = $("report-bucket").value, camera = $("report-camera").value;
  const period = { since: String(since), until: String(until) };
  const scoped = { ...period, ...(camera ? { cameraId: camera } : {}) };
  const qs = (o) => new URLSearchParams(o).toString();
  $("report-error").textContent = "";
  $("report-status").textContent = "loading…";
  try {
    const [counts, ranking] = await Promise.all([
      api("GET", `/api/reports/counts?${qs({ ...scoped, bucket, rows: "0" })}`),   // the series: no table of rows
      api("GET", `/api/reports/ranking?${qs(period)}`),
    ]);
    if (run !== reportRun) return;   // a newer refresh is on its way
    fillReportCameras(ranking);
    drawChart(counts, until - since);
    renderRanking(ranking);
    const heatCamera = camera || (selected !== null ? String(selected) : ranking.cameras[0]?.cameraId);
    showHeatmap(heatCamera, period);
    $("csv-incidents").href = `/api/reports/incidents.csv?${qs(scoped)}`;
    $("csv-counts").href = `/api/reports/counts?${qs({ ...scoped, bucket, format: "csv" })}`;
    $("report-status").textContent = `${new Date(since * 1000).toLocaleString()} → ${new Date(until * 1000).toLocaleString()}`;
  } catch (e) {
    if (run !== reportRun) return;
    $("report-status").textContent = "";
    if (e.status !== 401) $("report-error").textContent = e.message;
  }
}

// Cameras in the registry and cameras with incidents in the period (a removed camera keeps its history).
function fillReportCameras(ranking) {
  const select = $("report-camera"), current = select.value;
  const ids = [...new Set([...[...cameras.keys()].map(String), ...ranking.cameras.map((c) => String(c.cameraId))])].sort();
  select.replaceChildren(new Option("all cameras", ""), ...ids.map((id) => new Option(`camera ${id}`, id)));
  select.value = ids.includes(current) ? current : "";
}

function niceStep(max) {
  const raw = max / 4;
  if (raw <= 1) return 1;
  const pow = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= raw);
}

function drawChart(c, span) {
  const W = 900, H = 290, L = 46, R = 12, T = 30, B = 44, pw = W - L - R, ph = H - T - B;
  const n = c.buckets.length;
  const totals = c.buckets.map((_, i) => STACK.reduce((a, s) => a + (c.series[s]?.[i] || 0), 0));
  const max = Math.max(0, ...totals), step = niceStep(max), top = Math.max(step, Math.ceil(max / step) * step);
  const y = (v) => T + ph - (v / top) * ph;
  const bw = pw / Math.max(n, 1), gap = bw > 4 ? 1 : 0;
  const when = (t) => new Date(t * 1000).toLocaleString([], span > 86400
    ? { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" } : { hour: "2-digit", minute: "2-digit" });
  const out = [];
  for (let v = 0; v <= top; v += step) {
    out.push(`<line class="grid" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}"/>`,
      `<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${v}</text>`);
  }
  c.buckets.forEach((t, i) => {
    let base = 0;
    for (const s of STACK) {
      const v = c.series[s]?.[i] || 0;
      if (!v) continue;
      out.push(`<rect class="bar ${s}" data-count="${v}" x="${(L + i * bw + gap).toFixed(2)}" y="${y(base + v).toFixed(2)}"
        width="${Math.max(bw - 2 * gap, 0.8).toFixed(2)}" height="${(y(base) - y(base + v)).toFixed(2)}"><title>${esc(when(t))}: ${v} ${s}</title></rect>`);
      base += v;
    }
  });
  const every = Math.max(1, Math.ceil(n / 6));
  for (let i = 0; i < n; i += every) {
    const x = L + i * bw;
    out.push(`<line class="axis" x1="${x}" x2="${x}" y1="${T + ph}" y2="${T + ph + 5}"/>`,
      `<text x="${x}" y="${T + ph + 18}" text-anchor="middle">${esc(when(c.buckets[i]))}</text>`);
  }
  out.push(`<line class="axis" x1="${L}" x2="${W - R}" y1="${T + ph}" y2="${T + ph}"/>`,
    `<line class="axis" x1="${L}" x2="${L}" y1="${T}" y2="${T + ph}"/>`,
    `<text transform="translate(12 ${T + ph / 2}) rotate(-90)" text-anchor="middle">incidents per ${esc(c.bucketMinutes)} min</text>`,
    `<text x="${L + pw / 2}" y="${H - 6}" text-anchor="middle">start of the bucket (local time)</text>`);
  ["high", "medium", "low"].forEach((s, k) => {
    const x = W - R - 250 + k * 85;
    out.push(`<g class="legend"><rect class="bar ${s}" x="${x}" y="8" width="12" height="12"/><text x="${x + 17}" y="18">${s}</text></g>`);
  });
  if (!max) out.push(`<text class="empty" x="${L + pw / 2}" y="${T + ph / 2}" text-anchor="middle">no incidents in this period</text>`);
  $("report-chart").innerHTML = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" role="img"
    aria-label="incidents per ${esc(c.bucketMinutes)} minutes by severity">${out.join("")}</svg>`;
  $("report-total").textContent = `${c.incidents} incident${c.incidents === 1 ? "" : "s"}`;
}

function showHeatmap(camera, period) {
  const img = $("heatmap");
  if (camera === undefined || camera === null || camera === "") {
    img.hidden = true; img.removeAttribute("src");
    $("heatmap-info").textContent = "";
    $("heatmap-hint").textContent = "no camera and no incidents: pick a camera above";
    return;
  }
  $("heatmap-info").textContent = `camera ${camera}`;
  $("heatmap-hint").textContent = "conflict points of the period over the camera's latest incident snapshot";
  img.dataset.camera = String(camera);
  img.hidden = false;
  img.src = `/api/reports/heatmap/${encodeURIComponent(camera)}.png?${new URLSearchParams(period)}`;
}

function renderRanking(r) {
  const t = (v) => esc(num(v, 2) ?? "—");
  const cells = (x) => `<td>${esc(x.score)}</td><td>${esc(x.incidents)}</td><td>${esc(x.high)}</td><td>${esc(x.medium)}</td>
    <td>${esc(x.low)}</td><td>${t(x.worstTtc)}</td><td>${t(x.worstPet)}</td>`;
  const none = (cols) => `<tr><td colspan="${cols}" class="meta">no incidents in this period</td></tr>`;
  $("rank-cameras").tBodies[0].innerHTML = r.cameras.slice(0, 20).map((x, i) =>
    `<tr data-camera="${esc(x.cameraId)}"><td>${i + 1}</td><td>${esc(x.cameraId)}</td>${cells(x)}</tr>`).join("") || none(9);
  $("rank-zones").tBodies[0].innerHTML = r.zones.slice(0, 20).map((x, i) =>
    `<tr><td>${i + 1}</td><td>${esc(x.cameraId)}</td><td>${esc(x.zone)}</td>${cells(x)}</tr>`).join("") || none(10);
}

$("tab-live").addEventListener("click", () => showView("live"));
$("tab-reports").addEventListener("click", () => showView("reports"));
$("report-form").addEventListener("submit", (ev) => { ev.preventDefault(); refreshReports(); });
for (const id of ["report-period", "report-bucket", "report-camera"]) $(id).addEventListener("change", refreshReports);
$("heatmap").addEventListener("error", () => { $("heatmap-hint").textContent = "the heat map could not be loaded"; });
$("rank-cameras").addEventListener("click", (ev) => {   // a camera's row: the report of that camera
  const id = ev.target.closest("tr[data-camera]")?.dataset.camera;
  if (id === undefined) return;
  $("report-camera").value = id;
  refreshReports();
});
if (location.hash === "#reports") showView("reports");

// --- key pool ------------------------------------------------------------------------------------------------
async function refreshKeys() {
  let keys;
  try { keys = await api("GET", "/api/keys"); } catch { return; }
  $("keys").tBodies[0].innerHTML = keys.map((k) => `<tr data-state="${esc(k.state)}"><td title="${esc(k.key)}">${esc(k.id)}</td>
    <td>${esc(k.state)}${k.cooldownLeft > 0 ? ` ${k.cooldownLeft.toFixed(0)} s` : ""}</td><td>${esc(k.qps)}</td>
    <td>${esc(k.inFlight)}</td><td>${esc(k.queued)}</td><td>${esc(k.calls)}</td><td>${esc(k.rateLimited)}</td></tr>`).join("");
}

function notice(text) {
  $("notice").textContent = text;
  setTimeout(() => { if ($("notice").textContent === text) $("notice").textContent = ""; }, 8000);
}

$("camera-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("form-error").textContent = "";
  try {
    await addCamera($("camera-id").value.trim(), $("camera-url").value.trim(), $("camera-interval").value);
  } catch (e) {
    $("form-error").textContent = e.message;
    const field = { cameraId: "camera-id", url: "camera-url", frameInterval: "camera-interval" }[e.field];
    if (field) $(field).focus();
  }
});
$("stop").addEventListener("click", () => selected && cameraAction(selected, "stop"));
$("older").addEventListener("click", () => loadHistory(false));
$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    await login($("login-token").value);
    $("login-token").value = "";
  } catch (e) {
    $("login-error").textContent = e.status === 401 ? "wrong token" : e.message;
    $("login-token").select();
  }
});

if (bookmarkToken) {   // an old /?token=... bookmark: exchanged for the cookie once (the URL is clean already)
  try { await api("POST", "/api/login", { token: bookmarkToken }); } catch (e) { notice(`login: ${e.message}`); }
}
setInterval(() => send("ping", { timestamp: Date.now() }), 20000);
setInterval(refreshCameras, 5000);
setInterval(refreshKeys, 3000);
refreshKeys();
connect();
