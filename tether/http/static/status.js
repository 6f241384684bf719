// The status page: one fetch() of /status/events read as a stream (SSE). fetch rather than
// EventSource because EventSource cannot send an Authorization header, and a key in a URL
// leaks into logs and history. The key lives in sessionStorage only (this tab).
"use strict";

const KEY = "tether-status-key";
const $ = (id) => document.getElementById(id);
let backoff = 500;

function setConn(state, text) {
  const el = $("conn");
  el.dataset.state = state;
  el.textContent = text;
}

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: "Bearer " + key } : {};
}

function askKey(message) {
  setConn("key", "key needed");
  $("keyform").hidden = false;
  $("main").hidden = true;
  $("keyerror").hidden = !message;
  $("keyerror").textContent = message || "";
  $("key").focus();
}

$("keyform").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  connect();
});

async function connect() {
  setConn("connecting", "connecting…");
  let response;
  try {
    response = await fetch("/status/events", { headers: headers(), cache: "no-store" });
  } catch (err) {
    return retry();
  }
  if (response.status === 401 || response.status === 403) {
    const had = sessionStorage.getItem(KEY);
    sessionStorage.removeItem(KEY);
    return askKey(had ? "That key was refused." : "");
  }
  if (!response.ok || !response.body) return retry();
  $("keyform").hidden = true;
  $("main").hidden = false;
  setConn("live", "live");
  backoff = 500;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handle(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (err) {
    // the connection dropped: reconnect below
  }
  retry();
}

function retry() {
  setConn("reconnecting", "reconnecting…");
  setTimeout(connect, backoff);
  backoff = Math.min(backoff * 2, 10000);
}

function handle(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (event === "state" && data.length) render(JSON.parse(data.join("\n")));
}

function clock(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleTimeString() : "—";
}

function cell(tr, index, text, className) {
  let td = tr.children[index];
  if (!td) {
    td = document.createElement("td");
    tr.appendChild(td);
  }
  if (className !== undefined) td.className = className;
  if (td.textContent !== String(text)) td.textContent = text;
  return td;
}

function wakeText(llm) {
  if (llm.status === "waking") return "waking since " + clock(llm.lastWakeAt);
  if (!llm.lastWakeAt) return "—";
  const took = llm.lastWakeSeconds == null ? "" : " · " + llm.lastWakeSeconds.toFixed(1) + " s";
  const how = llm.lastWakeOutcome ? " · " + llm.lastWakeOutcome : "";
  return clock(llm.lastWakeAt) + took + how;
}

function renderLlms(llms) {
  const body = $("llms").tBodies[0];
  const rows = new Map([...body.rows].map((tr) => [tr.dataset.llm, tr]));
  let previous = null;
  for (const llm of llms) {
    let tr = rows.get(llm.name);
    rows.delete(llm.name);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.llm = llm.name;
    }
    // Keep the server's order (by name) without rebuilding rows that did not move.
    const want = previous ? previous.nextSibling : body.firstChild;
    if (want !== tr) body.insertBefore(tr, want);
    previous = tr;
    cell(tr, 0, llm.name);
    const status = cell(tr, 1, llm.status, "status");
    status.dataset.status = llm.status;
    cell(tr, 2, llm.kind, "wide");
    cell(tr, 3, llm.session || "—", "wide session").title = llm.session || "";
    cell(tr, 4, llm.inFlight, "num");
    cell(tr, 5, llm.queued, "num");
    cell(tr, 6, wakeText(llm), "wake");
    cell(tr, 7, clock(llm.lastHeartbeatAt), "wide");
  }
  for (const tr of rows.values()) tr.remove();
  $("nollms").hidden = llms.length > 0;
}

function renderAliases(aliases) {
  // Config: the rows stay; only which target serves changes.
  const body = $("aliases").tBodies[0];
  body.replaceChildren(...aliases.map((a) => {
    const tr = document.createElement("tr");
    tr.dataset.alias = a.name;
    cell(tr, 0, a.name);
    cell(tr, 1, a.serving || "none now", "serving").dataset.serving =
      a.serving || "";
    cell(tr, 2, a.targets.join(" → "));
    return tr;
  }));
  $("aliasesection").hidden = aliases.length === 0;
}

function renderErrors(errors) {
  const body = $("errors").tBodies[0];
  body.replaceChildren(...errors.map((e) => {
    const tr = document.createElement("tr");
    cell(tr, 0, clock(e.at));
    cell(tr, 1, e.llm);
    cell(tr, 2, e.status, "num");
    cell(tr, 3, e.code);
    return tr;
  }));
  $("noerrors").hidden = errors.length > 0;
}

function renderTotals(t) {
  const by = t.byStatus || {};
  const cards = [
    ["Llms", t.llms], ["active", by.active || 0], ["hibernating", by.hibernating || 0],
    ["waking", by.waking || 0], ["inactive", by.inactive || 0],
    ["publishers", t.sessions], ["streams", t.streamsOpen], ["in flight", t.inFlight],
    ["queued", t.queued], ["requests", t.requests], ["errors", t.errors],
  ];
  $("totals").replaceChildren(...cards.map(([label, value]) => {
    const div = document.createElement("div");
    div.className = "card";
    div.dataset.total = label;
    const b = document.createElement("b");
    b.textContent = value;
    const span = document.createElement("span");
    span.textContent = label;
    div.append(b, span);
    return div;
  }));
}

function render(state) {
  renderTotals(state.totals);
  renderLlms(state.llms);
  renderAliases(state.aliases || []);
  renderErrors(state.errors);
}

connect();
