/*
 * Chat playground widget for mongodb-session-manager: plain JavaScript, no build step, nothing
 * loaded from the internet.
 *
 * The backend URL is `?api=...` in the page address, else `window.PLAYGROUND_API`, else
 * http://localhost:8880. The session id is kept in localStorage (one per backend URL), so a reload
 * shows the stored conversation again.
 */
(function () {
  "use strict";

  const DEFAULT_API = "http://localhost:8880";

  function apiBase() {
    const fromQuery = new URLSearchParams(window.location.search).get("api");
    const candidate = fromQuery || window.PLAYGROUND_API || DEFAULT_API;
    try {
      const url = new URL(candidate);
      if (url.protocol === "http:" || url.protocol === "https:") return url.href.replace(/\/+$/, "");
    } catch (e) {
      /* fall through to the default */
    }
    return DEFAULT_API;
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmtInt(n) {
    return Number(n || 0).toLocaleString("en-US");
  }

  function fmtMs(ms) {
    ms = Number(ms || 0);
    return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : Math.round(ms) + " ms";
  }

  /** The error text of a failed response: FastAPI's {"detail": "..."} or {"detail": [{msg}]}. */
  async function errorText(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail) && body.detail.length) return body.detail.map((d) => d.msg).join("; ");
    } catch (e) {
      /* not JSON */
    }
    return "HTTP " + response.status;
  }

  /** Parse a text/event-stream body, calling onEvent(name, data) for each event. */
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }

  /** Whether a session view holds an answer (something to rate). */
  function hasAnswer(view) {
    return (view.messages || []).some((item) => item.role === "assistant");
  }

  /**
   * Fill a tool result's bubble from the backend's view of it: a plain value as text, a few records
   * as a table, anything else as a collapsed block that opens on a click.
   */
  function showResult(bubble, view) {
    const label = view.label ? view.label + ": " : "";
    bubble.dataset.view = view.type;
    if (view.type === "table") {
      const rows = view.rows.length + (view.rows.length === 1 ? " row" : " rows");
      bubble.append(el("span", {}, "→ " + (view.label || rows)));
      const table = el("table", { class: "result", "data-testid": "result-table" });
      const head = el("tr");
      for (const column of view.columns) head.append(el("th", {}, column));
      table.append(head);
      for (const row of view.rows) {
        const tr = el("tr");
        for (const cell of row) tr.append(el("td", {}, cell));
        table.append(tr);
      }
      bubble.append(table);
    } else if (view.type === "details") {
      const details = el("details", { "data-testid": "result-details" });
      details.append(el("summary", {}, "→ " + label + view.summary), el("pre", {}, view.text));
      bubble.append(details);
    } else {
      bubble.textContent = "→ " + label + view.value;
    }
  }

  class ChatWidget {
    constructor(root) {
      this.root = root;
      this.api = apiBase();
      this.storageKey = "msm-playground.session." + this.api;
      this.sessionId = null;
      this.busy = false;
      this.rating = null;
      this.$ = (id) => root.querySelector('[data-testid="' + id + '"]');
      this.list = this.$("message-list");
      this.scroller = this.$("messages");
      this.prompt = this.$("prompt");
      this.send = this.$("send");
      this.stats = this.$("stats-panel");
      this.statsToggle = this.$("stats-toggle");
      this.feedbackBar = this.$("feedback");
      this.feedbackForm = this.$("feedback-form");
      this.feedbackStatus = this.$("feedback-status");
      this.$("api-hint").textContent = "Backend: " + this.api + " · sessions, metrics and feedback live in MongoDB";
      this.bind();
    }

    static mount(root) {
      const widget = new ChatWidget(root);
      root.chatWidget = widget;
      widget.start();
      return widget;
    }

    bind() {
      this.$("composer").addEventListener("submit", (event) => {
        event.preventDefault();
        this.ask(this.prompt.value);
      });
      this.prompt.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          this.ask(this.prompt.value);
        }
      });
      this.prompt.addEventListener("input", () => this.autosize());
      this.$("new-chat").addEventListener("click", () =>
        this.newSession().catch((error) => this.showError("Cannot start a new chat: " + error.message))
      );
      this.statsToggle.addEventListener("click", () => this.toggleStats());
      for (const id of ["thumb-up", "thumb-down"]) {
        this.$(id).addEventListener("click", (event) => this.chooseRating(event.currentTarget.dataset.rating));
      }
      this.feedbackForm.addEventListener("submit", (event) => {
        event.preventDefault();
        this.sendFeedback();
      });
    }

    autosize() {
      this.prompt.style.height = "auto";
      this.prompt.style.height = Math.min(this.prompt.scrollHeight, 160) + "px";
    }

    setBusy(busy) {
      this.busy = busy;
      this.send.disabled = busy;
      this.root.dataset.busy = String(busy);
    }

    setSession(sessionId) {
      this.sessionId = sessionId;
      this.root.dataset.sessionId = sessionId || "";
      const chip = this.$("session-id");
      chip.textContent = sessionId ? "session " + sessionId.slice(0, 8) : "no session";
      chip.title = sessionId || "";
      if (sessionId) localStorage.setItem(this.storageKey, sessionId);
      else localStorage.removeItem(this.storageKey);
    }

    async start() {
      const stored = localStorage.getItem(this.storageKey);
      try {
        if (stored) {
          const response = await fetch(this.api + "/sessions/" + encodeURIComponent(stored));
          if (response.ok) {
            this.setSession(stored);
            this.render(await response.json());
            this.root.dataset.ready = "true";
            return;
          }
          if (response.status !== 404) throw new Error(await errorText(response));
        }
        await this.newSession();
      } catch (error) {
        this.showError("Cannot reach the backend at " + this.api + ": " + error.message);
      }
      this.root.dataset.ready = "true";
    }

    async newSession() {
      if (this.busy) return;
      const response = await fetch(this.api + "/sessions", { method: "POST" });
      if (!response.ok) throw new Error(await errorText(response));
      const { session_id: sessionId } = await response.json();
      this.setSession(sessionId);
      this.resetFeedback();
      this.render({ messages: [], turns: [], totals: {}, metadata: {}, feedbacks: [], session_id: sessionId });
      this.prompt.focus();
    }

    /** Show a stored session: its messages, and the statistics panel. */
    render(view) {
      this.view = view;
      this.list.replaceChildren();
      if (!view.messages.length) this.list.append(this.emptyState());
      for (const item of view.messages) {
        const node = this.addItem(item);
        if (item.turn) this.setCaption(node, item.turn);
      }
      this.setRateable(hasAnswer(view));
      this.renderStats(view);
      this.scrollDown();
    }

    /** Feedback is for a conversation that has something to rate: it shows once there is an answer. */
    setRateable(rateable) {
      this.feedbackBar.hidden = !rateable;
    }

    emptyState() {
      const box = el("div", { class: "empty", "data-testid": "empty" });
      box.append(el("strong", {}, "Say hello."));
      box.append(
        "Every message is stored in MongoDB as it happens. Reload the page and the conversation comes back; " +
          "open Stats for tokens and latency per turn."
      );
      return box;
    }

    addMessage(role, text) {
      this.list.querySelector('[data-testid="empty"]')?.remove();
      const node = el("div", { class: "msg", "data-testid": "message", "data-role": role });
      node.append(el("div", { class: "bubble", "data-testid": "bubble" }, text));
      this.list.append(node);
      this.scrollDown();
      return node;
    }

    /** A message, a tool call or a tool result, as the backend describes it. */
    addItem(item) {
      if (item.role !== "tool" || item.kind !== "result" || !item.view) return this.addMessage(item.role, item.text);
      const node = this.addMessage("tool");
      node.dataset.kind = "result";
      if (item.status === "error") node.classList.add("failed");
      showResult(node.querySelector(".bubble"), item.view);
      return node;
    }

    setCaption(node, turn) {
      const tools = Object.entries(turn.tools || {})
        .map(([name, count]) => name + " ×" + count)
        .join(", ");
      const parts = [
        fmtInt(turn.total_tokens) + " tokens",
        "model " + fmtMs(turn.latency_ms),
        "turn " + fmtMs(turn.duration_ms),
      ];
      if (tools) parts.push(tools);
      let caption = node.querySelector(".caption");
      if (!caption) {
        caption = el("div", { class: "caption", "data-testid": "caption" });
        node.append(caption);
      }
      caption.textContent = parts.join(" · ");
    }

    showError(text) {
      const node = this.addMessage("assistant", text);
      node.classList.add("error");
      node.dataset.testid = "error";
      return node;
    }

    scrollDown() {
      this.scroller.scrollTop = this.scroller.scrollHeight;
    }

    async ask(rawPrompt) {
      const prompt = rawPrompt.trim();
      if (!prompt || this.busy || !this.sessionId) return;
      this.setBusy(true);
      this.prompt.value = "";
      this.autosize();
      this.addMessage("user", prompt);
      let reply = this.addMessage("assistant", "");
      reply.dataset.streaming = "true";
      const bubble = reply.querySelector(".bubble");
      let text = "";
      try {
        const response = await fetch(this.api + "/chat/" + encodeURIComponent(this.sessionId) + "/stream", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ prompt: rawPrompt }),
        });
        if (!response.ok) throw new Error(await errorText(response));
        await readEvents(response, (name, data) => {
          if (name === "token") {
            text += data.text;
            bubble.textContent = text.trimStart();
          } else if (name === "tool") {
            this.list.insertBefore(this.addItem(data), reply);
          } else if (name === "done") {
            this.setCaption(reply, data);
            this.setRateable(true);
          } else if (name === "error") {
            throw new Error(data.detail);
          }
          this.scrollDown();
        });
      } catch (error) {
        if (!text) {
          reply.remove();
          reply = null;
        }
        this.showError("Error: " + error.message);
      } finally {
        if (reply) delete reply.dataset.streaming;
        this.setBusy(false);
        this.prompt.focus();
        this.refresh();
      }
    }

    /** Re-read the session for the statistics panel (messages on screen are left alone). */
    async refresh() {
      if (!this.sessionId) return;
      try {
        const response = await fetch(this.api + "/sessions/" + encodeURIComponent(this.sessionId));
        if (response.ok) {
          this.view = await response.json();
          if (this.view.session_id !== this.sessionId) return; // a new chat started meanwhile
          this.setRateable(hasAnswer(this.view));
          this.renderStats(this.view);
        }
      } catch (error) {
        /* the panel keeps its last figures; the next turn or toggle tries again */
      }
    }

    toggleStats() {
      const open = this.stats.hidden;
      this.stats.hidden = !open;
      this.statsToggle.setAttribute("aria-pressed", String(open));
      if (open) this.refresh();
    }

    renderStats(view) {
      const s = this.stats;
      s.replaceChildren();
      const totals = view.totals || {};
      const turns = view.turns || [];

      s.append(el("h2", {}, "Session"));
      const about = el("dl");
      const meta = view.metadata || {};
      const rows = [["id", view.session_id || "-"]];
      if (view.title) rows.push(["title", view.title]);
      if (view.created_at) rows.push(["created", new Date(view.created_at).toLocaleString()]);
      for (const [key, value] of rows) about.append(el("dt", {}, key), el("dd", {}, value));
      about.dataset.testid = "session-about";
      s.append(about);

      s.append(el("h2", {}, "Totals"));
      const grid = el("div", { class: "grid", "data-testid": "totals" });
      const avg = turns.length ? totals.latency_ms / turns.length : 0;
      for (const [label, value] of [
        ["messages stored", fmtInt(totals.messages)],
        ["turns", fmtInt(totals.turns)],
        ["tokens (in / out)", fmtInt(totals.input_tokens) + " / " + fmtInt(totals.output_tokens)],
        ["avg model latency", turns.length ? fmtMs(avg) : "-"],
      ]) {
        const box = el("div", { class: "stat" });
        box.append(el("b", {}, value), el("span", {}, label));
        grid.append(box);
      }
      s.append(grid);

      s.append(el("h2", {}, "Per turn"));
      if (turns.length) {
        const table = el("table", { "data-testid": "turns" });
        const head = el("tr");
        for (const h of ["#", "in", "out", "total", "model", "turn"]) head.append(el("th", {}, h));
        table.append(head);
        turns.forEach((turn, i) => {
          const row = el("tr", { "data-testid": "turn-row" });
          for (const value of [
            String(i + 1),
            fmtInt(turn.input_tokens),
            fmtInt(turn.output_tokens),
            fmtInt(turn.total_tokens),
            fmtMs(turn.latency_ms),
            fmtMs(turn.duration_ms),
          ]) {
            row.append(el("td", {}, value));
          }
          table.append(row);
        });
        s.append(table);
      } else {
        s.append(el("p", { class: "none" }, "No turns yet."));
      }

      s.append(el("h2", {}, "What the agent knows"));
      const keys = Object.keys(meta);
      if (keys.length) {
        const dl = el("dl", { "data-testid": "metadata" });
        for (const key of keys) {
          const value = typeof meta[key] === "string" ? meta[key] : JSON.stringify(meta[key]);
          dl.append(el("dt", {}, key), el("dd", {}, value));
        }
        s.append(dl);
      } else {
        s.append(el("p", { class: "none" }, "None."));
      }

      s.append(el("h2", {}, "Feedback"));
      const feedbacks = view.feedbacks || [];
      if (feedbacks.length) {
        for (const fb of feedbacks) {
          const row = el("div", { class: "fb", "data-testid": "feedback-entry" });
          const mark = fb.rating === "up" ? "Good" : fb.rating === "down" ? "Bad" : "No rating";
          row.append(el("span", {}, mark + (fb.comment ? " — " + fb.comment : "")));
          row.append(el("small", {}, new Date(fb.created_at).toLocaleString()));
          s.append(row);
        }
      } else {
        s.append(el("p", { class: "none" }, "None yet."));
      }
    }

    chooseRating(rating) {
      this.rating = rating;
      for (const id of ["thumb-up", "thumb-down"]) {
        const button = this.$(id);
        button.setAttribute("aria-pressed", String(button.dataset.rating === rating));
      }
      this.feedbackForm.classList.add("open");
      this.feedbackStatus.textContent = "";
      this.$("feedback-comment").focus();
    }

    resetFeedback() {
      this.rating = null;
      for (const id of ["thumb-up", "thumb-down"]) this.$(id).setAttribute("aria-pressed", "false");
      this.feedbackForm.classList.remove("open");
      this.$("feedback-comment").value = "";
      this.feedbackStatus.textContent = "";
    }

    async sendFeedback() {
      if (!this.sessionId) return;
      const comment = this.$("feedback-comment").value;
      const status = this.feedbackStatus;
      status.classList.remove("bad");
      try {
        const response = await fetch(this.api + "/sessions/" + encodeURIComponent(this.sessionId) + "/feedback", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ rating: this.rating, comment }),
        });
        if (!response.ok) throw new Error(await errorText(response));
        this.resetFeedback();
        status.textContent = "Thanks! Feedback stored.";
        this.refresh();
      } catch (error) {
        status.classList.add("bad");
        status.textContent = "Feedback not stored: " + error.message;
      }
    }
  }

  window.ChatWidget = ChatWidget;
})();
