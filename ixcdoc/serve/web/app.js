// The page of `ixcdoc serve`: open a document, see each page as the model sees it (tier, crop
// grid, global view, tokens, memory: the rows of `ixcdoc plan`), transcribe, ask, read charts.
// Every model call goes to this server's /v1/ixcdoc/ API (ixcdoc/serve/webpage.py), which runs
// ixcdoc's batch code on the server's queue. Plain JS, no build step, nothing from elsewhere.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const KEY = "ixcdoc-api-key";
  const THUMB_SIDE = 240;
  const PAGE_SIDE = 1600;
  const HEALTH_EVERY_MS = 5000;
  const LABEL = {
    extract: "Transcribing",
    ask: "Answering",
    chart: "Summarizing the chart",
    chart_table: "Reading the chart's table",
  };

  const state = {
    key: sessionStorage.getItem(KEY),
    docs: [],
    doc: null,
    page: 1,
    tab: "plan",
    planTask: "extract",
    hd: "auto",
    textView: "rendered",
    run: null,
    lastRun: null,
  };

  // ---- small helpers ----------------------------------------------------------------------

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

  function svg(tag, attrs) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
    return n;
  }

  const num = (n) => Number(n).toLocaleString("en-US");
  const wxh = (hw) => `${hw[1]} × ${hw[0]}`;
  const secs = (ms) => (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + " s";

  function stem(name) {
    const i = name.lastIndexOf(".");
    return i > 0 ? name.slice(0, i) : name;
  }

  // ---- the API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, code, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  async function api(path, opts = {}) {
    for (;;) {
      const headers = new Headers(opts.headers || {});
      if (state.key) headers.set("Authorization", "Bearer " + state.key);
      let r;
      try {
        r = await fetch(path, { ...opts, headers });
      } catch (e) {
        if (e.name === "AbortError") throw e;
        throw new ApiError(0, "cannot reach the server (" + e.message + ")");
      }
      if (r.ok) return r;
      let body = null;
      try {
        body = await r.json();
      } catch (_) {
        body = null;
      }
      const err = (body && body.error) || {};
      const e = new ApiError(r.status, err.message || r.statusText, err.code,
                             r.headers.get("Retry-After"));
      if (r.status === 401 && (await askKey(e.message))) continue; // again, with the new key
      throw e;
    }
  }

  function askKey(why) {
    const dialog = $("key-dialog");
    $("key-why").textContent = why || "This server may need an API key (--api-key).";
    $("key-input").value = "";
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        const v = dialog.returnValue;
        if (v === "ok" && $("key-input").value.trim()) {
          state.key = $("key-input").value.trim();
          sessionStorage.setItem(KEY, state.key);
          resolve(true);
        } else {
          if (v === "clear") {
            state.key = null;
            sessionStorage.removeItem(KEY);
          }
          resolve(false);
        }
        renderKey();
      }, { once: true });
    });
  }

  function renderKey() {
    $("key-button").textContent = state.key ? "Key ✓" : "Key";
  }

  // ---- the status line: progress, errors ---------------------------------------------------

  function say(text, kind) {
    $("status-text").textContent = text || "";
    $("status").className = "status" + (kind ? " " + kind : "");
  }

  function fail(e) {
    if (e && e.name === "AbortError") return;
    let text = e && e.message ? e.message : String(e);
    if (e instanceof ApiError && e.status === 429) {
      text = "server busy (429): " + text + (e.retryAfter ? ` (retry after ${e.retryAfter} s)` : "");
    } else if (e instanceof ApiError && e.status) {
      text = `${e.status}: ${text}`;
    }
    say("error: " + text, "error");
  }

  // The share of the generated tokens the model accepted from drafts (speculative decoding),
  // floored as the CLI's summary line floors it: "61% of tokens from drafts (3,402 of 5,577)".
  function fromDrafts(accepted, tokens) {
    const share = tokens ? Math.floor((100 * accepted) / tokens) : 0;
    return `${share}% of tokens from drafts (${num(accepted)} of ${num(tokens)})`;
  }

  function runLine(run) {
    const elapsed = run.elapsed_s !== undefined ? run.elapsed_s * 1000 : performance.now() - run.t0;
    const rate = elapsed > 0 ? (run.tokens / (elapsed / 1000)).toFixed(1) : "0.0";
    const parts = [];
    if (run.finished) {
      const f = run.finished;
      let ok = `${f.ok} ok`;
      if (f.failed) ok += `, ${f.failed} failed`;
      if (f.blank) ok += `, ${f.blank} blank`;
      parts.push(`${run.doc.info.name}: ${ok}`);
      parts.push(`${run.total} page${run.total === 1 ? "" : "s"} in ${secs(elapsed)}`);
    } else {
      parts.push(`${LABEL[run.task]} ${run.doc.info.name}`);
      parts.push(`${run.done}/${run.total || "?"} pages done`);
      if (run.inflight.length) {
        parts.push("in flight: " + run.inflight.map((p) => `page ${p.page} (HD${p.tier})`).join(", "));
      } else if (!run.done) {
        parts.push(run.total ? "waiting for the model"
          : run.screening ? `screening ${run.screening} pages without a text layer with the model`
            : "reading the document");
      }
    }
    parts.push(`${num(run.tokens)} tokens`, `${rate} tok/s`);
    if (run.draft_tokens || run.accepted_tokens) parts.push(fromDrafts(run.accepted_tokens, run.finished_tokens));
    return parts.join(" · ");
  }

  function renderStatus() {
    const run = state.run;
    $("cancel").hidden = !run;
    if (run) say(runLine(run), "busy");
  }

  // ---- documents ------------------------------------------------------------------------------

  function newDoc(info) {
    return {
      info,
      plans: {},
      thumbs: {},
      images: {},
      results: { extract: {}, chart: {}, chart_table: {} },
      answers: [],
      marks: {},
    };
  }

  function askPassword(why) {
    const dialog = $("password-dialog");
    $("password-why").textContent = why;
    $("password-input").value = "";
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        resolve(dialog.returnValue === "ok" ? $("password-input").value : null);
      }, { once: true });
    });
  }

  async function openFile(blob, name, password) {
    say(`opening ${name} (${num(blob.size)} bytes)…`, "busy");
    const headers = { "Content-Type": "application/octet-stream" };
    if (password) headers["X-Ixcdoc-Password"] = password;
    try {
      const r = await api("/v1/ixcdoc/documents?name=" + encodeURIComponent(name), {
        method: "POST",
        headers,
        body: blob,
      });
      const doc = newDoc(await r.json());
      state.docs.push(doc);
      renderDocs();
      say(`${doc.info.name}: ${doc.info.kind}, ${doc.info.page_count} page` +
          (doc.info.page_count === 1 ? "" : "s") +
          (doc.info.notes.length ? " · " + doc.info.notes.join("; ") : ""));
      await selectDoc(doc);
    } catch (e) {
      if (e instanceof ApiError && (e.code === "password_required" || e.code === "bad_password")) {
        const again = await askPassword(e.code === "bad_password"
          ? `Wrong password for ${name}.` : `${name} is encrypted: it needs its password.`);
        if (again !== null) return openFile(blob, name, again);
      }
      fail(e);
    }
  }

  async function openFiles(files) {
    for (const f of files) await openFile(f, f.name || "upload");
  }

  function renderDocs() {
    const sel = $("docs");
    sel.replaceChildren(...state.docs.map((d, i) =>
      el("option", { value: i, text: d.info.name, selected: d === state.doc })));
    sel.hidden = state.docs.length < 2;
  }

  async function selectDoc(doc) {
    state.doc = doc;
    state.page = 1;
    $("main").classList.remove("empty");
    renderDocs();
    renderThumbs();
    renderPanel();
    await Promise.all([loadPlan(doc), showPage(1)]);
    loadThumbs(doc);
  }

  async function loadPlan(doc) {
    const key = `${state.planTask}:${state.hd}`;
    if (!doc.plans[key]) {
      try {
        const r = await api(`/v1/ixcdoc/documents/${doc.info.id}/plan?task=${state.planTask}` +
                            `&hd=${encodeURIComponent(state.hd)}`);
        doc.plans[key] = (await r.json()).rows;
      } catch (e) {
        fail(e);
        return;
      }
    }
    if (doc === state.doc) {
      drawStage();
      renderThumbLabels();
      renderPlan();
    }
  }

  function planRow(doc, page) {
    const rows = doc && doc.plans[`${state.planTask}:${state.hd}`];
    return rows ? rows.find((r) => r.page === page) : undefined;
  }

  async function pageUrl(doc, page, side, cache) {
    if (!cache[page]) {
      const r = await api(`/v1/ixcdoc/documents/${doc.info.id}/pages/${page}.jpg?max=${side}`);
      cache[page] = URL.createObjectURL(await r.blob());
    }
    return cache[page];
  }

  // ---- thumbnails ------------------------------------------------------------------------------

  function renderThumbs() {
    const doc = state.doc;
    const nav = $("thumbs");
    nav.replaceChildren();
    for (let p = 1; p <= doc.info.page_count; p++) {
      nav.append(el("button", {
        type: "button",
        class: "thumb",
        "data-page": p,
        "aria-label": `page ${p}`,
        onclick: () => showPage(p),
      }, el("img", { alt: "" }), el("span", { class: "cap" })));
    }
    renderThumbLabels();
  }

  function renderThumbLabels() {
    const doc = state.doc;
    for (const b of $("thumbs").children) {
      const p = Number(b.dataset.page);
      const row = planRow(doc, p);
      const done = doc.results.extract[p];
      let cap = `${p}`;
      if (row && row.tier) cap += ` · HD${row.tier}`;
      if (done && done.record) cap += done.record.status === "ok" ? " ✓" : " ⚠";
      b.querySelector(".cap").textContent = cap;
      b.classList.toggle("current", p === state.page);
      b.classList.toggle("marked", Boolean(doc.marks[p]));
      if (b.classList.contains("current")) b.setAttribute("aria-current", "page");
      else b.removeAttribute("aria-current");
    }
  }

  // Thumbnails load as they come into view (a long document renders only what is seen).
  let thumbWatch = null;

  function loadThumbs(doc) {
    if (thumbWatch) thumbWatch.disconnect();
    thumbWatch = new IntersectionObserver((seen) => {
      for (const entry of seen) {
        if (!entry.isIntersecting) continue;
        thumbWatch.unobserve(entry.target);
        const p = Number(entry.target.dataset.page);
        pageUrl(doc, p, THUMB_SIDE, doc.thumbs).then((url) => {
          if (doc === state.doc) entry.target.querySelector("img").src = url;
        }, fail);
      }
    }, { root: $("thumbs"), rootMargin: "200px" });
    for (const b of $("thumbs").children) thumbWatch.observe(b);
  }

  // ---- the page as the model sees it -------------------------------------------------------

  async function showPage(p) {
    const doc = state.doc;
    if (!doc || p < 1 || p > doc.info.page_count) return;
    state.page = p;
    $("page-label").textContent = `page ${p} of ${doc.info.page_count}`;
    renderThumbLabels();
    renderPanel();
    drawStage();
    try {
      await pageUrl(doc, p, PAGE_SIDE, doc.images);
    } catch (e) {
      fail(e);
      return;
    }
    if (doc === state.doc && p === state.page) drawStage();
  }

  function drawStage() {
    const doc = state.doc;
    const page = state.page;
    const row = planRow(doc, page);
    const url = doc && doc.images[page];
    const main = $("page-svg");
    const glob = $("global-svg");
    main.replaceChildren();
    glob.replaceChildren();
    const mark = doc && doc.marks[page];
    $("mark").hidden = !mark;
    $("mark").textContent = mark || "";
    $("stage").classList.toggle("marked", Boolean(mark));
    if (!row || !row.padded_size) {
      $("global").hidden = true;
      main.setAttribute("viewBox", "0 0 100 130");
      main.append(Object.assign(svg("text", { x: 50, y: 65, "text-anchor": "middle", class: "wait" }),
                                { textContent: row ? "cannot plan this page" : "planning…" }));
      return;
    }
    const [ph, pw] = row.padded_size;
    const [rh, rw] = row.resized_size;
    const [rows, cols] = row.grid;
    const [padTop, , padLeft] = row.pad;
    const tile = row.tile;
    main.style.aspectRatio = `${pw} / ${ph}`; // a phone-sized window sizes the page by it
    const frame = (target) => {
      target.setAttribute("viewBox", `0 0 ${pw} ${ph}`);
      target.append(svg("rect", { x: 0, y: 0, width: pw, height: ph, class: "padding" }));
      if (url) {
        target.append(svg("image", {
          href: url, x: padLeft, y: padTop, width: rw, height: rh, preserveAspectRatio: "none",
        }));
      }
    };
    frame(main);
    if ($("show-grid").checked) {
      const g = svg("g", { class: "crops" });
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          const cell = svg("rect", { x: c * tile, y: r * tile, width: tile, height: tile });
          const title = svg("title");
          title.textContent = `crop ${r * cols + c + 1} of ${rows * cols} (row ${r + 1}, column ` +
                              `${c + 1}): ${tile} × ${tile} px of the HD image`;
          cell.append(title);
          g.append(cell);
          const label = svg("text", { x: c * tile + tile * 0.05, y: r * tile + tile * 0.14,
                                      "font-size": tile * 0.1 });
          label.textContent = String(r * cols + c + 1);
          g.append(label);
        }
      }
      main.append(g);
    }
    frame(glob);
    $("global").hidden = !$("show-global").checked;
    $("global-caption").textContent = `global view: the whole ${pw} × ${ph} image as one ` +
                                      `${tile} × ${tile} tile`;
    main.setAttribute("aria-label", `page ${page}: HD${row.tier}, ${rows} × ${cols} crops`);
  }

  // ---- the panel -----------------------------------------------------------------------------

  function renderPanel() {
    for (const b of document.querySelectorAll("[data-tab]")) {
      b.setAttribute("aria-selected", String(b.dataset.tab === state.tab));
    }
    for (const t of ["plan", "text", "ask", "chart"]) $("tab-" + t).hidden = t !== state.tab;
    if (!state.doc) return;
    if (state.tab === "plan") renderPlan();
    else if (state.tab === "text") renderText();
    else if (state.tab === "ask") renderAnswers();
    else renderChart();
  }

  function renderPlan() {
    const doc = state.doc;
    if (state.tab !== "plan" || !doc) return;
    const row = planRow(doc, state.page);
    const facts = $("facts");
    facts.replaceChildren();
    const add = (name, value, note) =>
      facts.append(el("tr", { "data-fact": name }, el("th", { text: name }),
                      el("td", {}, el("span", { text: value }),
                         note ? el("div", { class: "muted small", text: note }) : null)));
    add("page", `${state.page} of ${doc.info.page_count}`, `${doc.info.name} (${doc.info.kind})`);
    if (!row) {
      add("plan", "planning…");
    } else if (row.status === "error") {
      add("error", row.error.message);
    } else {
      const [rows, cols] = row.grid;
      add("native size", `${wxh(row.native_size)} px`,
          row.render_dpi ? `rendered at ${Math.round(row.render_dpi)} dpi: ${row.dpi_rule}` :
            row.dpi_rule);
      add("tier", `HD${row.tier}`, row.tier_reason);
      add("crops", `${rows} × ${cols} = ${rows * cols} crops of ${row.tile} px, plus 1 global view`);
      add("HD image", `${wxh(row.padded_size)} px`,
          `the page resized to ${wxh(row.resized_size)}, padded white`);
      add("image tokens", num(row.image_tokens));
      const fits = row.fits ? Object.entries(row.fits).filter(([, ok]) => ok).map(([q]) => q) : null;
      add("est. peak memory", `bf16 ${row.vram_gib.bf16.toFixed(2)} GiB · 4-bit ` +
          `${row.vram_gib["4bit"].toFixed(2)} GiB`,
          row.gpu ? `fits ${row.gpu}: ${fits.length ? fits.join(", ") : "none"}` :
            "no GPU known: the estimate of docs/vram.md");
      if (row.batch_auto) add("batch auto", `bf16 ${row.batch_auto.bf16} · 4-bit ${row.batch_auto["4bit"]}`);
      add("flags", row.flags && row.flags.length ? row.flags.join(", ") : "none");
    }
    const rows = doc.plans[`${state.planTask}:${state.hd}`] || [];
    const t = $("plan-pages");
    t.replaceChildren(el("tr", {}, ...["page", "native", "tier", "grid", "tokens", "bf16 GiB"]
      .map((h) => el("th", { text: h }))));
    for (const r of rows) {
      const tr = r.status === "error"
        ? el("tr", {}, el("td", { text: r.page }), el("td", { colspan: 5, text: r.error.message }))
        : el("tr", {}, el("td", { text: r.page }), el("td", { text: wxh(r.native_size) }),
             el("td", { text: `HD${r.tier}` }), el("td", { text: `${r.grid[0]}×${r.grid[1]}` }),
             el("td", { text: num(r.image_tokens) }), el("td", { text: r.vram_gib.bf16.toFixed(2) }));
      tr.classList.toggle("current", r.page === state.page);
      tr.addEventListener("click", () => showPage(r.page));
      t.append(tr);
    }
  }

  function recordLine(rec) {
    if (!rec) return "";
    if (rec.status !== "ok") return `failed (${rec.error.code}): ${rec.error.message}`;
    const t = rec.timings || {};
    const parts = [`HD${rec.tier}` + (rec.grid ? ` ${rec.grid[0]}×${rec.grid[1]}` : "")];
    if (rec.image_tokens) parts.push(`${num(rec.image_tokens)} image tokens`);
    if (t.tokens !== null && t.tokens !== undefined) parts.push(`${num(t.tokens)} tokens`);
    if (t.tokens && (t.draft_tokens || t.accepted_tokens)) parts.push(fromDrafts(t.accepted_tokens, t.tokens));
    if (t.prefill_ms) parts.push(`prefill ${secs(t.prefill_ms)}`);
    if (t.decode_ms) parts.push(`decode ${secs(t.decode_ms)}`);
    parts.push("flags: " + (rec.flags.length ? rec.flags.join(", ") : "none"));
    return parts.join(" · ");
  }

  function showText(target, text, rendered) {
    target.replaceChildren(rendered ? IxMarkdown.render(text) : el("pre", { class: "raw", text }));
  }

  function renderText() {
    const doc = state.doc;
    if (state.tab !== "text" || !doc) return;
    const got = doc.results.extract[state.page];
    $("transcribe-page").textContent = `Transcribe page ${state.page}`;
    $("transcribe-all").textContent = `Transcribe all ${doc.info.page_count} page` +
      (doc.info.page_count === 1 ? "" : "s");
    for (const b of document.querySelectorAll("[data-view]")) {
      b.setAttribute("aria-pressed", String(b.dataset.view === state.textView));
    }
    $("text-meta").textContent = got ? (got.record ? recordLine(got.record) : "generating…") :
      "not transcribed yet";
    $("text-meta").classList.toggle("error", Boolean(got && got.record && got.record.status !== "ok"));
    const out = $("text-out");
    if (!got) {
      out.replaceChildren();
      return;
    }
    // While it streams, the text is raw: Markdown is rendered once the page is done.
    showText(out, got.text, state.textView === "rendered" && got.record);
    if (!got.record) out.scrollTop = out.scrollHeight;
  }

  function renderAnswers() {
    const doc = state.doc;
    const box = $("answers");
    box.replaceChildren();
    for (const a of [...doc.answers].reverse()) {
      const item = el("div", { class: "qa" }, el("div", { class: "q", text: a.question }));
      for (const note of a.notes) item.append(el("div", { class: "muted small note", text: note }));
      const pages = Object.keys(a.pages).map(Number);
      if (!pages.length) item.append(el("div", { class: "muted", text: a.error || "reading…" }));
      for (const p of pages) {
        const got = a.pages[p];
        const body = el("div", { class: "a" });
        if (got.record && got.record.status !== "ok") {
          body.classList.add("error");
          body.textContent = recordLine(got.record);
        } else {
          showText(body, got.text, Boolean(got.record));
        }
        const rec = got.record;
        const cite = `${doc.info.name} page ${p}/${doc.info.page_count}` +
          (rec && rec.tier ? `, HD${rec.tier} ${rec.grid[0]}×${rec.grid[1]}` : got.tier ? `, HD${got.tier}` : "") +
          (rec && rec.timings && rec.timings.tokens !== null ? `, ${rec.timings.tokens} tokens` : "");
        item.append(body, el("button", { type: "button", class: "cite", text: cite,
                                         onclick: () => showPage(p) }));
      }
      if (a.error && pages.length) item.append(el("div", { class: "error", text: a.error }));
      box.append(item);
    }
  }

  function renderChart() {
    const doc = state.doc;
    const out = $("chart-out");
    out.replaceChildren();
    $("chart-summary").textContent = `Summarize chart on page ${state.page}`;
    $("chart-table").textContent = `Page ${state.page} as a table`;
    for (const [task, title] of [["chart", "Summary"], ["chart_table", "Table"]]) {
      const got = doc.results[task][state.page];
      if (!got) continue;
      out.append(el("h3", { text: title }));
      if (got.record && got.record.status !== "ok") {
        out.append(el("div", { class: "error", text: recordLine(got.record) }));
        continue;
      }
      const body = el("div", { class: "chart-result" });
      showText(body, got.text, Boolean(got.record));
      out.append(body, el("div", { class: "meta", text: recordLine(got.record) }));
    }
  }

  // ---- runs -------------------------------------------------------------------------------

  async function readLines(response, onLine) {
    const reader = response.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.trim()) onLine(JSON.parse(line));
      }
    }
  }

  function slot(run, page) {
    if (run.task === "ask") {
      run.answer.pages[page] = run.answer.pages[page] || { text: "" };
      return run.answer.pages[page];
    }
    const res = run.doc.results[run.task];
    if (!res[page] || res[page].record) res[page] = { text: "" };
    return res[page];
  }

  function onEvent(run, ev) {
    const doc = run.doc;
    if (ev.event === "opened") {
      run.total += ev.pages;
    } else if (ev.event === "started") {
      const s = slot(run, ev.page);
      s.text = "";
      s.tier = ev.tier;
      if (run.task === "ask") {
        doc.marks[ev.page] = "answer read from this page";
        if (doc === state.doc && state.page !== ev.page) showPage(ev.page);
      }
    } else if (ev.event === "text") {
      slot(run, ev.page).text += ev.delta;
    } else if (ev.event === "progress") {
      Object.assign(run, { tokens: ev.tokens, elapsed_s: ev.elapsed_s, done: ev.done,
                           total: Math.max(run.total, ev.total), inflight: ev.inflight,
                           finished_tokens: ev.finished_tokens, draft_tokens: ev.draft_tokens,
                           accepted_tokens: ev.accepted_tokens });
    } else if (ev.event === "record") {
      const rec = ev.record;
      if (rec.page === null) {
        run.error = rec.error.message;
      } else {
        const s = slot(run, rec.page);
        s.text = rec.text;
        s.record = rec;
      }
      if (rec.status !== "ok") run.failures.push(rec.error.message);
    } else if (ev.event === "screening") {
      run.screening = ev.pages;
    } else if (ev.event === "note") {
      run.notes.push(ev.message);
      if (run.answer) run.answer.notes.push(ev.message);
    } else if (ev.event === "error") {
      run.error = ev.message;
      if (run.answer) run.answer.error = "error: " + ev.message;
    } else if (ev.event === "done") {
      run.finished = ev;
    }
    if (doc === state.doc) {
      renderThumbLabels();
      if (ev.event !== "progress") renderPanel();
      if (ev.event === "started" || ev.event === "record") drawStage();
    }
    renderStatus();
  }

  async function startRun(task, body) {
    if (state.run) {
      say("one run at a time: wait for it, or cancel it", "error");
      return;
    }
    const doc = state.doc;
    const run = {
      task, doc, t0: performance.now(), total: 0, done: 0, tokens: 0, inflight: [], notes: [],
      failures: [],
      controller: new AbortController(),
    };
    if (task === "ask") {
      run.answer = { question: body.question, pages: {}, notes: [] };
      doc.answers.push(run.answer);
      for (const p of Object.keys(doc.marks)) delete doc.marks[p];
    }
    state.run = run;
    if (state.planTask !== task) {
      // The grid shown is the one this run's pages are read at (each task has its tiers).
      state.planTask = task;
      $("plan-task").value = task;
      loadPlan(doc);
    }
    renderStatus();
    renderPanel();
    try {
      const r = await api(`/v1/ixcdoc/documents/${doc.info.id}/runs`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ task, hd: state.hd, ...body }),
        signal: run.controller.signal,
      });
      await readLines(r, (ev) => onEvent(run, ev));
    } catch (e) {
      if (e.name === "AbortError") run.cancelled = true;
      else {
        run.error = e.message;
        if (run.answer) run.answer.error = "error: " + e.message;
        state.run = null;
        renderPanel();
        fail(e);
        $("cancel").hidden = true;
        return;
      }
    }
    state.run = null;
    state.lastRun = run;
    $("cancel").hidden = true;
    renderPanel();
    renderThumbLabels();
    if (run.cancelled) say(`cancelled: ${run.done} of ${run.total || "?"} pages done`);
    else if (run.error) say("error: " + run.error, "error");
    else if (run.failures.length) {
      // as the CLI: the failed page's one line (the last one, when several failed)
      say(runLine(run) + " · error: " + run.failures[run.failures.length - 1], "error");
    } else say(runLine(run) + (run.notes.length ? " · " + run.notes.join("; ") : ""));
  }

  async function download(task, format) {
    const doc = state.doc;
    try {
      const r = await api(`/v1/ixcdoc/documents/${doc.info.id}/records?task=${task}&format=${format}`);
      const blob = await r.blob();
      const a = el("a", { href: URL.createObjectURL(blob), download: `${stem(doc.info.name)}.${format}` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (e) {
      fail(e);
    }
  }

  async function copyText() {
    const got = state.doc && state.doc.results.extract[state.page];
    if (!got) return;
    try {
      await navigator.clipboard.writeText(got.text);
      say(`copied the text of page ${state.page}`);
    } catch (_) {
      const ta = el("textarea", { class: "offscreen" });
      ta.value = got.text;
      document.body.append(ta);
      ta.select();
      document.execCommand("copy");
      ta.remove();
      say(`copied the text of page ${state.page}`);
    }
  }

  // ---- the server's state ------------------------------------------------------------------

  async function health() {
    try {
      const r = await fetch("/health");
      const h = await r.json();
      $("server").textContent = `${h.model} · ${h.device} · ${h.precision || ""} · ` +
        `${h.running}/${h.batch_size} running · ${h.queued} waiting`;
    } catch (_) {
      $("server").textContent = "server unreachable";
    }
  }

  // ---- wiring --------------------------------------------------------------------------------

  // The event is for a text field (keys and pastes are the field's, not the page's).
  const typing = (e) => e.target instanceof Element && e.target.closest("input, textarea") !== null;

  function wire() {
    renderKey();
    $("file").addEventListener("change", (e) => {
      openFiles([...e.target.files]);
      e.target.value = "";
    });
    $("docs").addEventListener("change", (e) => selectDoc(state.docs[Number(e.target.value)]));
    $("key-button").addEventListener("click", () => askKey("API key for this server."));
    $("cancel").addEventListener("click", () => state.run && state.run.controller.abort());
    $("prev").addEventListener("click", () => showPage(state.page - 1));
    $("next").addEventListener("click", () => showPage(state.page + 1));
    $("show-grid").addEventListener("change", drawStage);
    $("show-global").addEventListener("change", drawStage);
    for (const b of document.querySelectorAll("[data-tab]")) {
      b.addEventListener("click", () => {
        state.tab = b.dataset.tab;
        renderPanel();
      });
    }
    for (const b of document.querySelectorAll("[data-view]")) {
      b.addEventListener("click", () => {
        state.textView = b.dataset.view;
        renderText();
      });
    }
    $("plan-task").addEventListener("change", (e) => {
      state.planTask = e.target.value;
      if (state.doc) loadPlan(state.doc);
    });
    $("hd").addEventListener("change", (e) => {
      state.hd = e.target.value;
      if (state.doc) loadPlan(state.doc);
    });
    $("transcribe-page").addEventListener("click", () => startRun("extract", { pages: String(state.page) }));
    $("transcribe-all").addEventListener("click", () => startRun("extract", {}));
    $("chart-summary").addEventListener("click", () => startRun("chart", { pages: String(state.page) }));
    $("chart-table").addEventListener("click", () => startRun("chart_table", { pages: String(state.page) }));
    $("ask-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const q = $("question").value.trim();
      if (q) startRun("ask", { question: q });
    });
    $("question").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        $("ask-form").requestSubmit();
      }
    });
    $("copy").addEventListener("click", copyText);
    $("download-md").addEventListener("click", () => download("extract", "md"));
    $("download-jsonl").addEventListener("click", () => download("extract", "jsonl"));
    document.addEventListener("keydown", (e) => {
      if (typing(e) || (e.target instanceof Element && e.target.closest("select"))) return;
      if (e.key === "ArrowLeft" || e.key === "PageUp") showPage(state.page - 1);
      if (e.key === "ArrowRight" || e.key === "PageDown") showPage(state.page + 1);
    });
    // Drag and drop anywhere; paste a screenshot.
    window.addEventListener("dragover", (e) => {
      e.preventDefault();
      document.body.classList.add("dragging");
    });
    window.addEventListener("dragleave", (e) => {
      if (!e.relatedTarget) document.body.classList.remove("dragging");
    });
    window.addEventListener("drop", (e) => {
      e.preventDefault();
      document.body.classList.remove("dragging");
      if (e.dataTransfer && e.dataTransfer.files.length) openFiles([...e.dataTransfer.files]);
    });
    document.addEventListener("paste", (e) => {
      if (typing(e)) return;
      const files = [...(e.clipboardData ? e.clipboardData.files : [])];
      if (!files.length) return;
      e.preventDefault();
      const f = files[0];
      const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
      const ext = (f.type.split("/")[1] || "png").replace("jpeg", "jpg");
      openFile(f, f.name && f.name !== "image.png" ? f.name : `pasted-${stamp}.${ext}`);
    });
    health();
    setInterval(() => {
      if (!document.hidden) health();
    }, HEALTH_EVERY_MS);
  }

  wire();
})();
