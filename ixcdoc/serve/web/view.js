// `ixcdoc view`: the records of an extract run beside their pages, read-only, no model.
// The data (ixcdoc/viewer.py) is in the page itself; images are data URLs (--html) or
// come from the viewer's own 127.0.0.1 server. Navigation by document and page, search.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const data = JSON.parse($("data").textContent);
  const pages = []; // every page of every document, in order: {d, i}
  data.documents.forEach((doc, d) => doc.pages.forEach((_, i) => pages.push({ d, i })));
  const state = { at: 0, view: "rendered", query: "", hits: new Set() };

  function el(tag, attrs, ...kids) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") n.className = v;
      else if (k === "text") n.textContent = v;
      else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else n.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) n.append(kid);
    return n;
  }

  const num = (n) => Number(n).toLocaleString("en-US");
  const secs = (ms) => (ms / 1000).toFixed(ms < 10000 ? 2 : 0) + " s";
  const failed = (page) => page.records.some((r) => r.status !== "ok");

  function recordLine(rec) {
    if (rec.status !== "ok") return `failed (${rec.error.code}): ${rec.error.message}`;
    const parts = [];
    if (rec.tier) parts.push(`HD${rec.tier}` + (rec.grid ? ` ${rec.grid[0]}×${rec.grid[1]}` : ""));
    if (rec.hd_setting !== "auto") parts.push(`--hd ${rec.hd_setting}`);
    if (rec.image_tokens) parts.push(`${num(rec.image_tokens)} image tokens`);
    const t = rec.timings || {};
    if (t.tokens !== null && t.tokens !== undefined) parts.push(`${num(t.tokens)} tokens`);
    if (t.tokens && (t.draft_tokens || t.accepted_tokens)) {
      // speculative decoding: the share of the page's tokens the model accepted from drafts
      const share = Math.floor((100 * t.accepted_tokens) / t.tokens);
      parts.push(`${share}% of tokens from drafts (${num(t.accepted_tokens)} of ${num(t.tokens)})`);
    }
    const times = ["render", "preprocess", "prefill", "decode"]
      .filter((k) => t[k + "_ms"] !== null && t[k + "_ms"] !== undefined)
      .map((k) => `${k} ${secs(t[k + "_ms"])}`);
    parts.push(...times);
    parts.push("flags: " + (rec.flags.length ? rec.flags.join(", ") : "none"));
    return parts.join(" · ");
  }

  // Wrap every match of the query in the text nodes under root in <mark>.
  function highlight(root, query) {
    if (!query) return;
    const q = query.toLowerCase();
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    const nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    for (const node of nodes) {
      const text = node.nodeValue;
      const low = text.toLowerCase();
      let at = low.indexOf(q);
      if (at < 0) continue;
      const frag = document.createDocumentFragment();
      let from = 0;
      while (at >= 0) {
        frag.append(text.slice(from, at), el("mark", { text: text.slice(at, at + q.length) }));
        from = at + q.length;
        at = low.indexOf(q, from);
      }
      frag.append(text.slice(from));
      node.replaceWith(frag);
    }
  }

  function renderDocs() {
    const nav = $("docs");
    nav.replaceChildren();
    data.documents.forEach((doc, d) => {
      nav.append(el("h2", { text: doc.source, title: doc.content_sha256 || "" }));
      const bad = doc.pages.filter(failed).length;
      if (doc.pages.length || !doc.file_errors.length) {
        nav.append(el("div", { class: "muted small", text:
          `${doc.pages.length} of ${doc.page_count ?? "?"} pages` + (bad ? ` · ${bad} failed` : "") }));
      }
      if (doc.image_note) nav.append(el("div", { class: "note muted", text: doc.image_note }));
      for (const r of doc.file_errors) {
        nav.append(el("div", { class: "file-errors error",
                               text: `failed (${r.error.code}): ${r.error.message}` }));
      }
      const row = el("div", { class: "pages" });
      doc.pages.forEach((p, i) => {
        const at = pages.findIndex((x) => x.d === d && x.i === i);
        const b = el("button", { type: "button", text: String(p.page), "data-at": at,
                                 "aria-label": `${doc.source} page ${p.page}`,
                                 onclick: () => go(at) });
        b.classList.toggle("failed", failed(p));
        row.append(b);
      });
      nav.append(row);
      const failures = doc.pages.filter(failed);
      if (failures.length) {
        const list = el("ul", { class: "failures" });
        for (const p of failures) {
          for (const r of p.records.filter((x) => x.status !== "ok")) {
            list.append(el("li", { class: "error" }, el("a", {
              href: "#", text: `page ${p.page}`,
              onclick: (e) => {
                e.preventDefault();
                go(pages.findIndex((x) => x.d === d && x.i === doc.pages.indexOf(p)));
              },
            }), `: ${r.error.code}: ${r.error.message}`));
          }
        }
        nav.append(list);
      }
    });
  }

  function renderMarks() {
    for (const b of document.querySelectorAll("#docs .pages button")) {
      const at = Number(b.dataset.at);
      b.classList.toggle("current", at === state.at);
      b.classList.toggle("hit", state.hits.has(at));
      if (at === state.at) b.setAttribute("aria-current", "page");
      else b.removeAttribute("aria-current");
    }
  }

  function render() {
    if (!pages.length) {
      $("page").replaceChildren(el("p", { class: "no-image", text: "no page records in this run" }));
      return;
    }
    const { d, i } = pages[state.at];
    const doc = data.documents[d];
    const page = doc.pages[i];
    $("where").textContent = `${doc.source} page ${page.page}/${doc.page_count ?? "?"}`;
    $("page").replaceChildren(page.image
      ? el("img", { src: page.image, alt: `${doc.source} page ${page.page}` })
      : el("p", { class: "no-image", text: doc.image_note || "no image for this page" }));
    const box = $("records");
    box.replaceChildren();
    for (const rec of page.records) {
      const head = `${rec.task}${rec.question ? `: ${rec.question}` : ""}`;
      box.append(el("h3", { text: head }));
      box.append(el("div", { class: "meta record-facts" + (rec.status !== "ok" ? " error" : ""),
                             text: recordLine(rec) }));
      box.append(el("div", { class: "meta record-facts", text:
        `${rec.model}${rec.precision ? ` (${rec.precision}, ${rec.device})` : ""} · ` +
        (rec.native_size ? `native ${rec.native_size[1]} × ${rec.native_size[0]} px` : "") +
        (rec.render_dpi ? ` at ${Math.round(rec.render_dpi)} dpi` : "") + ` · ${rec.created_at}` }));
      if (rec.status === "ok") {
        const text = state.view === "rendered" ? IxMarkdown.render(rec.text)
          : el("pre", { class: "raw", text: rec.text });
        text.classList.add("record-text");
        highlight(text, state.query);
        box.append(text);
      }
    }
    for (const b of document.querySelectorAll("[data-view]")) {
      b.setAttribute("aria-pressed", String(b.dataset.view === state.view));
    }
    renderMarks();
  }

  function go(at) {
    if (at < 0 || at >= pages.length) return;
    state.at = at;
    const { d, i } = pages[at];
    history.replaceState(null, "", `#d=${d}&p=${data.documents[d].pages[i].page}`);
    render();
  }

  function search(query) {
    state.query = query.trim();
    state.hits = new Set();
    const q = state.query.toLowerCase();
    if (q) {
      pages.forEach(({ d, i }, at) => {
        if (data.documents[d].pages[i].records.some((r) => (r.text || "").toLowerCase().includes(q))) {
          state.hits.add(at);
        }
      });
    }
    summary();
    render();
  }

  function summary() {
    const bad = pages.filter(({ d, i }) => failed(data.documents[d].pages[i])).length;
    const unread = data.documents.filter((doc) => doc.file_errors.length).length;
    let text = `${data.documents.length} document${data.documents.length === 1 ? "" : "s"} · ` +
      `${pages.length} page${pages.length === 1 ? "" : "s"}` + (bad ? ` · ${bad} failed` : "") +
      (unread ? ` · ${unread} file${unread === 1 ? "" : "s"} not read` : "");
    if (state.query) text += ` · "${state.query}": ${state.hits.size} page${state.hits.size === 1 ? "" : "s"}`;
    $("status-text").textContent = text;
    $("status").className = "status" + (bad || unread ? " error" : "");
  }

  function nextHit(step) {
    const hits = [...state.hits].sort((a, b) => a - b);
    if (!hits.length) return;
    const next = step > 0 ? hits.find((h) => h > state.at) ?? hits[0]
      : [...hits].reverse().find((h) => h < state.at) ?? hits[hits.length - 1];
    go(next);
  }

  function start() {
    $("title").textContent = `${data.records_file} · ${data.generated}`;
    renderDocs();
    summary();
    const m = /^#d=(\d+)&p=(\d+)$/.exec(location.hash);
    if (m) {
      const at = pages.findIndex(({ d, i }) => d === Number(m[1]) &&
                                 data.documents[d].pages[i].page === Number(m[2]));
      if (at >= 0) state.at = at;
    }
    render();
    $("prev").addEventListener("click", () => go(state.at - 1));
    $("next").addEventListener("click", () => go(state.at + 1));
    $("search").addEventListener("input", (e) => search(e.target.value));
    $("search").addEventListener("keydown", (e) => {
      if (e.key === "Enter") nextHit(e.shiftKey ? -1 : 1);
    });
    for (const b of document.querySelectorAll("[data-view]")) {
      b.addEventListener("click", () => {
        state.view = b.dataset.view;
        render();
      });
    }
    document.addEventListener("keydown", (e) => {
      if (e.target instanceof Element && e.target.closest("input, textarea")) return;
      if (e.key === "ArrowLeft" || e.key === "PageUp") go(state.at - 1);
      if (e.key === "ArrowRight" || e.key === "PageDown") go(state.at + 1);
      if (e.key === "/") {
        e.preventDefault();
        $("search").focus();
      }
    });
  }

  start();
})();
