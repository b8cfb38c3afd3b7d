/* The chat page's script: applies the websocket protocol (docs/protocol.md, docs/ui.md).
 *
 * The server renders the history as of a snapshot and embeds it (#chat-snapshot) with its
 * seq (#chat[data-seq]). This script adopts that state, connects, sends
 * {"type": "resume", "last_seq": seq} and from then on applies every session event exactly
 * once, in seq order: an event with seq <= lastSeq is ignored, a jump (seq > lastSeq + 1)
 * asks for a resume from lastSeq, and a snapshot frame replaces the whole view.
 *
 * Model output is rendered with marked and always sanitised by DOMPurify; raw HTML in it is
 * shown as text. Everything else is put in the page with textContent.
 */
(function () {
  "use strict";

  const root = document.getElementById("chat");
  document.documentElement.classList.add("js");
  setupSidebar();
  if (!root) return;

  const config = readJson("chat-config");
  const initial = readJson("chat-snapshot");
  const longRunningTools = new Set(config.long_running_tools || []);

  const RECONNECT_BASE_MS = 500;
  const RECONNECT_MAX_MS = 30000;
  const STABLE_AFTER_MS = 10000; // a connection this old resets the backoff
  const PING_EVERY_MS = 20000;
  const PONG_TIMEOUT_MS = 10000;
  const RESUME_RETRY_MS = 5000;
  const RENDER_DELAY_MS = 30;

  const el = {
    messages: byId("messages"),
    live: byId("answer-live"),
    conn: byId("conn"),
    title: byId("chat-title"),
    renameInput: byId("rename-title"),
    usage: byId("session-usage"),
    banner: byId("demo-banner"),
    notice: byId("notice"),
    form: byId("composer"),
    input: byId("prompt"),
    send: byId("send"),
    stop: byId("stop"),
  };

  const state = {
    lastSeq: null, // the last seq applied; null until the first snapshot
    messages: new Map(), // sequence -> message
    cpLength: new Map(), // sequence -> content length in code points (the offsets' unit)
    progress: new Map(), // sequence -> {fraction, text} of an inline tool's tool_progress
    operations: new Map(), // operation id -> operation
    title: "",
    running: false, // a turn runs: the input may not send (the double-send policy)
    stopping: false,
    turnUsage: null,
    pending: null, // the send frame waiting for its ack (resent with the same id)
    gone: false, // the session does not exist (any more) for this user
    socket: null,
    conn: "connecting",
    connectedOnce: false,
    attempt: 0,
    liveSince: 0,
    reconnectTimer: null,
    pingTimer: null,
    pongTimer: null,
    resumeFrom: undefined, // the cursor of the last resume sent (null: a snapshot was asked)
    resumeSentAt: 0,
    dirty: new Set(),
    renderTimer: null,
    spoken: new Map(), // sequence -> characters already given to the live region
  };

  // --- Markdown, safely -----------------------------------------------------------------

  const PURIFY_CONFIG = {
    USE_PROFILE: { html: true },
    FORBID_TAGS: [
      "style", "img", "picture", "source", "video", "audio", "iframe", "form", "input",
      "button", "textarea", "select", "option", "svg", "math", "link", "meta", "base",
    ],
    FORBID_ATTR: ["style", "id", "name", "srcset"],
  };

  if (window.DOMPurify) {
    window.DOMPurify.addHook("uponSanitizeAttribute", function (node, data) {
      // Model output must not borrow the page's own classes (a fake banner, say).
      if (data.attrName === "class") {
        data.keepAttr = node.nodeName === "CODE" && /^language-[\w+#.-]{1,40}$/.test(data.attrValue);
      }
    });
    window.DOMPurify.addHook("afterSanitizeAttributes", function (node) {
      if (node.nodeName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
  }

  if (window.marked) {
    window.marked.use({
      gfm: true,
      breaks: false,
      renderer: {
        // Raw HTML written by the model is shown as text, never interpreted.
        html: function (token) {
          return escapeHtml(token.text || token.raw || "");
        },
        // No remote images (they could leak data to another server): show the alt text.
        image: function (token) {
          return escapeHtml("[image: " + (token.text || token.href || "") + "]");
        },
      },
    });
  }

  function renderMarkdown(target, text) {
    if (!window.marked || !window.DOMPurify) {
      target.textContent = text;
      target.classList.add("plain");
      return;
    }
    const html = window.marked.parse(text, { async: false });
    target.innerHTML = window.DOMPurify.sanitize(html, PURIFY_CONFIG);
  }

  // --- the view: messages as DOM ----------------------------------------------------------

  function setMessage(message) {
    state.messages.set(message.sequence, Object.assign({}, message));
    state.cpLength.set(message.sequence, codePoints(message.content || ""));
    if (message.status !== "pending") state.progress.delete(message.sequence);
    markDirty(message.sequence);
  }

  function markDirty(sequence) {
    state.dirty.add(sequence);
    if (state.renderTimer === null) state.renderTimer = setTimeout(flush, RENDER_DELAY_MS);
  }

  function flush() {
    state.renderTimer = null;
    const stick = nearBottom();
    const dirty = Array.from(state.dirty).sort(function (a, b) { return a - b; });
    state.dirty.clear();
    dirty.forEach(renderMessage);
    const empty = byId("empty-chat");
    if (empty && state.messages.size) empty.remove();
    updateComposer();
    updateTimers();
    if (stick) el.messages.scrollTop = el.messages.scrollHeight;
  }

  function nearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 120;
  }

  function renderMessage(sequence) {
    const message = state.messages.get(sequence);
    const existing = document.getElementById("msg-" + sequence);
    if (!message) {
      if (existing) existing.remove();
      return;
    }
    const node = buildMessage(message);
    if (existing) {
      // Keep the reader's open/closed choice of expandable parts.
      const before = existing.querySelectorAll("details");
      const after = node.querySelectorAll("details");
      if (before.length === after.length) {
        before.forEach(function (d, i) { after[i].open = d.open; });
      }
      existing.replaceWith(node);
    } else {
      insertInOrder(node, sequence);
    }
    speak(message);
  }

  function insertInOrder(node, sequence) {
    const others = el.messages.querySelectorAll("article.msg");
    for (const other of others) {
      if (Number(other.dataset.sequence) > sequence) {
        // Turn footers belong to the message before them: insert before those too.
        let anchor = other;
        while (anchor.previousElementSibling && anchor.previousElementSibling.classList.contains("turn-foot")) {
          anchor = anchor.previousElementSibling;
        }
        el.messages.insertBefore(node, anchor);
        return;
      }
    }
    el.messages.appendChild(node);
  }

  function buildMessage(m) {
    const article = make("article", "msg msg-" + m.role);
    article.id = "msg-" + m.sequence;
    article.dataset.sequence = String(m.sequence);
    article.dataset.role = m.role;
    article.dataset.status = m.status;

    const head = make("div", "msg-head");
    const who = make("span", "msg-who");
    const isTool = m.role === "tool" || m.role === "function";
    if (m.role === "user") who.textContent = "You";
    else if (m.role === "assistant") who.textContent = "Assistant";
    else if (isTool) {
      who.append("Tool ", make("code", null, m.name || "tool"));
    } else who.textContent = capitalise(m.role);
    head.appendChild(who);
    const badge = statusBadge(m.status);
    if (badge) head.appendChild(badge);
    article.appendChild(head);

    if (isTool) {
      article.appendChild(m.status === "pending" ? pendingTool(m) : toolResult(m));
    } else if (m.role === "system" || m.role === "developer") {
      const details = make("details", "system-msg");
      details.appendChild(make("summary", null, capitalise(m.role) + " instructions"));
      details.appendChild(make("div", "msg-body plain", m.content || ""));
      article.appendChild(details);
    } else {
      if (m.content) {
        const body = make("div", "msg-body " + (m.role === "user" ? "plain" : "md"));
        if (m.role === "user") body.textContent = m.content;
        else renderMarkdown(body, m.content);
        article.appendChild(body);
      } else if (m.status === "streaming") {
        article.appendChild(make("div", "msg-body typing", "…"));
      }
      if (m.refusal) article.appendChild(make("p", "refusal", "Refused: " + m.refusal));
      const calls = Array.isArray(m.tool_calls) ? m.tool_calls : [];
      if (calls.length) {
        const box = make("div", "tool-calls");
        calls.forEach(function (call) {
          const fn = (call && call.function) || {};
          const details = make("details", "tool-call");
          const summary = make("summary", null, "Called ");
          summary.appendChild(make("code", null, fn.name || "tool"));
          details.appendChild(summary);
          details.appendChild(make("pre", null, prettyJson(fn.arguments || "")));
          box.appendChild(details);
        });
        article.appendChild(box);
      }
    }
    return article;
  }

  function statusBadge(status) {
    const labels = { streaming: "Writing…", pending: "Working…", interrupted: "Stopped", failed: "Failed" };
    if (!labels[status]) return null;
    return make("span", "badge badge-" + status, labels[status]);
  }

  function operationFor(m) {
    for (const op of state.operations.values()) {
      if (op.message_sequence === m.sequence || (m.tool_call_id && op.tool_call_id === m.tool_call_id)) {
        return op;
      }
    }
    return null;
  }

  function isLongRunning(m) {
    return Boolean(operationFor(m)) || longRunningTools.has(m.name);
  }

  function pendingTool(m) {
    const name = m.name || "tool";
    if (!isLongRunning(m)) {
      const p = make("p", "tool-running");
      p.append(spinner(), " Running ", make("code", null, name), "…");
      const progress = state.progress.get(m.sequence);
      if (progress && progress.text) p.append(" ", make("span", "op-text", progress.text));
      return p;
    }
    const op = operationFor(m);
    const box = make("div", "op-widget");
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "Long-running tool " + name);
    const line = make("p", "op-line");
    const strong = make("strong", null, "Working on ");
    strong.appendChild(make("code", null, name));
    const elapsed = make("span", "elapsed");
    elapsed.dataset.since = (op && (op.started_at || op.created_at)) || m.created_at || "";
    line.append(spinner(), " ", strong, " ", elapsed);
    box.appendChild(line);

    let fraction = null;
    let text = "";
    if (op) {
      fraction = typeof op.progress === "number" ? op.progress : null;
      text = op.progress_text || (op.status === "pending" ? "Queued…" : "");
    }
    const inline = state.progress.get(m.sequence);
    if (inline) {
      if (typeof inline.fraction === "number") fraction = inline.fraction;
      if (inline.text) text = inline.text;
    }
    const bar = make("progress", "op-progress", "Working…");
    bar.max = 1;
    if (fraction !== null) {
      bar.value = Math.max(0, Math.min(1, fraction));
      bar.setAttribute("aria-valuetext", Math.round(fraction * 100) + "%");
    }
    bar.setAttribute("aria-label", "Progress of " + name);
    box.appendChild(bar);
    box.appendChild(make("p", "op-text", text));
    box.appendChild(make("p", "op-hint",
      "This runs on the server: you can close this tab and come back. The result will be here."));
    return box;
  }

  function toolResult(m) {
    const long = isLongRunning(m);
    const op = operationFor(m);
    const details = make("details", "tool-result" + (m.status === "failed" ? " is-failed" : ""));
    details.open = long;
    const summary = make("summary", null, m.status === "failed" ? "Error from " : "Result of ");
    summary.appendChild(make("code", null, m.name || "tool"));
    let content = m.content || "";
    if (!content && op && op.error) content = op.error;
    if (!long) summary.append(": ", make("span", "preview", truncate(content, 80)));
    details.appendChild(summary);
    const output = make("div", "tool-output " + (long ? "md" : "plain"));
    if (long) renderMarkdown(output, content);
    else output.textContent = content;
    details.appendChild(output);
    return details;
  }

  function spinner() {
    const s = make("span", "spinner");
    s.setAttribute("aria-hidden", "true");
    return s;
  }

  // The streaming answer, for screen readers: finished sentences go to a polite live region.
  function speak(m) {
    if (m.role !== "assistant") return;
    const text = m.content || "";
    const done = state.spoken.get(m.sequence);
    if (done === undefined) {
      // Only answers that stream while the page is open are read out.
      if (m.status !== "streaming") return;
      state.spoken.set(m.sequence, 0);
      return speak(m);
    }
    let upto = text.length;
    if (m.status === "streaming") {
      const cut = Math.max(text.lastIndexOf(". "), text.lastIndexOf("\n"), text.lastIndexOf("? "), text.lastIndexOf("! "));
      upto = cut + 1;
    }
    if (upto > done) {
      el.live.appendChild(make("span", null, text.slice(done, upto) + " "));
      state.spoken.set(m.sequence, upto);
    }
    if (m.status !== "streaming") state.spoken.set(m.sequence, Infinity);
  }

  // --- elapsed time of long-running tools ---------------------------------------------------

  let clock = null;

  function updateTimers() {
    const spans = el.messages.querySelectorAll(".elapsed[data-since]");
    spans.forEach(function (span) {
      const since = Date.parse(span.dataset.since);
      if (!isNaN(since)) span.textContent = "for " + duration(Date.now() - since);
    });
    if (spans.length && clock === null) clock = setInterval(updateTimers, 1000);
    if (!spans.length && clock !== null) {
      clearInterval(clock);
      clock = null;
    }
  }

  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const r = s % 60;
    if (h) return h + " h " + m + " min";
    if (m) return m + " min " + String(r).padStart(2, "0") + " s";
    return r + " s";
  }

  // --- applying frames ------------------------------------------------------------------

  function applySnapshot(snap) {
    state.lastSeq = snap.seq;
    const incoming = new Map();
    (snap.messages || []).forEach(function (m) { incoming.set(m.sequence, m); });
    for (const sequence of Array.from(state.messages.keys())) {
      if (!incoming.has(sequence)) {
        state.messages.delete(sequence);
        markDirty(sequence);
      }
    }
    state.operations.clear();
    (snap.operations || []).forEach(function (op) { state.operations.set(op.id, op); });
    incoming.forEach(setMessage);
    // Messages already in the page (server-rendered) may have no element yet in state.
    el.messages.querySelectorAll("article.msg").forEach(function (node) {
      if (!incoming.has(Number(node.dataset.sequence))) node.remove();
    });
    if (snap.session) {
      setTitle(snap.session.title || "");
      if (snap.session.usage) setSessionUsage(snap.session.usage);
    }
    if (snap.model) setDemo(Boolean(snap.model.offline_demo));
    // `running` says whether a turn holds the session (operations do not); older servers
    // without it are read from the message statuses.
    state.running = typeof snap.running === "boolean" ? snap.running : turnRunningFrom(snap);
    if (!state.running) state.stopping = false;
    updateComposer();
  }

  // A turn runs while a message streams or an inline tool is pending; a pending tool
  // message with an operation belongs to the operation, not to a turn.
  function turnRunningFrom(snap) {
    const ops = new Set((snap.operations || [])
      .filter(function (op) { return op.status === "pending" || op.status === "running"; })
      .map(function (op) { return op.message_sequence; }));
    return (snap.messages || []).some(function (m) {
      return m.status === "streaming" || (m.status === "pending" && !ops.has(m.sequence));
    });
  }

  function handleFrame(frame) {
    if (!frame || typeof frame !== "object") return;
    if (frame.type === "hello") return onHello(frame);
    if (frame.type === "snapshot") return applySnapshot(frame);
    if (typeof frame.seq !== "number") return onSocketFrame(frame);
    if (state.lastSeq === null) return requestSnapshot();
    if (frame.seq <= state.lastSeq) return; // already applied
    if (frame.seq > state.lastSeq + 1) return resume(); // a gap: ask for what is missing
    if (applyEvent(frame) === false) return requestSnapshot(); // could not apply: start over
    state.lastSeq = frame.seq;
  }

  // Returns false when the event does not fit the view (a text gap): only a snapshot helps.
  function applyEvent(e) {
    switch (e.type) {
      case "message_created":
      case "message_updated":
      case "tool_result":
        setMessage(e.message);
        return true;
      case "text_delta":
        return applyTextDelta(e);
      case "tool_call":
        return applyToolCall(e);
      case "tool_progress": {
        state.progress.set(e.message_sequence, { fraction: e.fraction, text: e.text });
        markDirty(e.message_sequence);
        return true;
      }
      case "turn_started":
        state.running = true;
        state.stopping = false;
        state.turnUsage = null;
        el.live.textContent = "";
        updateComposer();
        return true;
      case "usage":
        state.turnUsage = e.turn_usage || state.turnUsage;
        if (e.session_usage) setSessionUsage(e.session_usage);
        return true;
      case "turn_finished":
        state.running = false;
        state.stopping = false;
        turnFooter(e.status, e.turn_usage || state.turnUsage);
        updateComposer();
        return true;
      case "error":
        addNotice("turn-error", errorText(e));
        return true;
      case "title_updated":
        setTitle(e.title || "");
        return true;
      case "operation_started":
      case "operation_in_progress":
      case "operation_completed":
      case "operation_failed":
        return applyOperation(e);
      default:
        return true; // an event this page does not show: its seq still counts
    }
  }

  function applyTextDelta(e) {
    const m = state.messages.get(e.message_sequence);
    if (!m) return false;
    // A message no longer streaming is final: a late delta (from a process that lost the
    // turn to another's recovery) must not make it longer than the stored one.
    if (m.status !== "streaming") return true;
    const content = m.content || "";
    const have = state.cpLength.get(m.sequence) || 0;
    if (e.offset > have) return false;
    const pieces = Array.from(e.text);
    if (e.offset + pieces.length <= have) return true; // already applied
    const added = pieces.slice(have - e.offset).join("");
    m.content = content + added;
    state.cpLength.set(m.sequence, e.offset + pieces.length);
    markDirty(m.sequence);
    return true;
  }

  function applyToolCall(e) {
    const m = state.messages.get(e.message_sequence);
    if (!m) return false;
    const calls = Array.isArray(m.tool_calls) ? m.tool_calls.slice() : [];
    const id = e.tool_call && e.tool_call.id;
    if (!calls.some(function (c) { return c && c.id === id; })) calls.push(e.tool_call);
    m.tool_calls = calls;
    markDirty(m.sequence);
    return true;
  }

  function applyOperation(e) {
    const op = e.operation;
    if (op && op.id) {
      const known = state.operations.get(op.id) || {};
      const merged = Object.assign({}, known, op);
      if (merged.message_sequence == null && typeof e.message_sequence === "number") {
        merged.message_sequence = e.message_sequence;
      }
      state.operations.set(op.id, merged);
      if (typeof merged.message_sequence === "number") markDirty(merged.message_sequence);
    }
    if (e.message) setMessage(e.message);
    if (e.type === "operation_failed" && op && op.error && !e.message) {
      addNotice("turn-error", "The tool " + (op.tool_name || "") + " failed: " + op.error);
    }
    return true;
  }

  function onSocketFrame(frame) {
    if (frame.type === "ack") {
      if (frame.of === "send" && state.pending && frame.client_message_id === state.pending.client_message_id) {
        state.pending = null;
        el.input.value = "";
        if (!frame.duplicate) state.running = true; // turn_started follows on this socket
        hideNotice();
      }
      updateComposer();
    } else if (frame.type === "pong") {
      clearTimeout(state.pongTimer);
      state.pongTimer = null;
      const head = frame.last_seq;
      if (typeof head !== "number" || state.lastSeq === null) return;
      if (head < state.lastSeq) {
        resume(true); // the counter restarted: the server answers with a snapshot
      } else if (head > state.lastSeq) {
        // Events may still be on their way; if they do not arrive, something was lost.
        setTimeout(function () {
          if (state.lastSeq !== null && state.lastSeq < head) resume(true);
        }, 2000);
      }
    } else if (frame.type === "error") {
      onSocketError(frame);
    }
  }

  function onSocketError(frame) {
    if (state.pending && frame.code === "store_write_failed") {
      const retry = state.pending;
      showNotice("The message could not be saved yet; trying again…");
      setTimeout(function () { if (state.pending === retry) sendFrame(retry); },
        1000 * (frame.retry_after || 1));
      return;
    }
    // The text stays in the box to send again. (turn_in_progress does not set `running`:
    // the turn's turn_finished may already have been applied.)
    if (state.pending) state.pending = null;
    showNotice(frame.message || "The server refused that (" + frame.code + ").");
    updateComposer();
  }

  function errorText(e) {
    const texts = {
      model_rate_limited: "The model is busy (rate limited).",
      model_timeout: "The model did not answer in time.",
      model_stream_dropped: "The connection to the model broke off.",
      step_limit: "The model kept calling tools; the reply was stopped.",
      internal_error: "The server failed to finish the reply.",
    };
    let text = texts[e.code] || e.message || "Something went wrong.";
    if (e.message && texts[e.code]) text += " " + e.message;
    if (e.retry_after) text += " Try again in " + Math.ceil(e.retry_after) + " s.";
    return text;
  }

  // Per turn: how it ended and the tokens it used, after its last message.
  function turnFooter(status, usage) {
    const foot = make("p", "turn-foot");
    foot.dataset.status = status;
    const words = {
      completed: "",
      cancelled: "Stopped. ",
      failed: "The reply failed. ",
      step_limit: "Stopped after too many tool calls. ",
      session_deleted: "The chat was deleted. ",
      interrupted: "The reply was interrupted (the server stopped). ",
    };
    let text = words[status] !== undefined ? words[status] : status + ". ";
    if (usage) {
      text += "Turn usage: " + (usage.total_tokens || 0) + " tokens (" + (usage.prompt_tokens || 0) +
        " prompt + " + (usage.completion_tokens || 0) + " completion).";
    }
    foot.textContent = text.trim();
    el.messages.appendChild(foot);
    if (nearBottom()) el.messages.scrollTop = el.messages.scrollHeight;
  }

  function addNotice(kind, text) {
    const p = make("p", "turn-foot " + kind, text);
    p.setAttribute("role", "alert");
    el.messages.appendChild(p);
  }

  // --- the page's other state ---------------------------------------------------------------

  function setTitle(title) {
    state.title = title;
    const shown = title || "Untitled chat";
    el.title.textContent = shown;
    document.title = shown + " · chatproject";
    if (el.renameInput && document.activeElement !== el.renameInput) el.renameInput.value = title;
    const link = document.querySelector('.side-link[data-session-id="' + config.session_id + '"] .side-title');
    if (link) link.textContent = shown;
  }

  function setSessionUsage(usage) {
    const total = usage.total_tokens !== undefined ? usage.total_tokens
      : (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
    el.usage.textContent = total + " tokens";
  }

  function setDemo(on) {
    el.banner.hidden = !on;
  }

  function setConn(conn) {
    state.conn = conn;
    const labels = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", offline: "Offline" };
    el.conn.dataset.state = conn;
    el.conn.textContent = labels[conn] || conn;
    updateComposer();
  }

  function showNotice(text) {
    el.notice.textContent = text;
    el.notice.hidden = false;
  }

  function hideNotice() {
    el.notice.hidden = true;
    el.notice.textContent = "";
  }

  function updateComposer() {
    const blocked = state.gone;
    el.input.disabled = blocked;
    el.input.readOnly = Boolean(state.pending);
    el.send.hidden = state.running;
    el.send.disabled = blocked || state.running || Boolean(state.pending);
    el.stop.hidden = !state.running || blocked;
    el.stop.disabled = state.stopping;
    el.stop.textContent = state.stopping ? "Stopping…" : "Stop";
    el.form.setAttribute("aria-busy", state.running || state.pending ? "true" : "false");
  }

  // --- the socket ---------------------------------------------------------------------------

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    if (state.gone) return;
    setConn(state.connectedOnce ? "reconnecting" : "connecting");
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    let socket;
    try {
      socket = new WebSocket(scheme + location.host + config.ws_path);
    } catch (err) {
      scheduleReconnect();
      return;
    }
    state.socket = socket;
    socket.onmessage = function (event) {
      if (socket !== state.socket) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      handleFrame(frame);
    };
    socket.onclose = function (event) {
      if (socket !== state.socket) return;
      state.socket = null;
      stopHeartbeat();
      onClosed(event.code);
    };
  }

  function onHello(hello) {
    state.connectedOnce = true;
    state.liveSince = Date.now();
    setDemo(Boolean(hello.offline_demo));
    if (hello.max_message_chars) el.input.maxLength = hello.max_message_chars;
    setConn("live");
    state.resumeSentAt = 0;
    resume(true);
    if (state.pending) sendFrame(state.pending); // same client_message_id: never sent twice
    startHeartbeat();
  }

  function onClosed(code) {
    if (code === 4401) {
      setConn("offline");
      location.assign(config.login_url + "?next=" + encodeURIComponent(location.pathname));
      return;
    }
    if (code === 4404) {
      state.gone = true;
      setConn("offline");
      showNotice("This chat was not found: it may have been deleted.");
      return;
    }
    if (state.liveSince && Date.now() - state.liveSince > STABLE_AFTER_MS) state.attempt = 0;
    state.liveSince = 0;
    // 4429: too many sockets of this user (the error frame before it said so); back off
    // for seconds, not half a second, so other tabs can close.
    if (code === 4429) state.attempt = Math.max(state.attempt, 4);
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (state.reconnectTimer !== null || state.gone) return;
    if (navigator.onLine === false) {
      setConn("offline"); // the "online" event reconnects
      return;
    }
    setConn("reconnecting");
    // Exponential backoff (0.5 s, 1 s, 2 s … 30 s), each ± 20 % so tabs do not reconnect
    // in step after a server restart.
    const base = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * Math.pow(2, state.attempt));
    const delay = base * (0.8 + Math.random() * 0.4);
    state.attempt += 1;
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (state.socket || state.gone) return;
    state.attempt = 0;
    connect();
  }

  function sendFrame(frame) {
    const socket = state.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  // Ask for the events after lastSeq: once per cursor, again only if nothing came of it.
  function resume(force) {
    const recent = Date.now() - state.resumeSentAt < RESUME_RETRY_MS;
    if (!force && recent && state.resumeFrom === state.lastSeq) return;
    if (sendFrame({ type: "resume", last_seq: state.lastSeq })) {
      state.resumeFrom = state.lastSeq;
      state.resumeSentAt = Date.now();
    }
  }

  function requestSnapshot() {
    const recent = Date.now() - state.resumeSentAt < RESUME_RETRY_MS;
    if (recent && state.resumeFrom === null) return;
    if (sendFrame({ type: "resume", last_seq: null })) {
      state.resumeFrom = null;
      state.resumeSentAt = Date.now();
    }
  }

  function startHeartbeat() {
    stopHeartbeat();
    state.pingTimer = setInterval(function () {
      if (!sendFrame({ type: "ping", id: "p" + Date.now() })) return;
      if (state.pongTimer === null) {
        state.pongTimer = setTimeout(function () {
          // No answer: the connection is dead even if the browser has not noticed.
          state.pongTimer = null;
          if (state.socket) state.socket.close();
        }, PONG_TIMEOUT_MS);
      }
    }, PING_EVERY_MS);
  }

  function stopHeartbeat() {
    clearInterval(state.pingTimer);
    clearTimeout(state.pongTimer);
    state.pingTimer = null;
    state.pongTimer = null;
  }

  window.addEventListener("online", reconnectNow);
  window.addEventListener("offline", function () {
    if (!state.socket) setConn("offline");
  });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") reconnectNow();
  });

  // --- the composer -------------------------------------------------------------------------

  function submit() {
    const content = el.input.value;
    if (!content.trim() || state.running || state.pending || state.gone) return;
    state.pending = { type: "send", content: content, client_message_id: newMessageId() };
    hideNotice();
    updateComposer();
    if (!sendFrame(state.pending)) showNotice("Not connected: the message will be sent when the connection is back.");
  }

  el.form.addEventListener("submit", function (event) {
    event.preventDefault();
    submit();
  });
  el.input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      submit();
    } else if (event.key === "Escape" && state.running) {
      stop();
    }
  });
  el.stop.addEventListener("click", stop);

  function stop() {
    if (!state.running || state.stopping) return;
    if (sendFrame({ type: "cancel" })) {
      state.stopping = true;
      updateComposer();
    } else {
      showNotice("Not connected: cannot stop the reply right now.");
    }
  }

  function newMessageId() {
    if (window.crypto && crypto.randomUUID) return "web-" + crypto.randomUUID();
    return "web-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  // --- helpers ------------------------------------------------------------------------------

  function byId(id) {
    return document.getElementById(id);
  }

  function readJson(id) {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : {};
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function codePoints(text) {
    let n = 0;
    for (const _ of text) n += 1; // eslint-disable-line no-unused-vars
    return n;
  }

  function capitalise(text) {
    return text ? text.charAt(0).toUpperCase() + text.slice(1) : "";
  }

  function truncate(text, n) {
    const flat = text.replace(/\s+/g, " ").trim();
    return flat.length > n ? flat.slice(0, n - 1) + "…" : flat;
  }

  function prettyJson(text) {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch (err) {
      return text;
    }
  }

  function setupSidebar() {
    const toggle = document.querySelector(".sidebar-toggle");
    const sidebar = document.getElementById("sidebar");
    if (!toggle || !sidebar) return;
    toggle.addEventListener("click", function () {
      const open = !sidebar.classList.contains("open");
      sidebar.classList.toggle("open", open);
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
      if (open) {
        const first = sidebar.querySelector("button, a");
        if (first) first.focus();
      }
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && sidebar.classList.contains("open")) {
        sidebar.classList.remove("open");
        toggle.setAttribute("aria-expanded", "false");
        toggle.focus();
      }
    });
  }

  // --- start: adopt the server's first paint, then go live ----------------------------------

  applySnapshot(initial);
  state.lastSeq = Number(root.dataset.seq);
  flush();
  el.messages.scrollTop = el.messages.scrollHeight;
  connect();
})();
