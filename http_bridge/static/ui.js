// The kvwire cluster page: polls ./cluster every 500 ms and draws each node; a key browser over the REST API.
// Everything from the network reaches the DOM as text (textContent, Text nodes), never as HTML.
"use strict";

(() => {
  const POLL_MS = 500;
  // The bridge answers within its 0.4 s per node (all asked at once): past this it is
  // hung, and the cards must say UNKNOWN rather than go on showing the last state.
  const FETCH_TIMEOUT_MS = 1500;
  // Relative to /kv-store/v1/ui/, so the page also works behind a proxy that adds a path prefix.
  const CLUSTER_URL = "cluster";
  const KV_URL = "../kv/";

  const $ = (id) => document.getElementById(id);
  // endpoint -> {nodeId, upSince, downSince}: what earlier polls said, to name a node that is down.
  const seen = new Map();
  let timer = null;
  // A poll is waiting on the bridge: showing the tab again then must not start a second loop.
  let inFlight = false;

  // --- DOM helpers -------------------------------------------------------------------

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function field(label, value, attributes) {
    return [el("dt", null, label), el("dd", attributes, value)];
  }

  // --- formatting --------------------------------------------------------------------

  const isNumber = (value) => typeof value === "number" && Number.isFinite(value);

  function seconds(value) {
    if (!isNumber(value)) return "—";
    if (value < 0.01) return `${(value * 1000).toFixed(1)} ms`;
    if (value < 1) return `${Math.round(value * 1000)} ms`;
    if (value < 60) return `${value.toFixed(1)} s`;
    if (value < 3600) return `${Math.floor(value / 60)} min ${Math.floor(value % 60)} s`;
    if (value < 86400) return `${Math.floor(value / 3600)} h ${Math.floor((value % 3600) / 60)} min`;
    return `${Math.floor(value / 86400)} d ${Math.floor((value % 86400) / 3600)} h`;
  }

  const milliseconds = (value) => (isNumber(value) ? seconds(value / 1000) : "—");

  function count(value) {
    return isNumber(value) ? value.toLocaleString("en") : "—";
  }

  function rate(requests) {
    if (!requests || !isNumber(requests.per_s)) return "—";
    return `${requests.per_s.toLocaleString("en", { maximumFractionDigits: 1 })} /s`;
  }

  function p99(requests) {
    if (!requests || !isNumber(requests.p99_ms)) return "—";
    return `${requests.p99_ms.toLocaleString("en", { maximumFractionDigits: 2 })} ms`;
  }

  // --- the nodes ---------------------------------------------------------------------

  function cardFor(endpoint) {
    const container = $("nodes");
    for (const card of container.children) {
      if (card.dataset.endpoint === endpoint) return card;
    }
    const card = el("article", { class: "node", "data-endpoint": endpoint, "data-state": "UNKNOWN" });
    container.append(card);
    return card;
  }

  function badge(state) {
    return el("span", { class: `badge ${state.toLowerCase()}` }, state);
  }

  function peersTable(peers) {
    if (!Array.isArray(peers) || peers.length === 0) return el("p", { class: "muted" }, "No peers (a single node).");
    const rows = peers.filter((peer) => peer !== null && typeof peer === "object").map((peer) => {
      const state = peer.state === "UP" || peer.state === "DOWN" ? peer.state : peer.healthy ? "UP" : "DOWN";
      return el(
        "tr",
        { "data-peer": peer.node_id, "data-state": state },
        el("td", null, peer.node_id ?? "?"),
        el("td", null, badge(state)),
        el("td", { class: "num" }, milliseconds(peer.last_heard_ms)),
        el("td", { class: `num${peer.pending_hints > 0 ? " warn" : ""}` }, count(peer.pending_hints)),
      );
    });
    return el(
      "table",
      { class: "peers" },
      el("caption", null, "Peers, as this node sees them"),
      el(
        "thead",
        null,
        el("tr", null, el("th", { scope: "col" }, "Peer"), el("th", { scope: "col" }, "State"),
          el("th", { scope: "col", class: "num" }, "Last heard"), el("th", { scope: "col", class: "num" }, "Hints")),
      ),
      el("tbody", null, ...rows),
    );
  }

  function drawUp(card, node, now) {
    const health = node.health || {};
    const cluster = health.cluster || {};
    const quorum = cluster.has_quorum === true;
    const healthy = isNumber(cluster.healthy_nodes) && isNumber(cluster.total_nodes)
      ? `${cluster.healthy_nodes} of ${cluster.total_nodes} healthy, ${cluster.required_for_quorum} needed`
      : "";
    card.replaceChildren(
      el("header", null,
        el("h2", null, node.node_id ?? "?"),
        el("span", { class: "endpoint" }, node.endpoint),
        badge("UP")),
      el("dl", null,
        ...field("Status", health.status ?? "—", { class: `status ${health.status ?? ""}` }),
        ...field("Quorum", el("span", { class: quorum ? "ok" : "bad" }, quorum ? "yes" : "no"),
          { class: "quorum", "data-quorum": quorum ? "yes" : "no", title: healthy }),
        ...field("Requests", rate(health.requests), { class: "rate" }),
        ...field("p99 latency", p99(health.requests), { class: "p99" }),
        ...field("Keys", count(health.keys)),
        ...field("Connections", count(health.connections)),
        ...field("Uptime", seconds(health.uptime_s)),
        ...field("HEALTH took", milliseconds(node.latency_ms))),
      peersTable(cluster.nodes),
    );
    const previous = seen.get(node.endpoint);
    seen.set(node.endpoint, { nodeId: node.node_id, upSince: previous?.upSince ?? now, downSince: null });
  }

  function drawDown(card, node, now, views) {
    const previous = seen.get(node.endpoint) || {};
    const nodeId = node.node_id ?? previous.nodeId ?? null;
    const downSince = previous.downSince ?? now;
    seen.set(node.endpoint, { nodeId, upSince: null, downSince });
    card.replaceChildren(
      el("header", null,
        el("h2", null, nodeId ?? "?"),
        el("span", { class: "endpoint" }, node.endpoint),
        badge("DOWN")),
      el("p", { class: "error" }, node.error || "unreachable"),
      el("dl", null, ...field("Seen down for", seconds((now - downSince) / 1000), { class: "down-for" })),
      viewsTable(views),
    );
    if (nodeId) card.dataset.nodeId = nodeId;
  }

  // How the reachable nodes see ``nodeId``: [{node_id, state, last_heard_ms, pending_hints}, ...],
  // the hints being the writes they hold for it.
  function peerViews(nodes, nodeId) {
    const views = [];
    if (!nodeId) return views;
    for (const other of nodes) {
      const peers = other.reachable && other.health && other.health.cluster && other.health.cluster.nodes;
      if (!Array.isArray(peers)) continue;
      const peer = peers.find((entry) => entry.node_id === nodeId);
      if (peer) views.push({ ...peer, node_id: other.node_id });
    }
    return views;
  }

  function viewsTable(views) {
    if (views.length === 0) return el("p", { class: "muted" }, "No reachable node reports on it.");
    const table = peersTable(views);
    table.querySelector("caption").textContent = "How its peers see it (hints: writes they hold for it)";
    return table;
  }

  function render(document_) {
    const now = Date.now();
    const nodes = Array.isArray(document_.nodes) ? document_.nodes : [];
    let up = 0;
    let quorum = false;
    for (const node of nodes) {
      const card = cardFor(node.endpoint);
      card.classList.remove("stale");
      if (node.reachable) {
        up += 1;
        quorum = quorum || (node.health && node.health.cluster && node.health.cluster.has_quorum === true);
        drawUp(card, node, now);
        card.dataset.state = "UP";
      } else {
        drawDown(card, node, now, peerViews(nodes, node.node_id ?? seen.get(node.endpoint)?.nodeId));
        card.dataset.state = "DOWN";
      }
      if (node.node_id) card.dataset.nodeId = node.node_id;
    }
    const summary = $("summary");
    summary.textContent = `${up} of ${nodes.length} nodes UP · ${quorum ? "quorum: writes accepted" : "no quorum: writes refused"}`;
    summary.className = up === nodes.length ? "ok" : quorum ? "warn" : "bad";
    $("updated").textContent = `Updated ${new Date(now).toLocaleTimeString("en-GB")} · every ${POLL_MS} ms`;
  }

  function showBanner(message) {
    const banner = $("banner");
    banner.hidden = message === null;
    banner.textContent = message ?? "";
  }

  // The bridge did not answer: what the cards show is from an earlier poll, so no
  // state, summary or badge may still read as current.
  function markStale() {
    for (const card of $("nodes").children) {
      card.classList.add("stale");
      card.dataset.state = "UNKNOWN";
      card.querySelector("header .badge")?.replaceWith(badge("UNKNOWN"));
    }
    const summary = $("summary");
    summary.textContent = "Node states unknown: the bridge did not answer";
    summary.className = "bad";
  }

  async function poll() {
    timer = null;
    if (document.hidden || inFlight) return; // resumed by visibilitychange, or the poll in flight goes on
    inFlight = true;
    const started = performance.now();
    const controller = new AbortController();
    const abort = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    let body = null;
    try {
      const response = await fetch(CLUSTER_URL, { cache: "no-store", signal: controller.signal, headers: { Accept: "application/json" } });
      body = await response.json();
      if (!response.ok) throw new Error(body && body.error ? body.error : `HTTP ${response.status}`);
    } catch (error) {
      body = null;
      markStale();
      showBanner(`The bridge did not answer (${error.name === "AbortError" ? "timed out" : error.message}); node states are unknown.`);
    }
    try {
      if (body !== null) {
        render(body);
        showBanner(null);
      }
    } catch (error) {
      // The bridge answered: a report the page cannot draw is the page's trouble, not the bridge's.
      markStale();
      showBanner(`The page could not show the bridge's answer (${error.message}); node states are unknown.`);
    } finally {
      clearTimeout(abort);
      inFlight = false;
    }
    timer = setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !inFlight) poll();
  });

  // --- the key browser ---------------------------------------------------------------

  function showResult(status, text, body) {
    $("kb-result").hidden = false;
    const line = $("kb-status");
    line.textContent = text;
    line.className = status === null ? "bad" : status < 300 ? "ok" : status === 404 ? "warn" : "bad";
    line.dataset.status = status === null ? "" : String(status);
    $("kb-body").textContent = body ?? "";
  }

  async function keyRequest(method) {
    const key = $("kb-key").value;
    if (key === "") {
      showResult(null, "Enter a key.", "");
      return;
    }
    if (key === "." || key === "..") {
      // A browser resolves them as path segments (percent-encoded too) before sending.
      showResult(null, `The key "${key}" cannot be named in a URL; use kvwire-cli or the Python client.`, "");
      return;
    }
    let url;
    try {
      url = KV_URL + encodeURIComponent(key) + "/";
    } catch (error) {
      showResult(null, "The key is not valid Unicode.", "");
      return;
    }
    const options = { method, cache: "no-store", headers: { Accept: "application/json" } };
    if (method === "GET") {
      url += `?consistency=${encodeURIComponent($("kb-consistency").value)}`;
    } else if (method === "PUT") {
      const text = $("kb-value").value;
      try {
        JSON.parse(text);
      } catch (error) {
        showResult(null, `The value is not JSON: ${error.message}`, "");
        return;
      }
      // The text as typed, not re-serialised: integers past 2^53 reach the bridge exactly.
      options.body = `{"value": ${text}}`;
      options.headers["Content-Type"] = "application/json";
    }
    let response;
    let body;
    try {
      response = await fetch(url, options);
      body = await response.text();
    } catch (error) {
      showResult(null, `${method} failed: the bridge did not answer (${error.message})`, "");
      return;
    }
    let message = "";
    try {
      const parsed = JSON.parse(body);
      if (parsed && typeof parsed.error === "string") message = parsed.error;
    } catch (error) {
      // not JSON: shown as it came
    }
    const what = { GET: "read", PUT: response.status === 201 ? "created" : "replaced", DELETE: "deleted" }[method];
    const text = response.ok
      ? `${method} ${key}: ${response.status} ${response.statusText} (${what})`
      : `${method} ${key}: ${response.status} ${response.statusText}${message ? ` (${message})` : ""}`;
    showResult(response.status, text, body);
  }

  function start() {
    $("kb-form").addEventListener("submit", (event) => {
      event.preventDefault();
      keyRequest("GET");
    });
    $("kb-put").addEventListener("click", () => keyRequest("PUT"));
    $("kb-delete").addEventListener("click", () => keyRequest("DELETE"));
    poll();
  }

  start();
})();
