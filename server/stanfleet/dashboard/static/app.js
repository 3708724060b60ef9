// Shared by every page: the session, API calls, the header, formatting, charts.
"use strict";
const SF = {
  me: null,
  clockSkew: 0,  // server time minus browser time, seconds

  async init(active) {
    SF.me = await SF.get("/api/me");
    const nav = [["/", "Fleet"], ["/releases", "Releases"]]
      .map(([href, name]) => `<a href="${href}" class="${name === active ? "active" : ""}">${name}</a>`).join("");
    const can = SF.me.can_config || SF.me.can_release ? "" : " (read only)";
    document.body.insertAdjacentHTML("afterbegin",
      `<header><strong>stanfleet</strong>${nav}<span class="who" id="who">${SF.esc(SF.me.user)}${can}` +
      (SF.me.secure ? `<button id="logout">Log out</button>` : " — INSECURE, no login") + `</span></header>`);
    const out = document.getElementById("logout");
    if (out) out.onclick = async () => { await SF.post("/logout", {}); location = "/login"; };
    return SF.me;
  },

  async get(url) {
    const r = await fetch(url, { credentials: "same-origin" });
    if (r.status === 401) { location = "/login"; throw new Error("log in first"); }
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
    return r.json();
  },

  async post(url, body) {
    const r = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": SF.me ? SF.me.csrf : "" },
      body: JSON.stringify(body), redirect: "manual",
    });
    let data = {};
    try { data = await r.json(); } catch (e) { /* a redirect or an empty answer */ }
    return { ok: r.ok, status: r.status, data };
  },

  // Live updates: server-sent events with the rows that changed.
  live(onRows) {
    const es = new EventSource("/api/events");
    es.addEventListener("rows", (e) => {
      const msg = JSON.parse(e.data);
      SF.clockSkew = msg.now - Date.now() / 1000;
      onRows(msg.rows);
    });
    return es;
  },

  esc(s) {
    return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  },

  epoch(ts) { const t = Date.parse(ts); return isNaN(t) ? null : t / 1000; },

  age(ts) {
    const t = SF.epoch(ts);
    if (t === null) return "—";
    const s = Math.max(0, Math.round(Date.now() / 1000 + SF.clockSkew - t));
    if (s < 120) return s + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  },

  config(row) {
    const keys = new Set([...Object.keys(row.desired || {}), ...Object.keys(row.applied || {})]);
    if (!keys.size) return "—";
    return [...keys].sort().map((k) => {
      const want = (row.desired || {})[k], have = (row.applied || {})[k];
      const pending = row.pending.includes(k);
      return `${SF.esc(k)}: ` + (want === undefined ? SF.esc(have) :
        `<span class="${pending ? "pending" : "ok"}" title="desired → applied">${SF.esc(want)} → ${SF.esc(have ?? "?")}` +
        (pending ? " (pending)" : "") + "</span>");
    }).join("<br>");
  },

  ota(o) {
    if (!o || !o.state) return "—";
    const bad = ["failed", "rolled_back", "rejected"].includes(o.state);
    return `<span class="${bad ? "bad" : ""}">${SF.esc(o.state.replace("_", " "))} ${SF.esc(o.version || "")}` +
      (o.reason ? ` — ${SF.esc(o.reason)}` : "") + "</span>";
  },

  // A config form: key from the firmware's rules, a value, one device or all.
  configForm(el, fixedTarget, devices) {
    if (!SF.me.can_config) { el.innerHTML = `<p class="readonly">Your role may not change config.</p>`; return; }
    const keys = Object.entries(SF.me.config_keys);
    const target = fixedTarget ? `<input type="hidden" id="cfg-target" value="${SF.esc(fixedTarget)}">` :
      `<label>Device <select id="cfg-target"><option value="*">all devices</option>` +
      devices().map((d) => `<option>${SF.esc(d)}</option>`).join("") + `</select></label>`;
    el.innerHTML = `<form id="cfg-form" class="controls">${target}
      <label>Key <select id="cfg-key">${keys.map(([k, r]) => `<option value="${SF.esc(k)}">${SF.esc(k)} (${r[1]}..${r[2]})</option>`).join("")}</select></label>
      <label>Value <input id="cfg-value" size="8" required></label>
      <button id="cfg-send" type="submit">Send</button><span id="cfg-msg" class="msg"></span></form>`;
    document.getElementById("cfg-form").onsubmit = async (e) => {
      e.preventDefault();
      const raw = document.getElementById("cfg-value").value.trim();
      let value = raw; try { value = JSON.parse(raw); } catch (err) { /* a word stays a string */ }
      const body = { target: document.getElementById("cfg-target").value,
                     settings: { [document.getElementById("cfg-key").value]: value } };
      const r = await SF.post("/api/config", body);
      const msg = document.getElementById("cfg-msg");
      msg.className = "msg " + (r.ok ? "done" : "error");
      msg.textContent = r.ok ? `sent to ${r.data.sent.length} device(s); pending until applied` : r.data.error || `refused (${r.status})`;
    };
  },

  // A min/mean/max chart (uPlot: drag to zoom, double-click to zoom out).
  chart(el, data, onZoom) {
    el.innerHTML = "";
    if (typeof uPlot === "undefined") { el.innerHTML = `<p class="empty">chart library not installed (bash .ci/setup)</p>`; return null; }
    if (!data.t.length) { el.innerHTML = `<p class="empty" id="${el.id}-empty">no readings in this range</p>`; return null; }
    const opts = {
      width: Math.max(320, el.clientWidth || 800), height: 240,
      // The x axis spans the range asked for, not just the buckets that have readings.
      scales: { x: { time: true, range: () => [data.start, data.end] } },
      series: [{}, { label: "min °C", stroke: "#4a90d9" }, { label: "mean °C", stroke: "#1d2d44", width: 2 },
               { label: "max °C", stroke: "#d9534f" }],
      axes: [{}, { label: "°C" }],
      hooks: { setSelect: [(u) => {
        if (u.select.width < 5 || !onZoom) return;
        const a = u.posToVal(u.select.left, "x"), b = u.posToVal(u.select.left + u.select.width, "x");
        onZoom(a, b);
      }] },
      cursor: { drag: { x: true, y: false, setScale: false } },
    };
    const plot = new uPlot(opts, [data.t, data.min, data.mean, data.max], el);
    el.dataset.points = String(data.t.length);
    el.classList.add("rendered");
    return plot;
  },

  async loadChart(el, label, device, range, start, end) {
    const q = new URLSearchParams(device ? { device } : {});
    if (start) { q.set("start", start); q.set("end", end); } else q.set("range", range);
    const data = await SF.get("/api/chart?" + q);
    label.textContent = `${data.t.length} points, ${data.bucket >= 60 ? data.bucket / 60 + " min" : data.bucket + " s"} buckets` +
      (start ? " (zoomed: drag again, or pick a range)" : " (drag across the chart to zoom)");
    SF.chart(el, data, (a, b) => SF.loadChart(el, label, device, range, a, b));
  },
};
