// Releases: the built bundles, publish (canary %) and promote, and each rollout's progress.
"use strict";
const BAD = ["failed", "rolled back", "rejected"];

// What the operator typed in a canary box, by version: a live refresh must not
// throw it away (nor the element they are about to click).
const typed = {};
let builtKey = "";

function render(d) {
  const can = SF.me.can_release;
  const key = JSON.stringify([can, d.releases]);
  if (key !== builtKey) { builtKey = key; renderBuilt(d, can); }
  renderProgress(d);
}

function renderBuilt(d, can) {
  document.getElementById("built").innerHTML = `<thead><tr><th>version</th><th>size</th><th>sha256</th><th>published to</th>` +
    (can ? "<th>actions</th>" : "") + `</tr></thead><tbody>` + (d.releases.length ? d.releases.map((r) => `<tr id="release-${SF.esc(r.version)}">
      <td>${SF.esc(r.version)}</td><td class="num">${r.size}</td><td><code>${SF.esc(r.sha256.slice(0, 16))}…</code></td>
      <td>${r.rollout ? r.rollout + " %" : "not published"}</td>` +
      (can ? `<td><input class="canary" size="4" value="${r.rollout && r.rollout < 100 ? 100 : 20}" aria-label="canary %"> %
        <button class="publish" data-version="${SF.esc(r.version)}">Publish</button>` +
        (r.rollout && r.rollout < 100 ? ` <button class="promote" data-version="${SF.esc(r.version)}">Promote to all</button>` : "") + `</td>` : "") +
      `</tr>`).join("") : `<tr><td colspan="5" class="empty">none built (stanfleet release build VERSION)</td></tr>`) + "</tbody>";
  if (!can) document.getElementById("release-msg").innerHTML = `<span class="readonly">Your role may not publish releases.</span>`;
  document.querySelectorAll("input.canary").forEach((box) => {
    const version = box.parentElement.querySelector("button.publish").dataset.version;
    if (version in typed) box.value = typed[version];
    box.oninput = () => { typed[version] = box.value; };
  });
  document.querySelectorAll("button.publish").forEach((b) => b.onclick = () => {
    const canary = Number(b.parentElement.querySelector(".canary").value);
    delete typed[b.dataset.version];
    act("/api/releases/publish", { version: b.dataset.version, canary });
  });
  document.querySelectorAll("button.promote").forEach((b) => b.onclick = () => act("/api/releases/promote", { version: b.dataset.version }));
}

function renderProgress(d) {
  document.getElementById("progress").innerHTML = d.progress.map((p) => {
    const bad = Object.entries(p.counts).filter(([s]) => BAD.includes(s)).reduce((n, [, c]) => n + c, 0);
    const pct = p.target ? Math.round(100 * p.installed / p.target) : 0;
    return `<section class="release" id="progress-${SF.esc(p.version)}"><h2>${SF.esc(p.version)} — ${p.rollout < 100 ? "canary " + p.rollout + " %" : "all devices"}</h2>
      <div class="bar" title="${p.installed} of ${p.target} installed"><div class="${bad ? "failed" : ""}" style="width:${pct}%"></div></div>
      <span class="count">${p.installed}/${p.target} installed</span>` +
      (bad ? ` <span class="bad">${bad} failed or rolled back</span>` : "") +
      ` <span class="counts">(${Object.entries(p.counts).map(([s, n]) => `${SF.esc(s)} ${n}`).join(", ")})</span>
      <table><thead><tr><th>device</th><th>running</th><th>state</th><th>reason</th></tr></thead><tbody>` +
      p.devices.map((x) => `<tr class="${BAD.includes(x.state) ? "bad" : ""}"><td><a href="/device/${encodeURIComponent(x.device)}">${SF.esc(x.device)}</a></td>
        <td>${SF.esc(x.version || "—")}</td><td class="state">${SF.esc(x.state)}</td><td>${SF.esc(x.reason)}</td></tr>`).join("") +
      `</tbody></table></section>`;
  }).join("");
}

async function act(url, body) {
  const r = await SF.post(url, body);
  const msg = document.getElementById("release-msg");
  msg.className = "msg " + (r.ok ? "done" : "error");
  msg.textContent = r.ok ? `${r.data.published} published to ${r.data.rollout} %` : r.data.error || `refused (${r.status})`;
  refreshSoon();
}

let busy = false, again = false;
async function refreshSoon() {
  if (busy) { again = true; return; }
  busy = true;
  try { render(await SF.get("/api/releases")); } finally { busy = false; if (again) { again = false; refreshSoon(); } }
}

(async () => {
  await SF.init("Releases");
  await refreshSoon();
  SF.live(() => refreshSoon());
})();
