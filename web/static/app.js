// The live page: a grid of every camera with its state and a thumbnail, an "add camera" form, the selected
// camera's video with boxes and groups coloured by risk, the alert feed (live, then older pages from the REST
// history) with crop snapshots, and the key pool. One WebSocket to /ws, REST under /api; reconnects by itself.
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
  },
  camera_status(data) { updateCamera(data.cameraId, { state: data.state || (data.status ? "online" : "offline"),
                                                      message: data.message }); },
  stream_stopped(data) { updateCamera(data.cameraId, { state: "stopped", message: data.reason }); },
  detection_result: drawDetections,
  risk_assessment: (a) => addAssessment(a, true),
  error(data) { addError(data); },
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
  if (id === selected) { $("status").textContent = `${state} — ${cam.info.message || ""}`; $("status").dataset.state = state; }
}

async function cameraAction(id, act) {
  try {
    if (act === "remove") {
      await api("DELETE", `/api/cameras/${encodeURIComponent(id)}`);
      if (selected === id) selected = null;
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
  updateCamera(id, {});
  if (changed) clearAlerts();   // the feed is the selected camera's: not the previous one's plus this one's
  loadHistory(true);
}

// --- video ---------------------------------------------------------------------------------------------------
function paint(ctx, d, scale) {
  for (const g of d.trafficGroups) {
    const level = g.riskLevel || groupRisk.get(`${d.cameraId}/${g.groupId}`);   // undefined: not assessed
    const [x1, y1, x2, y2] = g.bbox.map((v) => v * scale);
    ctx.setLineDash([6, 4]); ctx.lineWidth = scale < 0.5 ? 2 : 3; ctx.strokeStyle = COLORS[level] || "#9e9e9e";
    ctx.strokeRect(x1 - 6 * scale, y1 - 6 * scale, x2 - x1 + 12 * scale, y2 - y1 + 12 * scale);
    ctx.setLineDash([]);
    if (scale >= 0.5) {
      ctx.fillStyle = ctx.strokeStyle; ctx.font = "bold 13px sans-serif";
      ctx.fillText(`${g.groupId} (${g.objectCount})${level ? ` ${level}` : ""}`, x1 - 6, y1 - 10);
    }
  }
  for (const o of d.detectedObjects) {
    const [x1, y1, x2, y2] = o.bbox.map((v) => v * scale);
    ctx.lineWidth = scale < 0.5 ? 1 : 2; ctx.strokeStyle = o.class === "person" ? "#29b6f6" : "#ffeb3b";
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    if (scale >= 0.5) {
      ctx.fillStyle = ctx.strokeStyle; ctx.font = "11px sans-serif";
      const id = o.trackId === null || o.trackId === undefined ? "" : ` #${o.trackId}`;
      ctx.fillText(`${o.class}${id} ${(o.confidence * 100).toFixed(0)}%`, x1, y2 + 11);
    }
  }
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
      const ctx = canvas.getContext("2d");
      if (img) ctx.drawImage(img, 0, 0, canvas.width, canvas.height); else ctx.clearRect(0, 0, canvas.width, canvas.height);
      paint(ctx, d, scale);
      canvas.dataset.boxes = String(d.detectedObjects.length);   // for tests and curious operators
    }
  };
  if (d.frame) {
    const img = new Image();
    img.onload = () => draw(img);
    img.src = `data:image/jpeg;base64,${d.frame}`;
  } else draw(null);
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
