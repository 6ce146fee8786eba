/// The status page the admin API serves at `GET /`: one self-contained document (inline CSS and
/// JavaScript, no external assets) that polls `GET /status` every 2 s and updates itself in place.
///
/// - Backends are rows colored by what matters most to an operator: removed, disabled, draining, down by
///   checks, breaker open (on how many workers), half-open, checking, up.
/// - Metrics fields (`connections.total`, `bytes.in/out`, `connect_time_ms` and `first_byte_time_ms`
///   percentiles, `failures` by kind, listener and pool counters) are shown when `/status` has them, and
///   their columns are left out when it does not.
/// - Each backend's last events come from its events URL, fetched when its state changes (and every 10 s),
///   not on every refresh.
/// - Drain, disable, enable, weight and reset are `fetch` calls on the same origin; on a 401 the page
///   asks for the admin token once and keeps it in `sessionStorage`.
/// - Every value goes into the DOM as text (`createTextNode`, `textContent`), never as markup.
enum StatusPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fulcrum status</title>
<link rel="icon" href="data:,">
<style>
:root {
  --bg: #f6f7f9; --card: #fff; --text: #1d232b; --muted: #667085; --line: #e3e6ea;
  --up: #16a34a; --up-bg: #e8f7ee; --down: #dc2626; --down-bg: #fdecec; --open: #ea580c; --open-bg: #fff1e6;
  --half: #ca8a04; --half-bg: #fef8e1; --drain: #2563eb; --drain-bg: #e8effd; --off: #6b7280; --off-bg: #eef0f3;
  --gone: #7c3aed; --gone-bg: #f1ebfd;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text); font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px 18px; padding: 12px 20px; background: #1d232b; color: #fff; }
header h1 { margin: 0; font-size: 18px; }
header .facts { color: #c4cad3; font-size: 13px; }
header .facts b { color: #fff; font-weight: 600; }
#live { margin-left: auto; font-size: 13px; }
#live::before { content: ""; display: inline-block; width: 8px; height: 8px; margin-right: 6px; border-radius: 50%; background: var(--up); }
#live.stale::before { background: var(--down); }
#live.stale { color: #fca5a5; }
main { padding: 16px 20px; max-width: 1600px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; margin-bottom: 16px; overflow-x: auto; }
section > h2 { margin: 0; padding: 10px 14px; font-size: 15px; border-bottom: 1px solid var(--line); display: flex; flex-wrap: wrap; gap: 4px 14px; align-items: baseline; }
h2 .sub { font-weight: 400; color: var(--muted); font-size: 13px; }
.counts { display: inline-flex; gap: 10px; font-weight: 400; font-size: 13px; }
.counts span::before { content: "●"; margin-right: 3px; }
table { border-collapse: collapse; width: 100%; }
th { text-align: left; font-weight: 600; font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .03em; padding: 6px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
td { padding: 7px 10px; vertical-align: top; border-top: 1px solid var(--line); }
tr.events td { border-top: none; padding-top: 0; }
.addr { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-weight: 600; white-space: nowrap; }
.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.muted { color: var(--muted); font-size: 12px; }
.pill { display: inline-block; min-width: 84px; text-align: center; padding: 2px 8px; border-radius: 999px; font-weight: 600; font-size: 12px; white-space: nowrap; }
tr.backend > td:first-child, tr.events > td:first-child { border-left: 4px solid transparent; }
.s-up .pill, .counts .s-up { color: var(--up); } .s-up .pill { background: var(--up-bg); } tr.s-up > td:first-child { border-left-color: var(--up); }
.s-down .pill, .counts .s-down { color: var(--down); } .s-down .pill { background: var(--down-bg); } tr.s-down > td:first-child { border-left-color: var(--down); }
tr.s-down, tr.s-down + tr.events { background: #fffafa; }
.s-open .pill, .counts .s-open { color: var(--open); } .s-open .pill { background: var(--open-bg); } tr.s-open > td:first-child { border-left-color: var(--open); }
tr.s-open, tr.s-open + tr.events { background: #fffcf8; }
.s-half .pill, .counts .s-half { color: var(--half); } .s-half .pill { background: var(--half-bg); } tr.s-half > td:first-child { border-left-color: var(--half); }
.s-drain .pill, .counts .s-drain { color: var(--drain); } .s-drain .pill { background: var(--drain-bg); } tr.s-drain > td:first-child { border-left-color: var(--drain); }
.s-disabled .pill, .counts .s-disabled, .s-unknown .pill, .counts .s-unknown { color: var(--off); } .s-disabled .pill, .s-unknown .pill { background: var(--off-bg); }
tr.s-disabled > td:first-child, tr.s-unknown > td:first-child { border-left-color: var(--off); }
.s-removed .pill, .counts .s-removed { color: var(--gone); } .s-removed .pill { background: var(--gone-bg); } tr.s-removed > td:first-child { border-left-color: var(--gone); }
.bad { color: var(--down); } .warn { color: var(--open); } .good { color: var(--up); }
.src { display: inline-block; margin-left: 4px; padding: 0 5px; border-radius: 4px; font-size: 11px; background: var(--off-bg); color: var(--muted); }
.src.admin { background: var(--drain-bg); color: var(--drain); }
.actions { white-space: nowrap; }
.actions button, .actions input, #token-form button, #token-form input { font: inherit; font-size: 12px; padding: 3px 8px; border: 1px solid var(--line); border-radius: 5px; background: #fff; cursor: pointer; }
.actions button:hover { border-color: #9aa3af; }
.actions button:disabled { opacity: .45; cursor: default; }
.actions input { width: 56px; cursor: text; }
.actions .row2 { margin-top: 4px; }
.ev { font-size: 12px; color: var(--muted); padding-left: 4px; }
.ev li { list-style: none; margin: 1px 0; }
.ev ul { margin: 0; padding: 0; }
.ev time { font-variant-numeric: tabular-nums; margin-right: 6px; }
.ev .tag { display: inline-block; min-width: 70px; font-weight: 600; }
.ev button { font: inherit; font-size: 12px; border: none; background: none; color: var(--drain); cursor: pointer; padding: 0; margin-top: 2px; }
table.listeners { width: auto; min-width: 50%; }
.listeners td, .listeners th { white-space: nowrap; padding-right: 40px; }
#notice { display: none; margin: 0 0 12px; padding: 8px 12px; border-radius: 6px; background: var(--down-bg); color: var(--down); }
#notice.ok { background: var(--up-bg); color: var(--up); }
#token-form { display: none; margin: 0 0 12px; padding: 10px 12px; border-radius: 6px; background: var(--half-bg); }
#token-form input { width: 260px; cursor: text; }
.empty { padding: 10px 14px; color: var(--muted); }
.sources .source { padding: 2px 14px; font-size: 13px; color: var(--muted); }
.sources .s-up { color: var(--up); } .sources .s-down { color: var(--down); font-weight: 600; }
.hide-bytes .c-bytes, .hide-latency .c-latency, .hide-failures .c-failures { display: none; }
</style>
</head>
<body>
<header>
  <h1>Fulcrum</h1>
  <span class="facts" id="facts">connecting…</span>
  <span id="live">loading</span>
</header>
<main>
  <div id="notice" role="status"></div>
  <form id="token-form">
    <label for="token-input">This admin API needs its token for changes:</label>
    <input id="token-input" type="password" autocomplete="off" placeholder="admin token">
    <button type="submit">Use token</button>
    <button type="button" id="token-cancel">Cancel</button>
    <span class="muted">kept in this tab only (sessionStorage)</span>
  </form>
  <section id="listeners-section"><h2>Listeners</h2><table class="listeners"><thead><tr><th>Name</th><th>Address</th><th>Pool</th><th class="c-lconn">Active connections</th></tr></thead><tbody id="listeners"></tbody></table></section>
  <div id="pools"></div>
</main>
<script>
"use strict";
(function () {
  const REFRESH_MS = 2000;
  const EVENTS_INLINE = 3;
  const EVENTS_REFETCH_MS = 10000;

  // MARK: - DOM helpers: every value goes in as text, never as markup.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === "class") node.className = value;
        else if (key === "onclick" || key === "onsubmit" || key === "onkeydown") node[key] = value;
        else node.setAttribute(key, String(value));
      }
    }
    append(node, children);
    return node;
  }
  function append(node, children) {
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      if (Array.isArray(child)) append(node, child);
      else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  const $ = (id) => document.getElementById(id);

  // MARK: - Formatting
  function num(value) { return typeof value === "number" && isFinite(value) ? value : null; }
  function bytes(n) {
    if (num(n) === null) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
  }
  function rate(n) { return num(n) === null ? "–" : bytes(n) + "/s"; }
  function count(n) { return num(n) === null ? "–" : n.toLocaleString("en-US"); }
  function ms(n) {
    if (num(n) === null) return "–";
    return n < 1 ? n.toFixed(2) : n < 10 ? n.toFixed(1) : String(Math.round(n));
  }
  // How long since `iso`, e.g. "3m 12s".
  let clockSkew = 0;
  function ago(iso) {
    if (!iso) return "";
    const t = Date.parse(iso);
    if (isNaN(t)) return "";
    // Against the proxy's clock (its `now` in /status), not this browser's.
    let s = Math.max(0, Math.round((Date.now() + clockSkew - t) / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
  }
  function clock(iso) {
    const t = new Date(iso);
    return isNaN(t) ? String(iso) : t.toLocaleTimeString("en-GB", { hour12: false });
  }
  function duration(seconds) {
    if (num(seconds) === null) return "?";
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600), m = Math.floor(seconds % 3600 / 60);
    return d ? d + "d " + h + "h" : h ? h + "h " + m + "m" : m ? m + "m " + (seconds % 60) + "s" : seconds + "s";
  }

  // MARK: - State of a backend, in the order that matters most to an operator.
  const LABELS = {
    up: "up", down: "down", open: "breaker open", half: "half-open", drain: "draining",
    disabled: "disabled", removed: "removed", unknown: "checking",
  };
  function classify(b) {
    const state = b.state && b.state.value;
    const breaker = b.breaker || {};
    if (b.listed === false) return "removed";
    if (state === "disabled") return "disabled";
    if (state === "drain") return "drain";
    if (b.check && b.check.state === "down") return "down";
    if (breaker.open_workers > 0) return "open";
    if (breaker.half_open_workers > 0) return "half";
    if (b.check && b.check.state === "unknown") return "unknown";
    return "up";
  }
  function stateDetail(b, kind) {
    const breaker = b.breaker || {};
    switch (kind) {
      case "open": return "on " + breaker.open_workers + " of " + breaker.workers + " workers";
      case "half": return "on " + breaker.half_open_workers + " of " + breaker.workers + " workers";
      case "down": return "by active checks";
      case "removed": return (b.state && b.state.value === "enabled" ? "" : b.state.value + "; ") + "no longer in the file, connections finishing";
      case "drain": return "open connections finish";
      case "unknown": return "first checks running";
      default: return "";
    }
  }

  // MARK: - Talking to the admin API
  const tokenKey = "fulcrum-admin-token";
  let pendingChange = null;
  function path(pool, address, action) {
    return "/pools/" + encodeURIComponent(pool) + "/backends/" + encodeURIComponent(address) + "/" + action;
  }
  async function change(method, url, body, label) {
    const headers = { "X-Fulcrum-Request": "1" };
    const token = sessionStorage.getItem(tokenKey);
    if (token) headers["Authorization"] = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
    } catch (error) {
      return notice("could not reach the admin API: " + error.message, false);
    }
    if (response.status === 401) {
      sessionStorage.removeItem(tokenKey);
      pendingChange = () => change(method, url, body, label);
      $("token-form").style.display = "block";
      $("token-input").focus();
      return notice(token ? "the token was refused; enter it again" : "this change needs the admin token", false);
    }
    let answer = null;
    try { answer = await response.json(); } catch (error) { answer = null; }
    if (!response.ok) {
      const message = answer && answer.error ? answer.error + (answer.hint ? " (" + answer.hint + ")" : "") : "HTTP " + response.status;
      return notice(label + " failed: " + message, false);
    }
    notice(label + ": applied by every worker", true);
    refresh();
  }
  let noticeTimer = null;
  function notice(text, ok) {
    const box = $("notice");
    box.textContent = text;
    box.className = ok ? "ok" : "";
    box.style.display = "block";
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { box.style.display = "none"; }, ok ? 4000 : 10000);
  }
  $("token-form").onsubmit = (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(tokenKey, value);
    $("token-input").value = "";
    $("token-form").style.display = "none";
    const retry = pendingChange;
    pendingChange = null;
    if (retry) retry();
  };
  $("token-cancel").onclick = () => { pendingChange = null; $("token-form").style.display = "none"; };

  // MARK: - Events of each backend
  // Fetched when a backend first shows, when its state changes, while its history is open, and every
  // EVENTS_REFETCH_MS otherwise: not one request per backend every refresh.
  const events = new Map(); // key -> {list, fetched, signature, open, loading}
  async function loadEvents(key, pool, address) {
    const entry = events.get(key);
    if (entry.loading) return;
    entry.loading = true;
    try {
      const response = await fetch(path(pool, address, "events"), { cache: "no-store" });
      if (response.ok) {
        const body = await response.json();
        entry.list = Array.isArray(body.events) ? body.events : [];
        entry.fetched = Date.now();
        renderEvents(key);
      }
    } catch (error) {
      // The next refresh tries again; the header shows whether the admin API answers.
    } finally {
      entry.loading = false;
    }
  }
  function renderEvents(key) {
    const entry = events.get(key);
    const cell = rows.get(key) && rows.get(key).eventsCell;
    if (!entry || !cell) return;
    const list = entry.list || [];
    const shown = entry.open ? list.slice().reverse() : list.slice(-EVENTS_INLINE).reverse();
    const items = shown.map((e) => el("li", null,
      el("time", { datetime: e.at, title: e.at }, clock(e.at)),
      el("span", { class: "tag" }, e.source),
      e.message.startsWith(e.source + ": ") ? e.message.slice(e.source.length + 2) : e.message));
    const more = list.length > EVENTS_INLINE
      ? el("button", { type: "button", onclick: () => { entry.open = !entry.open; renderEvents(key); } },
          entry.open ? "show the last " + EVENTS_INLINE : "show all " + list.length + " events")
      : null;
    cell.replaceChildren(el("div", { class: "ev" },
      list.length ? el("ul", null, items) : el("span", null, entry.fetched ? "no events yet" : "loading events…"), more));
  }

  // MARK: - Rendering
  const rows = new Map(); // key -> {row, eventsRow, eventsCell, cells}
  const previous = new Map(); // key -> {at, in, out, total} for rates

  function weightCell(b) {
    const w = b.weight || {};
    const admin = w.source === "admin";
    return [el("span", { class: "num" }, count(w.value)),
      el("span", { class: "src" + (admin ? " admin" : ""), title: admin ? "set via the admin API; the file says " + w.file : "from the configuration file" }, w.source || "file")];
  }
  function connectionsCell(b, key, now) {
    const c = b.connections || {};
    const parts = [el("span", { class: "num", title: "open now" }, count(c.active))];
    if (num(c.total) !== null) {
      parts.push(el("div", { class: "muted num", title: "accepted since start" }, count(c.total) + " total"));
      const before = previous.get(key);
      if (before && num(before.total) !== null && now > before.at) {
        parts.push(el("div", { class: "muted num" }, ((c.total - before.total) * 1000 / (now - before.at)).toFixed(1) + "/s"));
      }
    }
    if (num(b.max_connections) !== null) parts.push(el("div", { class: "muted" }, "max " + b.max_connections));
    return parts;
  }
  function bytesOf(b) {
    const x = b.bytes;
    if (!x || typeof x !== "object") return null;
    const input = num(x.in), output = num(x.out);
    return input === null && output === null ? null : { in: input, out: output };
  }
  function trafficCell(b, key, now) {
    const x = bytesOf(b);
    if (!x) return "–";
    const before = previous.get(key);
    const span = before && now > before.at ? (now - before.at) / 1000 : 0;
    const inRate = span && before.in !== null && x.in !== null ? (x.in - before.in) / span : null;
    const outRate = span && before.out !== null && x.out !== null ? (x.out - before.out) / span : null;
    return [
      el("div", { class: "num", title: "from clients to the backend" }, "↑ " + rate(inRate)),
      el("div", { class: "num", title: "from the backend to clients" }, "↓ " + rate(outRate)),
      el("div", { class: "muted num" }, bytes(x.in) + " / " + bytes(x.out)),
    ];
  }
  function percentiles(p) {
    if (!p || typeof p !== "object") return null;
    const values = ["p50", "p90", "p99"].map((k) => num(p[k]));
    return values.every((v) => v === null) ? null : values;
  }
  function latencyCell(b) {
    const lines = [];
    for (const [label, field] of [["connect", "connect_time_ms"], ["first byte", "first_byte_time_ms"]]) {
      const values = percentiles(b[field]);
      if (!values) continue;
      lines.push(el("div", { class: "num", title: label + " time p50 / p90 / p99 in ms" },
        el("span", { class: "muted" }, label + " "), values.map(ms).join(" / ") + " ms"));
    }
    return lines.length ? lines : "–";
  }
  function failuresOf(b) {
    const f = b.failures;
    if (!f || typeof f !== "object") return null;
    return Object.entries(f).filter(([, v]) => num(v) !== null);
  }
  function failuresCell(b) {
    const f = failuresOf(b);
    if (!f) return "–";
    const nonzero = f.filter(([, v]) => v > 0);
    if (!nonzero.length) return el("span", { class: "muted" }, "none");
    return nonzero.map(([kind, v]) => el("div", { class: "num bad" }, kind.replace(/_/g, " ") + " " + count(v)));
  }
  function healthCell(b) {
    const parts = [];
    if (b.check) {
      const c = b.check;
      const cls = c.state === "up" ? "good" : c.state === "down" ? "bad" : "muted";
      parts.push(el("div", null, el("span", { class: cls }, "check " + c.state),
        c.reason ? ": " + c.reason : "", c.since ? el("span", { class: "muted", title: c.since }, " · for " + ago(c.since)) : null));
    } else {
      parts.push(el("div", { class: "muted" }, "no active checks"));
    }
    const br = b.breaker || {};
    if (br.state && br.state !== "closed") {
      parts.push(el("div", null, el("span", { class: br.state === "open" ? "warn" : "muted" }, "breaker " + (br.summary || br.state)),
        br.since ? el("span", { class: "muted", title: br.since }, " · for " + ago(br.since)) : null));
    } else {
      parts.push(el("div", { class: "muted" }, "breaker closed"));
    }
    return parts;
  }
  function actionsCell(pool, b, kind) {
    const address = b.address;
    const state = b.state ? b.state.value : "enabled";
    const act = (action) => el("button", {
      type: "button", disabled: state === { drain: "drain", disable: "disabled", enable: "enabled" }[action] || undefined,
      title: { drain: "no new connections; open ones finish", disable: "no new connections (maintenance)", enable: "back into rotation" }[action],
      onclick: () => change("POST", path(pool, address, action), undefined, action + " " + address),
    }, action === "drain" ? "Drain" : action === "disable" ? "Disable" : "Enable");
    const input = el("input", { type: "number", min: 1, step: 1, "aria-label": "weight of " + address, placeholder: String(b.weight ? b.weight.value : "") });
    const setWeight = () => {
      const weight = Number(input.value);
      if (!Number.isInteger(weight) || weight < 1) return notice("the weight is a whole number from 1", false);
      input.value = "";
      change("POST", path(pool, address, "weight"), { weight }, "weight " + weight + " for " + address);
    };
    input.onkeydown = (event) => { if (event.key === "Enter") setWeight(); };
    const overridden = (b.weight && b.weight.source === "admin") || (b.state && b.state.source === "admin");
    return [
      el("div", null, act("drain"), " ", act("disable"), " ", act("enable")),
      el("div", { class: "row2" }, input, " ", el("button", { type: "button", onclick: setWeight }, "Set weight"),
        overridden ? [" ", el("button", { type: "button", title: "go back to what the file says",
          onclick: () => change("DELETE", path(pool, address, "override"), undefined, "clearing the overrides of " + address) }, "Reset")] : null),
    ];
  }

  // Sections and rows are kept and updated in place (never rebuilt), so a weight being typed keeps its focus.
  const sections = new Map(); // pool name -> {section, title, sub, counts, table, tbody, empty}
  const COLUMNS = ["state", "backend", "weight", "connections", "c-bytes", "c-latency", "c-failures", "health", "actions"];

  function poolSection(name) {
    let s = sections.get(name);
    if (s) return s;
    s = { title: el("h2"), sub: el("span", { class: "sub" }), counts: el("span", { class: "counts" }), tbody: el("tbody"),
          empty: el("div", { class: "empty" }, "no backends"), sources: el("div", { class: "sources" }) };
    s.title.append("Pool ", el("span", null, name), s.sub, s.counts);
    s.table = el("table", null, el("thead", null, el("tr", null,
      el("th", null, "State"), el("th", null, "Backend"), el("th", null, "Weight"), el("th", null, "Connections"),
      el("th", { class: "c-bytes" }, "Throughput"), el("th", { class: "c-latency" }, "Latency p50 / p90 / p99"),
      el("th", { class: "c-failures" }, "Failures"), el("th", null, "Health"), el("th", null, "Actions"))), s.tbody);
    s.section = el("section", { class: "pool", "data-pool": name }, s.title, s.sources, s.table, s.empty);
    sections.set(name, s);
    return s;
  }

  function backendRow(key) {
    let r = rows.get(key);
    if (r) return r;
    r = { row: el("tr"), eventsRow: el("tr", { class: "events" }), eventsCell: el("td", { colspan: COLUMNS.length }), cells: {} };
    for (const column of COLUMNS) {
      r.cells[column] = el("td", { class: column.startsWith("c-") || column === "actions" ? column : null });
      r.row.append(r.cells[column]);
    }
    r.eventsRow.append(r.eventsCell);
    rows.set(key, r);
    events.set(key, { list: null, fetched: 0, signature: "", open: false, loading: false });
    return r;
  }

  // Puts `wanted` in this order under `parent`, moving nodes only when the order changed.
  function order(parent, wanted) {
    const current = Array.from(parent.children);
    if (current.length === wanted.length && current.every((node, i) => node === wanted[i])) return;
    parent.replaceChildren(...wanted);
  }

  function renderPool(pool, now, seen) {
    const backends = Array.isArray(pool.backends) ? pool.backends : [];
    const s = poolSection(pool.name);
    const tally = {};
    for (const b of backends) { const k = classify(b); tally[k] = (tally[k] || 0) + 1; }
    const hasBytes = backends.some((b) => bytesOf(b));
    const hasLatency = backends.some((b) => percentiles(b.connect_time_ms) || percentiles(b.first_byte_time_ms));
    const hasFailures = backends.some((b) => failuresOf(b));
    s.table.className = [hasBytes ? "" : "hide-bytes", hasLatency ? "" : "hide-latency", hasFailures ? "" : "hide-failures"].join(" ");
    s.table.style.display = backends.length ? "" : "none";
    s.empty.style.display = backends.length ? "none" : "";
    const poolFacts = [pool.balance, pool.active_checks ? "active checks" : "no active checks",
      count(pool.connections_active) + " open", "queue " + count(pool.queue_length)];
    for (const key of ["retries", "replays", "hedges"]) if (num(pool[key]) !== null) poolFacts.push(key + " " + count(pool[key]));
    s.sub.textContent = poolFacts.join(" · ");
    const sources = Array.isArray(pool.discovery) ? pool.discovery : [];
    s.sources.replaceChildren(...sources.map((d) => {
      let text = "discovered by " + d.source + ": " + d.state + (d.since ? " for " + ago(d.since) : "") + " · "
        + count(d.backends) + " backend(s)";
      if (d.error) text += " · " + d.error + " (keeping the last known set)";
      if (d.last_update) text += " · " + d.last_update;
      if (num(d.removal_held) > 0) text += " · removal of " + d.removal_held + " held for confirmation";
      if (num(d.ignored_records) > 0) text += " · " + d.ignored_records + " beyond max_backends ignored";
      return el("div", { class: "source s-" + (d.state === "ok" ? "up" : d.state === "stale" ? "down" : "unknown") }, text);
    }));
    s.counts.replaceChildren(...Object.keys(LABELS).filter((k) => tally[k]).map((k) => el("span", { class: "s-" + k }, tally[k] + " " + LABELS[k])));

    const wanted = [];
    for (const b of backends) {
      const key = pool.name + "|" + b.address;
      seen.add(key);
      const kind = classify(b);
      const r = backendRow(key);
      r.row.className = "backend s-" + kind;
      r.eventsRow.className = "events s-" + kind;
      const detail = stateDetail(b, kind);
      r.cells.state.replaceChildren(el("span", { class: "pill", title: b.up ? "receiving new connections" : "not receiving new connections" }, LABELS[kind]),
        detail ? el("div", { class: "muted" }, detail) : "");
      r.cells.backend.replaceChildren(el("div", { class: "addr" }, b.address),
        b.priority ? el("div", { class: "muted" }, "priority " + b.priority) : "",
        b.state && b.state.source === "admin" ? el("div", { class: "muted" }, "state set via admin (file: " + b.state.file + ")") : "");
      r.cells.weight.replaceChildren(...weightCell(b));
      append(emptied(r.cells.connections), [connectionsCell(b, key, now)]);
      append(emptied(r.cells["c-bytes"]), [trafficCell(b, key, now)]);
      append(emptied(r.cells["c-latency"]), [latencyCell(b)]);
      append(emptied(r.cells["c-failures"]), [failuresCell(b)]);
      append(emptied(r.cells.health), [healthCell(b)]);
      if (!r.cells.actions.contains(document.activeElement)) append(emptied(r.cells.actions), [actionsCell(pool.name, b, kind)]);
      wanted.push(r.row, r.eventsRow);

      const c = b.connections || {};
      const x = bytesOf(b) || {};
      previous.set(key, { at: now, in: num(x.in), out: num(x.out), total: num(c.total) });

      const entry = events.get(key);
      const signature = JSON.stringify([b.state, b.weight, b.check, b.breaker && b.breaker.summary, b.breaker && b.breaker.since, b.listed]);
      if (entry.signature !== signature || entry.open || now - entry.fetched > EVENTS_REFETCH_MS) {
        entry.signature = signature;
        loadEvents(key, pool.name, b.address);
      }
      renderEvents(key);
    }
    order(s.tbody, wanted);
    return s.section;
  }
  function emptied(node) { node.replaceChildren(); return node; }

  function render(status) {
    const now = Date.now();
    const f = status.fulcrum || {};
    append(emptied($("facts")), [
      "version ", el("b", null, f.version), " · pid ", el("b", null, f.pid), " · ", el("b", null, f.workers), " workers · up ",
      el("b", null, duration(f.uptime_seconds)), f.config ? [" · config ", el("b", null, f.config)] : "",
      " · generation ", el("b", null, f.generation),
      f.reloads ? " · reloads " + f.reloads.succeeded + " ok, " + f.reloads.failed + " failed" : ""]);

    const listeners = Array.isArray(status.listeners) ? status.listeners : [];
    const active = (l) => l.connections ? l.connections.active : undefined;
    const showConnections = listeners.some((l) => num(active(l)) !== null);
    document.querySelector(".c-lconn").style.display = showConnections ? "" : "none";
    $("listeners").replaceChildren(...listeners.map((l) => el("tr", null,
      el("td", null, l.name), el("td", { class: "addr" }, l.address), el("td", null, l.pool),
      showConnections ? el("td", { class: "num" }, count(active(l))) : null)));

    const seen = new Set();
    const pools = (Array.isArray(status.pools) ? status.pools : []).map((p) => renderPool(p, now, seen));
    order($("pools"), pools);
    for (const name of Array.from(sections.keys())) if (!pools.includes(sections.get(name).section)) sections.delete(name);
    for (const key of Array.from(rows.keys())) {
      if (!seen.has(key)) { rows.delete(key); events.delete(key); previous.delete(key); }
    }
  }

  // MARK: - Refreshing
  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    const live = $("live");
    try {
      const controller = new AbortController();
      const abort = setTimeout(() => controller.abort(), 5000);
      const response = await fetch("/status", { cache: "no-store", signal: controller.signal });
      clearTimeout(abort);
      if (!response.ok) throw new Error("HTTP " + response.status);
      const status = await response.json();
      const serverNow = status.fulcrum ? Date.parse(status.fulcrum.now) : NaN;
      clockSkew = isNaN(serverNow) ? 0 : serverNow - Date.now();
      render(status);
      live.className = "";
      live.textContent = "live · " + new Date().toLocaleTimeString("en-GB", { hour12: false });
    } catch (error) {
      live.className = "stale";
      live.textContent = "not answering (" + (error.name === "AbortError" ? "timed out" : error.message) + "), retrying";
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }
  refresh();
})();
</script>
</body>
</html>
"""#
}
