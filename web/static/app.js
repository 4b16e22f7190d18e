// The live page: one WebSocket to /ws, a camera started on the sample video, frames drawn with boxes and
// traffic groups, and the risk assessments listed as they arrive. Reconnects when the server comes back.
const $ = (id) => document.getElementById(id);
const canvas = $("frame");
const ctx = canvas.getContext("2d");
const COLORS = { none: "#4caf50", low: "#cddc39", medium: "#ff9800", high: "#f44336" };
const groupRisk = new Map();   // groupId -> riskLevel, from assessments
let ws = null;
let retry = 500;
let autoStarted = false;
let frames = 0, assessments = 0, lastFrameAt = 0;

function send(type, data = {}) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type, data }));
}

// With TC_API_TOKEN set on the server, open the page once as /?token=...: the token is kept in this browser
// (localStorage) and removed from the address bar.
const params = new URLSearchParams(location.search);
if (params.get("token")) {
  localStorage.setItem("tcToken", params.get("token"));
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.toString() ? `?${params}` : ""));
}
const token = localStorage.getItem("tcToken");

function connect() {
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws${query}`);
  ws.onopen = () => { retry = 500; setConn(true); };
  ws.onclose = () => { setConn(false); setTimeout(connect, retry); retry = Math.min(retry * 2, 8000); };
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    const handler = HANDLERS[msg.type];
    if (handler) handler(msg.data || {});
  };
}

function setConn(on) {
  $("conn").textContent = on ? "connected" : "disconnected — retrying";
  $("conn").className = `pill ${on ? "on" : "off"}`;
}

const HANDLERS = {
  connection_ack(data) {
    if (!$("camera-url").value) $("camera-url").value = data.sampleVideo || "";
    const cameraId = $("camera-id").value;
    if (!autoStarted && $("camera-url").value) {
      autoStarted = true;
      send("start_stream", { cameraId, rtspUrl: $("camera-url").value });
    } else {
      send("subscribe", { cameraId });   // after a reconnect, watch the camera again
    }
  },
  camera_status(data) {
    const state = data.state || (data.status ? "online" : "offline");
    $("status").textContent = `camera ${data.cameraId}: ${state} — ${data.message}`;
    $("status").dataset.state = state;
  },
  stream_stopped(data) { $("status").textContent = `camera ${data.cameraId} stopped: ${data.reason}`; },
  detection_result: drawDetections,
  risk_assessment: addAssessment,
  error(data) { addError(data); },
  pong() {},
};

function drawDetections(d) {
  frames += 1;
  const now = performance.now();
  const fps = lastFrameAt ? 1000 / (now - lastFrameAt) : 0;
  lastFrameAt = now;
  $("stats").textContent = `${d.detectedObjects.length} objects, ${d.trafficGroups.length} groups, ` +
    `${(d.processTime * 1000).toFixed(0)} ms analysis, ${fps.toFixed(1)} frames/s, ${frames} frames`;
  const paint = () => {
    for (const g of d.trafficGroups) {
      const level = g.riskLevel || groupRisk.get(g.groupId) || "none";
      const [x1, y1, x2, y2] = g.bbox;
      ctx.setLineDash([6, 4]); ctx.lineWidth = 3; ctx.strokeStyle = COLORS[level];
      ctx.strokeRect(x1 - 6, y1 - 6, x2 - x1 + 12, y2 - y1 + 12);
      ctx.setLineDash([]); ctx.fillStyle = COLORS[level]; ctx.font = "bold 13px sans-serif";
      ctx.fillText(`${g.groupId} (${g.objectCount})`, x1 - 6, y1 - 10);
    }
    for (const o of d.detectedObjects) {
      const [x1, y1, x2, y2] = o.bbox;
      ctx.lineWidth = 2; ctx.strokeStyle = o.class === "person" ? "#29b6f6" : "#ffeb3b";
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.fillStyle = ctx.strokeStyle; ctx.font = "11px sans-serif";
      const id = o.trackId === null || o.trackId === undefined ? "" : ` #${o.trackId}`;
      ctx.fillText(`${o.class}${id} ${(o.confidence * 100).toFixed(0)}%`, x1, y2 + 11);
    }
    canvas.dataset.boxes = String(d.detectedObjects.length);   // for tests and curious operators
  };
  if (canvas.width !== d.imageWidth) { canvas.width = d.imageWidth; canvas.height = d.imageHeight; }
  if (d.frame) {
    const img = new Image();
    img.onload = () => { ctx.drawImage(img, 0, 0, canvas.width, canvas.height); paint(); };
    img.src = `data:image/jpeg;base64,${d.frame}`;
  } else {
    ctx.clearRect(0, 0, canvas.width, canvas.height); paint();
  }
}

function item(cls, html) {
  const li = document.createElement("li");
  li.className = `assessment ${cls}`;
  li.innerHTML = html;
  const list = $("assessments");
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const seenTasks = new Set();   // an assessment is identified by its task id: show each once

function addAssessment(a) {
  if (seenTasks.has(a.taskId)) return;
  seenTasks.add(a.taskId);
  assessments += 1;
  groupRisk.set(a.groupId, a.riskLevel);
  $("alert-count").textContent = String(assessments);
  const delay = a.frameTimestamp ? ((Date.now() / 1000 - a.frameTimestamp)).toFixed(1) : "?";
  item(a.riskLevel, `<span class="level">${esc(a.riskLevel)}</span> camera ${esc(a.cameraId)} · group ${esc(a.groupId)}
    <div>${esc(a.description)}</div>
    <div class="meta">${esc((a.riskTypes || []).join(", ") || "—")} · conf ${(a.confidence * 100).toFixed(0)}% ·
      ${esc(a.llmModel)} via ${esc(a.apiKeyId)} · LLM ${(a.llmLatency * 1000).toFixed(0)} ms · ${delay} s after the frame ·
      ${new Date().toLocaleTimeString()}</div>`);
}

function addError(e) {
  item("error", `<span class="level">error</span> ${esc(e.code)}<div>${esc(e.message)}</div>`);
}

$("camera-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  send("start_stream", { cameraId: $("camera-id").value, rtspUrl: $("camera-url").value });
});
$("stop").addEventListener("click", () => send("stop_stream", { cameraId: $("camera-id").value }));
setInterval(() => send("ping", { timestamp: Date.now() }), 20000);
connect();
