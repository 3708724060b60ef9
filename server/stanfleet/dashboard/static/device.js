// One device: its chart, status history, config changes, OTA attempts and log; live.
"use strict";
const device = decodeURIComponent(location.pathname.split("/").pop());

function table(el, head, rows) {
  el.innerHTML = `<thead><tr>${head.map((h) => `<th>${h}</th>`).join("")}</tr></thead><tbody>` +
    (rows.length ? rows.join("") : `<tr><td colspan="${head.length}" class="empty">none</td></tr>`) + "</tbody>";
}
const when = (t) => SF.esc(typeof t === "number" ? new Date(t * 1000).toISOString().replace(".000", "") : t);

async function refresh() {
  const d = await SF.get(`/api/device/${encodeURIComponent(device)}`);
  const r = d.row;
  document.getElementById("summary").innerHTML = [
    ["last reading", r.temp === null ? "—" : `${r.temp.toFixed(2)} °C, <span class="age" data-ts="${SF.esc(r.ts)}">${SF.age(r.ts)}</span> ago`],
    ["version", SF.esc(r.version || "—")], ["connection", `<span id="connection" class="${r.connection}">${r.connection}</span>`],
    ["config (desired → applied)", `<span id="config">${SF.config(r)}</span>`], ["OTA", SF.ota(r.ota)],
    ["alerts", r.alerts.length ? r.alerts.map((a) => `<span class="bad">${SF.esc(a.text)}</span>`).join("<br>") : "none"],
  ].map(([k, v]) => `<tr><th>${k}</th><td>${v}</td></tr>`).join("");
  table(document.getElementById("config-changes"), ["device time", "applied", "errors"],
    d.config_changes.map((c) => `<tr><td>${when(c.ts)}</td><td>${SF.esc(JSON.stringify(c.applied))}</td>
      <td class="${c.errors.length ? "bad" : ""}">${SF.esc(c.errors.join("; "))}</td></tr>`));
  table(document.getElementById("requested"), ["time", "by", "target", "settings"],
    d.requested.map((c) => `<tr><td>${when(c.ts)}</td><td>${SF.esc(c.user)}</td><td>${SF.esc(c.target)}</td>
      <td>${SF.esc(JSON.stringify(c.settings))}</td></tr>`));
  table(document.getElementById("ota-attempts"), ["device time", "release", "state", "reason", "running"],
    d.ota_attempts.map((o) => `<tr class="${["failed", "rolled_back", "rejected"].includes(o.state) ? "bad" : ""}">
      <td>${when(o.ts)}</td><td>${SF.esc(o.version)}</td><td>${SF.esc(o.state)}</td><td>${SF.esc(o.reason)}</td><td>${SF.esc(o.running)}</td></tr>`));
  table(document.getElementById("history"), ["received", "device time", "version", "config", "OTA"],
    d.history.slice(0, 50).map((h) => `<tr><td>${when(h.received)}</td><td>${when(h.ts)}</td><td>${SF.esc(h.version)}</td>
      <td>${SF.esc(JSON.stringify(h.config))}</td><td>${SF.ota(h.ota)}</td></tr>`));
  const log = document.getElementById("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.textContent = d.log === null ? "(no log: this device is not simulated here)" : d.log;
  if (atEnd) log.scrollTop = log.scrollHeight;
}

let busy = false, again = false;
async function refreshSoon() {  // at most one request in flight; one more if changes came meanwhile
  if (busy) { again = true; return; }
  busy = true;
  try { await refresh(); } finally { busy = false; if (again) { again = false; refreshSoon(); } }
}

(async () => {
  await SF.init("");
  document.title = `stanfleet — ${device}`;
  document.getElementById("title").textContent = `Device ${device}`;
  await refresh();
  SF.configForm(document.getElementById("config-form"), device);
  SF.live((rows) => { if (rows.some((r) => r.device === device)) refreshSoon(); });
  setInterval(() => document.querySelectorAll(".age").forEach((e) => { e.textContent = SF.age(e.dataset.ts); }), 1000);
  const chart = document.getElementById("chart"), label = document.getElementById("chart-label");
  document.querySelectorAll("[data-range]").forEach((b) => b.onclick = () => SF.loadChart(chart, label, device, b.dataset.range));
  SF.loadChart(chart, label, device, "hour");
})();
