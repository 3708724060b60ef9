// The fleet page: every device, live; sorting, filtering and paging keep 1,000 rows fast
// (only one page of rows is in the DOM).
"use strict";
const PAGE = 50;
const rows = new Map();
let sortKey = "device", sortDesc = false, page = 0, alertRange = null;

function sortValue(r, key) {
  if (key === "ota") return (r.ota && r.ota.state) || "";
  if (key === "alerts") return r.alerts.length;
  if (key === "config") return r.pending.length;
  if (key === "ts") return -(SF.epoch(r.ts) || -Infinity);
  return r[key] ?? "";
}

function visible() {
  const text = document.getElementById("filter").value.trim().toLowerCase();
  const show = document.getElementById("show").value;
  const out = [...rows.values()].filter((r) => {
    if (show === "alerts" && !r.alerts.length) return false;
    if (show === "pending" && !r.pending.length) return false;
    if ((show === "online" || show === "offline") && r.connection !== show) return false;
    if (!text) return true;
    return [r.device, r.version, r.connection, r.ota && r.ota.state].join(" ").toLowerCase().includes(text);
  });
  out.sort((a, b) => {
    const x = sortValue(a, sortKey), y = sortValue(b, sortKey);
    return (x < y ? -1 : x > y ? 1 : a.device < b.device ? -1 : 1) * (sortDesc ? -1 : 1);
  });
  return out;
}

function render() {
  const list = visible();
  const pages = Math.max(1, Math.ceil(list.length / PAGE));
  page = Math.min(page, pages - 1);
  document.querySelector("#fleet tbody").innerHTML = list.slice(page * PAGE, (page + 1) * PAGE).map((r) =>
    `<tr id="row-${SF.esc(r.device)}" class="${r.alerts.some((a) => a.kind === "ota") ? "bad" : ""}">
      <td><a href="/device/${encodeURIComponent(r.device)}">${SF.esc(r.device)}</a></td>
      <td class="num temp">${r.temp === null ? "—" : r.temp.toFixed(2)}</td>
      <td class="num age" data-ts="${SF.esc(r.ts)}">${SF.age(r.ts)}</td>
      <td class="version">${SF.esc(r.version || "—")}</td>
      <td class="connection ${r.connection}">${r.connection}</td>
      <td class="config">${SF.config(r)}</td><td class="ota">${SF.ota(r.ota)}</td>
      <td>${r.alerts.map((a) => `<span class="bad">${SF.esc(a.text)}</span>`).join("<br>")}</td></tr>`).join("");
  document.getElementById("page").textContent = `page ${page + 1} of ${pages} (${list.length} shown)`;
  document.getElementById("device-count").textContent = `(${rows.size})`;
  document.querySelectorAll("#fleet th").forEach((th) => {
    th.classList.toggle("sorted", th.dataset.key === sortKey);
    th.classList.toggle("desc", th.dataset.key === sortKey && sortDesc);
  });
  renderAlerts();
}

function renderAlerts() {
  const all = [];
  for (const r of rows.values()) for (const a of r.alerts) all.push([r.device, a]);
  all.sort((a, b) => (a[0] < b[0] ? -1 : 1));
  document.getElementById("alert-count").textContent = `(${all.length})`;
  document.getElementById("alerts").innerHTML = all.length ? all.slice(0, 100).map(([d, a]) =>
    `<li class="alert-${a.kind}"><a href="/device/${encodeURIComponent(d)}">${SF.esc(d)}</a>: ${SF.esc(a.text)}</li>`).join("") +
    (all.length > 100 ? `<li>… and ${all.length - 100} more</li>` : "") : `<li class="none">none</li>`;
}

let pending = false;
function scheduleRender() {  // many changes at once: one redraw per frame
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

function alertRangeForm() {
  const el = document.getElementById("alert-range-form");
  const r = alertRange;
  if (!SF.me.can_config) { el.innerHTML = `<p class="readonly">Temperature alert range ${r.low}..${r.high} °C</p>`; return; }
  el.innerHTML = `<form id="range-form" class="controls">Temperature alert outside
    <input id="range-low" size="5" value="${r.low}"> .. <input id="range-high" size="5" value="${r.high}"> °C
    <button type="submit">Set</button><span id="range-msg" class="msg"></span></form>`;
  document.getElementById("range-form").onsubmit = async (e) => {
    e.preventDefault();
    const res = await SF.post("/api/alert-range", { low: Number(document.getElementById("range-low").value),
                                                      high: Number(document.getElementById("range-high").value) });
    const msg = document.getElementById("range-msg");
    msg.className = "msg " + (res.ok ? "done" : "error");
    msg.textContent = res.ok ? "set" : res.data.error || "refused";
  };
}

(async () => {
  const fleet = SF.get("/api/fleet");  // both requests at once: the table needs both
  await SF.init("Fleet");
  const snap = await fleet;
  SF.clockSkew = snap.now - Date.now() / 1000;
  alertRange = snap.alert_range;
  snap.rows.forEach((r) => rows.set(r.device, r));
  render();
  alertRangeForm();
  SF.configForm(document.getElementById("config-form"), null, () => [...rows.keys()].sort());
  SF.live((changed) => { changed.forEach((r) => rows.set(r.device, r)); scheduleRender(); });
  document.getElementById("filter").oninput = () => { page = 0; render(); };
  document.getElementById("show").onchange = () => { page = 0; render(); };
  document.getElementById("prev").onclick = () => { page = Math.max(0, page - 1); render(); };
  document.getElementById("next").onclick = () => { page += 1; render(); };
  document.querySelectorAll("#fleet th").forEach((th) => th.onclick = () => {
    sortDesc = sortKey === th.dataset.key ? !sortDesc : false;
    sortKey = th.dataset.key;
    render();
  });
  setInterval(() => document.querySelectorAll("#fleet td.age").forEach((td) => { td.textContent = SF.age(td.dataset.ts); }), 1000);
  const chart = document.getElementById("fleet-chart"), label = document.getElementById("fleet-chart-label");
  document.querySelectorAll("[data-range]").forEach((b) => b.onclick = () => SF.loadChart(chart, label, null, b.dataset.range));
  SF.loadChart(chart, label, null, "hour");
})();
