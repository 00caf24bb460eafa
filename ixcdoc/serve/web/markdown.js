// ixcdoc's Markdown renderer for model output: text in, DOM nodes out. It never builds HTML
// from the text (no innerHTML), so nothing in a transcription can run or load anything.
// Blocks: headings, paragraphs (a single newline is a line break), fenced code, tables,
// lists, block quotes, rules. Inline: `code`, **strong**, *emphasis*, ~~strike~~, links
// (http and https only), <br>. Images are shown as their alt text: nothing is fetched.
"use strict";

const IxMarkdown = (() => {
  const el = (tag, cls) => {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    return n;
  };

  // Inline spans: the earliest match of any rule wins; text between matches stays text.
  const INLINE = [
    ["code", /`([^`\n]+)`/],
    ["img", /!\[([^\]\n]*)\]\(([^)\s]*)\)/],
    ["link", /\[([^\]\n]+)\]\((https?:\/\/[^)\s]+)\)/],
    ["strong", /\*\*(?=\S)([^\n]*?\S)\*\*/],
    ["strong", /__(?=\S)([^\n]*?\S)__/],
    ["em", /\*(?=[^\s*])([^*\n]*?[^\s*])\*/],
    ["del", /~~(?=\S)([^\n]*?\S)~~/],
    ["br", /<br\s*\/?>/i],
  ];

  function inline(text, parent) {
    while (text) {
      let best = null;
      for (const [kind, re] of INLINE) {
        const m = re.exec(text);
        if (m && (best === null || m.index < best.m.index)) best = { kind, m };
      }
      if (best === null) {
        parent.append(document.createTextNode(text));
        return;
      }
      const { kind, m } = best;
      if (m.index > 0) parent.append(document.createTextNode(text.slice(0, m.index)));
      if (kind === "code") {
        const c = el("code");
        c.textContent = m[1];
        parent.append(c);
      } else if (kind === "img") {
        const s = el("span", "md-img");
        s.textContent = "[image" + (m[1] ? ": " + m[1] : "") + "]";
        parent.append(s);
      } else if (kind === "link") {
        const a = el("a");
        a.href = m[2];
        a.rel = "noopener noreferrer";
        a.target = "_blank";
        inline(m[1], a);
        parent.append(a);
      } else if (kind === "br") {
        parent.append(el("br"));
      } else {
        const s = el(kind);
        inline(m[1], s);
        parent.append(s);
      }
      text = text.slice(m.index + m[0].length);
    }
  }

  // Lines of a paragraph joined by line breaks (transcriptions keep their lines).
  function lines(list, parent) {
    list.forEach((line, i) => {
      if (i) parent.append(el("br"));
      inline(line.replace(/\s+$/, ""), parent);
    });
  }

  const FENCE = /^\s{0,3}(```|~~~)/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
  const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const QUOTE = /^\s{0,3}>\s?(.*)$/;
  const TABLE_SEP = /^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$/;

  function cells(row) {
    let s = row.trim();
    if (s.startsWith("|")) s = s.slice(1);
    if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
    const out = [];
    let cur = "";
    for (let i = 0; i < s.length; i++) {
      if (s[i] === "\\" && s[i + 1] === "|") {
        cur += "|";
        i++;
      } else if (s[i] === "|") {
        out.push(cur.trim());
        cur = "";
      } else cur += s[i];
    }
    out.push(cur.trim());
    return out;
  }

  function table(rows, parent) {
    const wrap = el("div", "md-table");
    const t = el("table");
    const head = el("thead");
    const tr = el("tr");
    const names = cells(rows[0]);
    for (const c of names) {
      const th = el("th");
      inline(c, th);
      tr.append(th);
    }
    head.append(tr);
    t.append(head);
    const body = el("tbody");
    for (const row of rows.slice(2)) {
      const r = el("tr");
      const cs = cells(row);
      for (let i = 0; i < Math.max(cs.length, names.length); i++) {
        const td = el("td");
        inline(cs[i] || "", td);
        r.append(td);
      }
      body.append(r);
    }
    t.append(body);
    wrap.append(t);
    parent.append(wrap);
  }

  function list(items, parent) {
    // items: [{indent, ordered, text}]; nested by indentation.
    const stack = [];
    for (const it of items) {
      while (stack.length && it.indent < stack[stack.length - 1].indent) stack.pop();
      let top = stack[stack.length - 1];
      if (!top || it.indent > top.indent) {
        const l = el(it.ordered ? "ol" : "ul");
        if (it.ordered && it.start !== 1) l.start = it.start;
        const host = top ? top.list.lastElementChild || top.list : parent;
        host.append(l);
        top = { indent: it.indent, list: l };
        stack.push(top);
      }
      const li = el("li");
      inline(it.text, li);
      top.list.append(li);
    }
  }

  function blocks(src, parent) {
    const all = src.replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    let para = [];
    const flush = () => {
      if (para.length) {
        const p = el("p");
        lines(para, p);
        parent.append(p);
        para = [];
      }
    };
    while (i < all.length) {
      const line = all[i];
      let m;
      if (!line.trim()) {
        flush();
        i++;
      } else if ((m = FENCE.exec(line))) {
        flush();
        const code = [];
        i++;
        while (i < all.length && !all[i].trimStart().startsWith(m[1])) code.push(all[i++]);
        i++;
        const pre = el("pre");
        const c = el("code");
        c.textContent = code.join("\n");
        pre.append(c);
        parent.append(pre);
      } else if ((m = HEADING.exec(line))) {
        flush();
        const h = el("h" + m[1].length);
        inline(m[2], h);
        parent.append(h);
        i++;
      } else if (RULE.test(line) && !para.length) {
        parent.append(el("hr"));
        i++;
      } else if (line.includes("|") && i + 1 < all.length && TABLE_SEP.test(all[i + 1]) &&
                 all[i + 1].includes("-")) {
        flush();
        const rows = [line, all[i + 1]];
        i += 2;
        while (i < all.length && all[i].includes("|") && all[i].trim()) rows.push(all[i++]);
        table(rows, parent);
      } else if (ITEM.test(line)) {
        flush();
        const items = [];
        while (i < all.length && (m = ITEM.exec(all[i]))) {
          const ordered = /\d/.test(m[2]);
          items.push({
            indent: m[1].replace(/\t/g, "    ").length,
            ordered,
            start: ordered ? parseInt(m[2], 10) : 1,
            text: m[3],
          });
          i++;
          // a following indented line continues the item
          while (i < all.length && all[i].trim() && /^\s{2,}/.test(all[i]) && !ITEM.test(all[i])) {
            items[items.length - 1].text += " " + all[i].trim();
            i++;
          }
        }
        list(items, parent);
      } else if (QUOTE.test(line)) {
        flush();
        const quoted = [];
        while (i < all.length && (m = QUOTE.exec(all[i]))) {
          quoted.push(m[1]);
          i++;
        }
        const q = el("blockquote");
        blocks(quoted.join("\n"), q);
        parent.append(q);
      } else {
        para.push(line);
        i++;
      }
    }
    flush();
  }

  /** Render Markdown text into a new <div class="md">. */
  function render(text) {
    const root = el("div", "md");
    blocks(String(text || ""), root);
    return root;
  }

  return { render };
})();
