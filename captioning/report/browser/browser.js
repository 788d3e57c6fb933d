// The clip browser: a virtual-scrolled table over the columnar index in clips-data.js, a detail pane that
// plays a clip, threshold simulation over the run's filter rules, the rejected inputs and the run's facts.
// Everything is computed here from the data files, so the page works from file:// and scales to 100k rows.
"use strict";
(() => {
  const C = window.REELMILL_CLIPS;
  const RUN = window.REELMILL_RUN || {run: {}, config: {}, previews: {}, preview_errors: {}};
  const REJ = window.REELMILL_REJECTED || {codes: [], cols: {uri: [], code: [], error: []}, input: "videos"};
  const N = C.rows;
  const cols = C.cols;
  const D = C.dicts;
  const ROW_H = 30;
  const OVERSCAN = 8;
  const AROUND = 5; // clips shown on each side of a threshold
  const VIDEO_EXTS = ["mp4", "webm", "mkv", "mov"]; // the video members a shard may hold, most likely first
  const SCORES = C.score_names.filter((n) => !C.hidden_scores.includes(n));
  const PREVIEWS = RUN.previews || {};
  const $ = (sel, root = document) => root.querySelector(sel);
  let served = null; // serve.json when `reelmill report OUT --serve` serves the page

  // ---------- small helpers ----------
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  function fmt(v, digits = 4) {
    if (v === null || v === undefined || Number.isNaN(v)) return "";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return v.toLocaleString("en-US");
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
    return Number(v.toPrecision(digits)).toString();
  }
  function hours(seconds) {
    const h = seconds / 3600;
    if (h === 0) return "0 h";
    if (h < 0.1) return `${(seconds / 60).toFixed(1)} min`;
    return `${h < 10 ? h.toFixed(2) : h.toFixed(1)} h`;
  }
  const basename = (uri) => (uri || "").replace(/\/+$/, "").split("/").pop();
  const dictValue = (name, i) => (cols[name][i] < 0 ? null : D[name][cols[name][i]]);
  const statusOf = (i) => (cols.kept[i] ? "kept" : dictValue("reason", i));
  const enc = (s) => encodeURIComponent(s);

  // ---------- state in the URL hash ----------
  const state = {
    tab: "clips", status: "", reason: "", rule: "", source: "", shard: "", camera: "", q: "",
    ranges: {}, sort: "", clip: "", rcode: "", rq: "",
  };
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    for (const k of ["tab", "status", "reason", "rule", "source", "shard", "camera", "q", "sort", "clip", "rcode", "rq"]) {
      state[k] = p.get(k) || (k === "tab" ? "clips" : "");
    }
    state.ranges = {};
    for (const [k, v] of p) {
      if (!k.startsWith("s.")) continue;
      const [lo, hi] = v.split("~");
      state.ranges[k.slice(2)] = [lo === "" ? null : Number(lo), hi === "" || hi === undefined ? null : Number(hi)];
    }
  }
  let writingHash = false;
  function writeHash() {
    const p = new URLSearchParams();
    for (const k of ["tab", "status", "reason", "rule", "source", "shard", "camera", "q", "sort", "clip", "rcode", "rq"]) {
      if (state[k] && !(k === "tab" && state[k] === "clips")) p.set(k, state[k]);
    }
    for (const [name, [lo, hi]] of Object.entries(state.ranges)) {
      if (lo !== null || hi !== null) p.set(`s.${name}`, `${lo ?? ""}~${hi ?? ""}`);
    }
    const hash = p.toString();
    if (location.hash.slice(1) !== hash) {
      writingHash = true;
      history.replaceState(null, "", hash ? `#${hash}` : location.pathname + location.search);
      writingHash = false;
    }
  }

  // ---------- a virtual-scrolled table ----------
  class VirtualTable {
    constructor(container, columns, {onClick, onSort, rowClass} = {}) {
      this.container = container;
      this.columns = columns;
      this.onClick = onClick;
      this.onSort = onSort;
      this.rowClass = rowClass;
      this.rows = new Int32Array(0);
      this.template = columns.map((c) => `${c.width}px`).join(" ");
      this.head = el("div", {class: "vt-head", role: "row"});
      this.head.style.gridTemplateColumns = this.template;
      for (const c of columns) {
        this.head.append(el("div", {"data-col": c.id, title: c.title || c.label, onclick: () => onSort && onSort(c.id)}, c.label));
      }
      this.body = el("div", {class: "vt-body"});
      this.empty = el("div", {class: "vt-empty", hidden: true}, "No rows match these filters.");
      container.append(this.head, this.empty, this.body);
      container.addEventListener("scroll", () => this.schedule());
      window.addEventListener("resize", () => this.schedule());
      this.pending = false;
    }
    setRows(rows) {
      this.rows = rows;
      this.body.style.height = `${rows.length * ROW_H}px`;
      this.empty.hidden = rows.length > 0;
      this.render();
    }
    setSorted(colId, desc) {
      for (const h of this.head.children) {
        h.classList.toggle("sorted-asc", h.dataset.col === colId && !desc);
        h.classList.toggle("sorted-desc", h.dataset.col === colId && desc);
      }
    }
    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.render(); });
    }
    scrollToPosition(pos) {
      const top = pos * ROW_H;
      const view = this.container.clientHeight - ROW_H;
      if (top < this.container.scrollTop || top > this.container.scrollTop + view) this.container.scrollTop = Math.max(0, top - view / 2);
    }
    render() {
      const height = this.container.clientHeight || 600;
      const first = Math.max(0, Math.floor(this.container.scrollTop / ROW_H) - OVERSCAN);
      const last = Math.min(this.rows.length, Math.ceil((this.container.scrollTop + height) / ROW_H) + OVERSCAN);
      const frag = document.createDocumentFragment();
      for (let pos = first; pos < last; pos++) {
        const i = this.rows[pos];
        const row = el("div", {class: "vt-row" + (this.rowClass ? this.rowClass(i) : ""), role: "row", "data-row": i});
        row.style.top = `${pos * ROW_H}px`;
        row.style.gridTemplateColumns = this.template;
        for (const c of this.columns) {
          const cell = el("div", {class: c.num ? "num" : ""});
          const v = c.render ? c.render(i) : c.get(i);
          if (v instanceof Node) cell.append(v);
          else {
            cell.textContent = c.num ? fmt(v) : v ?? "";
            if (!c.num && v) cell.title = v;
          }
          row.append(cell);
        }
        if (this.onClick) row.addEventListener("click", () => this.onClick(i));
        frag.append(row);
      }
      this.body.replaceChildren(frag);
    }
  }

  // ---------- clips: filter and sort ----------
  const lowerSummary = cols.summary.map((s) => (s ? s.toLowerCase() : ""));
  const keyToRow = new Map();
  for (let i = 0; i < N; i++) keyToRow.set(cols.key[i], i);
  const durations = cols.dur;
  const scoreCol = (name) => C.scores[name] || null;

  const CLIP_COLUMNS = [
    {id: "key", label: "clip", width: 250, get: (i) => cols.key[i]},
    {id: "status", label: "kept / reason", width: 150, render: (i) => {
      const kept = cols.kept[i];
      return el("span", {class: `tag ${kept ? "kept" : "dropped"}`, title: kept ? "kept" : statusOf(i)}, kept ? "kept" : statusOf(i));
    }, sortKey: (i) => (cols.kept[i] ? "" : statusOf(i))},
    {id: "source", label: "source", width: 170, get: (i) => basename(dictValue("source", i)), title: "source video (or input shard)"},
    {id: "start", label: "start s", width: 70, num: true, get: (i) => cols.start[i]},
    {id: "dur", label: "dur s", width: 62, num: true, get: (i) => durations[i]},
    {id: "shard", label: "shard", width: 170, get: (i) => dictValue("shard", i)},
    ...SCORES.map((name) => ({id: name, label: name.replace(/_/g, " "), width: 92, num: true, get: (i) => C.scores[name][i], title: `scores.${name}`})),
    ...(D.camera.length ? [{id: "camera", label: "camera", width: 90, get: (i) => dictValue("camera", i)}] : []),
    {id: "summary", label: "caption", width: 420, get: (i) => cols.summary[i]},
  ];
  const SORTABLE = new Map(CLIP_COLUMNS.map((c) => [c.id, c]));

  function matchingClips() {
    const f = state;
    const reason = f.reason ? D.reason.indexOf(f.reason) : -2;
    const rule = f.rule ? D.rule.indexOf(f.rule) : -2;
    const source = f.source ? D.source.indexOf(f.source) : -2;
    const shard = f.shard ? D.shard.indexOf(f.shard) : -2;
    const camera = f.camera ? D.camera.indexOf(f.camera) : -2;
    const q = f.q.trim().toLowerCase();
    const ranges = Object.entries(f.ranges)
      .filter(([name, [lo, hi]]) => scoreCol(name) && (lo !== null || hi !== null))
      .map(([name, [lo, hi]]) => [scoreCol(name), lo, hi]);
    const out = new Int32Array(N);
    let n = 0;
    for (let i = 0; i < N; i++) {
      if (f.status === "kept" && !cols.kept[i]) continue;
      if (f.status === "dropped" && cols.kept[i]) continue;
      if (reason !== -2 && cols.reason[i] !== reason) continue;
      if (rule !== -2 && cols.rule[i] !== rule) continue;
      if (source !== -2 && cols.source[i] !== source) continue;
      if (shard !== -2 && cols.shard[i] !== shard) continue;
      if (camera !== -2 && cols.camera[i] !== camera) continue;
      if (q && !lowerSummary[i].includes(q)) continue;
      let inRange = true;
      for (const [values, lo, hi] of ranges) {
        const v = values[i];
        if (v === null || (lo !== null && v < lo) || (hi !== null && v > hi)) { inRange = false; break; }
      }
      if (!inRange) continue;
      out[n++] = i;
    }
    return out.slice(0, n);
  }

  function sortRows(rows, spec) {
    if (!spec) return rows;
    const desc = spec.startsWith("-");
    const column = SORTABLE.get(desc ? spec.slice(1) : spec);
    if (!column) return rows;
    const key = column.sortKey || column.get;
    const values = new Map();
    for (const i of rows) values.set(i, key(i));
    const sign = desc ? -1 : 1;
    const arr = Array.from(rows);
    arr.sort((a, b) => {
      const va = values.get(a), vb = values.get(b);
      const na = va === null || va === undefined || va === "", nb = vb === null || vb === undefined || vb === "";
      if (na || nb) return na === nb ? a - b : na ? 1 : -1; // missing values last either way
      if (va < vb) return -sign;
      if (va > vb) return sign;
      return a - b;
    });
    return Int32Array.from(arr);
  }

  // ---------- detail chunks ----------
  const chunks = new Map();
  const chunkWaiters = new Map();
  window.reelmillDetails = (number, rows) => {
    chunks.set(number, rows);
    for (const resolve of chunkWaiters.get(number) || []) resolve(rows);
    chunkWaiters.delete(number);
  };
  function detailOf(i) {
    const number = Math.floor(i / C.detail_chunk);
    if (chunks.has(number)) return Promise.resolve(chunks.get(number)[i % C.detail_chunk]);
    return new Promise((resolve, reject) => {
      if (!chunkWaiters.has(number)) {
        chunkWaiters.set(number, []);
        const script = el("script", {src: `browser/details/${String(number).padStart(5, "0")}.js`});
        script.onerror = () => reject(new Error(`detail file ${number} did not load`));
        document.head.append(script);
      }
      chunkWaiters.get(number).push((rows) => resolve(rows[i % C.detail_chunk]));
    });
  }

  function mediaOf(i) {
    const loc = dictValue("location", i), shard = dictValue("shard", i), key = cols.key[i];
    if (served && loc && shard) {
      const base = `${enc(loc)}/${enc(shard)}/${enc(key)}`;
      return {videos: VIDEO_EXTS.map((ext) => `media/${base}.${ext}`), sheet: `sheet/${base}.jpg`, thumb: `media/${base}.jpg`, served: true};
    }
    const p = PREVIEWS[i];
    if (p) return {video: p.video, sheet: p.sheet, thumb: p.thumb || p.sheet, served: false};
    return null;
  }

  // ---------- clips view ----------
  let clipTable = null;
  let shownClips = new Int32Array(0);

  function optionList(select, values, counts, allLabel) {
    select.replaceChildren(el("option", {value: ""}, allLabel));
    for (const v of values) select.append(el("option", {value: v}, counts ? `${v} (${(counts.get(v) || 0).toLocaleString("en-US")})` : v));
  }
  function countsOf(name, onlyDropped = false) {
    const counts = new Map();
    for (let i = 0; i < N; i++) {
      if (onlyDropped && cols.kept[i]) continue;
      const v = dictValue(name, i);
      if (v !== null) counts.set(v, (counts.get(v) || 0) + 1);
    }
    return counts;
  }

  function buildClipsView() {
    const view = $("#view-clips");
    const status = el("select", {id: "f-status"}, el("option", {value: ""}, "kept and dropped"), el("option", {value: "kept"}, "kept"), el("option", {value: "dropped"}, "dropped"));
    const reason = el("select", {id: "f-reason"});
    const reasonCounts = countsOf("reason", true);
    optionList(reason, [...reasonCounts.keys()].sort((a, b) => reasonCounts.get(b) - reasonCounts.get(a) || (a < b ? -1 : 1)), reasonCounts, "any reason");
    const controls = [
      el("label", {}, "clips", status),
      el("label", {}, "drop reason", reason),
    ];
    if (D.rule.length) {
      const rule = el("select", {id: "f-rule"});
      const ruleCounts = countsOf("rule", true);
      optionList(rule, [...ruleCounts.keys()].sort(), ruleCounts, "any rule");
      controls.push(el("label", {}, "rule", rule));
    }
    const source = el("select", {id: "f-source"});
    const sourceCounts = countsOf("source");
    optionList(source, [...sourceCounts.keys()].sort(), sourceCounts, "any source");
    for (const o of source.options) if (o.value) o.textContent = `${basename(o.value)} (${sourceCounts.get(o.value)})`;
    const shard = el("select", {id: "f-shard"});
    const shardCounts = countsOf("shard");
    optionList(shard, [...shardCounts.keys()].sort(), shardCounts, "any shard");
    controls.push(el("label", {}, "source", source), el("label", {}, "shard", shard));
    if (D.camera.length) {
      const camera = el("select", {id: "f-camera"});
      const cameraCounts = countsOf("camera");
      optionList(camera, [...cameraCounts.keys()].sort(), cameraCounts, "any camera");
      controls.push(el("label", {}, "camera", camera));
    }
    const q = el("input", {id: "f-q", type: "search", placeholder: "caption text…"});
    controls.push(el("label", {}, "search", q), el("button", {id: "f-clear", type: "button", onclick: () => {
      Object.assign(state, {status: "", reason: "", rule: "", source: "", shard: "", camera: "", q: "", ranges: {}});
      syncControls(); refreshClips();
    }}, "clear filters"));
    const ranges = el("div", {class: "range-grid"});
    for (const name of C.score_names) {
      const lo = el("input", {type: "number", step: "any", placeholder: "min", "data-score": name, "data-side": "min", id: `f-min-${name}`});
      const hi = el("input", {type: "number", step: "any", placeholder: "max", "data-score": name, "data-side": "max", id: `f-max-${name}`});
      ranges.append(el("label", {}, el("span", {class: "mono"}, name), lo, hi));
    }
    const table = el("div", {class: "vt", id: "clips-table", role: "grid"});
    const detail = el("aside", {class: "detail", id: "detail", hidden: true});
    view.append(
      el("div", {class: "filters"}, controls),
      el("details", {class: "ranges"}, el("summary", {}, "score ranges"), ranges),
      el("div", {class: "count", id: "match-count", "aria-live": "polite"}),
      el("div", {class: "layout"}, table, detail),
    );
    for (const [node, key] of [[status, "status"], [reason, "reason"], [source, "source"], [shard, "shard"], [$("#f-rule", view), "rule"], [$("#f-camera", view), "camera"]]) {
      if (node) node.addEventListener("change", () => { state[key] = node.value; refreshClips(); });
    }
    let typing = null;
    q.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { state.q = q.value; refreshClips(); }, 150); });
    ranges.addEventListener("change", (e) => {
      const input = e.target;
      const name = input.dataset.score;
      const value = input.value === "" ? null : Number(input.value);
      const cur = state.ranges[name] || [null, null];
      cur[input.dataset.side === "min" ? 0 : 1] = value;
      state.ranges[name] = cur;
      refreshClips();
    });
    clipTable = new VirtualTable(table, CLIP_COLUMNS, {
      onClick: (i) => openClip(i),
      onSort: (id) => { state.sort = state.sort === id ? `-${id}` : id; refreshClips(); },
      rowClass: (i) => (state.clip && cols.key[i] === state.clip ? " selected" : ""),
    });
  }

  function syncControls() {
    const set = (id, v) => { const n = document.getElementById(id); if (n) n.value = v; };
    set("f-status", state.status); set("f-reason", state.reason); set("f-rule", state.rule);
    set("f-source", state.source); set("f-shard", state.shard); set("f-camera", state.camera); set("f-q", state.q);
    for (const name of C.score_names) {
      const [lo, hi] = state.ranges[name] || [null, null];
      set(`f-min-${name}`, lo ?? ""); set(`f-max-${name}`, hi ?? "");
    }
    if (Object.values(state.ranges).some(([lo, hi]) => lo !== null || hi !== null)) $("details.ranges").open = true;
    set("r-code", state.rcode); set("r-q", state.rq);
  }

  function refreshClips() {
    shownClips = sortRows(matchingClips(), state.sort);
    let seconds = 0;
    for (const i of shownClips) seconds += durations[i] || 0;
    const count = $("#match-count");
    count.dataset.count = shownClips.length;
    count.dataset.hours = seconds / 3600;
    count.textContent = `${shownClips.length.toLocaleString("en-US")} of ${N.toLocaleString("en-US")} candidate clips match · ${hours(seconds)}`;
    const desc = state.sort.startsWith("-");
    clipTable.setSorted(desc ? state.sort.slice(1) : state.sort, desc);
    clipTable.setRows(shownClips);
    writeHash();
  }

  function kv(rows) {
    return el("table", {class: "kv"}, rows.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) =>
      el("tr", {}, el("td", {}, k), el("td", {class: typeof v === "number" ? "num" : ""}, v instanceof Node ? v : fmt(v)))));
  }

  async function openClip(i, {scroll = false} = {}) {
    state.clip = cols.key[i];
    if (state.tab !== "clips") showTab("clips");
    writeHash();
    clipTable.render();
    if (scroll) {
      const pos = shownClips.indexOf(i);
      if (pos >= 0) clipTable.scrollToPosition(pos);
    }
    const pane = $("#detail");
    pane.hidden = false;
    pane.dataset.row = i;
    pane.replaceChildren(el("p", {class: "note"}, "loading…"));
    let d = {};
    try {
      d = (await detailOf(i)) || {};
    } catch (err) {
      pane.replaceChildren(el("p", {class: "note"}, String(err)));
      return;
    }
    if (Number(pane.dataset.row) !== i) return; // another row was opened meanwhile
    const media = mediaOf(i);
    const kept = cols.kept[i];
    const head = el("div", {},
      el("button", {class: "btn close", type: "button", title: "close", onclick: () => { pane.hidden = true; state.clip = ""; writeHash(); clipTable.render(); }}, "×"),
      el("h2", {}, cols.key[i]),
      el("span", {class: `tag ${kept ? "kept" : "dropped"}`}, kept ? "kept" : `dropped: ${statusOf(i)}`),
      dictValue("rule", i) ? el("span", {class: "note"}, `  rule ${dictValue("rule", i)}`) : null);
    const mediaBox = el("div", {class: "media", id: "detail-media"});
    let video = null;
    if (media) {
      video = el("video", {id: "detail-video", controls: true, preload: "auto", muted: true, playsinline: true});
      // a served clip's video member may be any container a shard holds; the browser tries them in order
      for (const src of media.videos || [media.video]) video.append(el("source", {src}));
      mediaBox.append(video, el("a", {href: media.sheet, target: "_blank", title: "the contact sheet, full size"},
        el("img", {id: "detail-sheet", src: media.sheet, alt: "contact sheet"})));
      if (!media.served) mediaBox.append(el("div", {class: "nomedia"}, "A small preview; start ", el("code", {}, "reelmill report OUT --serve"), " to play the clip itself."));
    } else {
      const why = !dictValue("location", i)
        ? "No media was written for this clip (dropped before it was cut, or the run did not use --keep-dropped)."
        : (RUN.preview_errors || {})[i] ? `No preview: ${RUN.preview_errors[i]}. Start ` : "Start ";
      mediaBox.append(el("div", {class: "nomedia", id: "no-media"}, why, dictValue("location", i) ? el("code", {}, "reelmill report OUT --serve") : null, dictValue("location", i) ? " to play" : null));
    }
    const parts = [head, mediaBox];
    parts.push(el("h3", {}, "caption"));
    parts.push(el("p", {id: "detail-summary"}, cols.summary[i] || el("span", {class: "note"}, "no caption")));
    if (d.segments && d.segments.length) {
      const list = el("ul", {class: "segments", id: "detail-segments"});
      for (const [start, end, text] of d.segments) {
        const item = el("li", {"data-start": start, "data-end": end, role: "button", tabindex: "0"},
          el("span", {class: "t"}, `${fmt(start, 3)}–${fmt(end, 3)} s`), el("span", {}, text));
        item.addEventListener("click", () => {
          if (!video) return;
          video.currentTime = start;
          video.play().catch(() => {});
        });
        list.append(item);
      }
      parts.push(list);
      if (video) {
        video.addEventListener("timeupdate", () => {
          for (const li of list.children) {
            li.classList.toggle("playing", video.currentTime >= Number(li.dataset.start) && video.currentTime < Number(li.dataset.end));
          }
        });
      }
    }
    if (d.caption_model) parts.push(el("p", {class: "note"}, `by ${d.caption_model}${d.prompt_id ? ` · prompt ${d.prompt_id}` : ""}`));
    const scoreRows = C.score_names.map((name) => [name, C.scores[name][i]]).filter(([, v]) => v !== null);
    if (scoreRows.length) parts.push(el("h3", {}, "scores"), kv(scoreRows));
    if (dictValue("camera", i)) {
      const cam = d.camera || {};
      parts.push(el("h3", {}, "camera"), kv([["label", dictValue("camera", i)], ...Object.entries(cam),
        ["windows", (d.camera_windows || []).map(([s, e, l]) => `${fmt(s, 3)}–${fmt(e, 3)} s ${l}`).join(", ")]]));
    }
    if (d.text) parts.push(el("h3", {}, "burned-in text"), el("p", {id: "detail-text"}, d.text.length ? d.text.join(" · ") : el("span", {class: "note"}, "read, none found")));
    parts.push(el("h3", {}, "clip"), kv([
      ["clip id", d.clip_id],
      ["source", dictValue("source", i)],
      ["source span", cols.start[i] === null ? null : `${fmt(cols.start[i], 6)}–${fmt(d.source_end_s, 6)} s`],
      ["duration", durations[i] === null ? null : `${fmt(durations[i], 4)} s`],
      ["size", cols.w[i] ? `${cols.w[i]}×${cols.h[i]}` : null],
      ["fps", d.fps], ["frames", d.num_frames], ["codec", d.codec], ["transition", d.transition],
      ["location", dictValue("location", i) && dictValue("shard", i) ? `${dictValue("location", i)}/${dictValue("shard", i)}` : null],
      ["input shard", d.input_shard], ["error", d.error_code ? `${d.error_code}: ${d.error || ""}` : null],
    ]));
    if (d.metrics) parts.push(el("h3", {}, "caption metrics"), el("pre", {class: "config"}, JSON.stringify(d.metrics, null, 1)));
    if (d.errors) parts.push(el("h3", {}, "errors"), kv(d.errors.map((e) => [e.stage, e.message])));
    pane.replaceChildren(...parts);
  }

  // ---------- threshold tuning ----------
  const RULES = C.rules;
  const ruleReasons = new Set(RULES.flatMap((r) => r.reasons));
  // the clips the rules decided (or, in score-only runs, would decide): kept ones and those a rule dropped
  const eligible = new Uint8Array(N);
  for (let i = 0; i < N; i++) eligible[i] = cols.kept[i] || ruleReasons.has(dictValue("reason", i)) ? 1 : 0;
  // one check per bound of a rule (a rule with min and max is two), in the order decide() applies them
  const CHECKS = [];
  RULES.forEach((r, ri) => {
    if (r.drop) CHECKS.push({ri, side: "drop", score: r.score, drop: new Set(r.drop)});
    else for (const side of ["min", "max"]) if (r[side] !== null && r[side] !== undefined) CHECKS.push({ri, side, score: r.score, value: r[side]});
  });
  function fails(check, i, override) {
    if (check.side === "drop") {
      const labels = override && override.check === check ? override.drop : check.drop;
      return labels.has(dictValue("camera", i));
    }
    const values = scoreCol(check.score);
    const v = values ? values[i] : null;
    if (v === null) return false;
    const t = override && override.check === check ? override.value : check.value;
    return check.side === "min" ? v < t : v > t;
  }
  function simulate(override) {
    let kept = 0, seconds = 0;
    for (let i = 0; i < N; i++) {
      if (!eligible[i]) continue;
      let pass = true;
      for (const c of CHECKS) if (fails(c, i, override)) { pass = false; break; }
      if (pass) { kept++; seconds += durations[i] || 0; }
    }
    return {kept, seconds};
  }
  // the clips whose fate this bound alone decides (every other bound passes), sorted by the score
  function hingeOf(check) {
    const nulls = [], rows = [];
    const values = scoreCol(check.score);
    for (let i = 0; i < N; i++) {
      if (!eligible[i]) continue;
      let others = true;
      for (const c of CHECKS) if (c !== check && fails(c, i)) { others = false; break; }
      if (!others) continue;
      if (!values || values[i] === null) nulls.push(i);
      else rows.push(i);
    }
    rows.sort((a, b) => values[a] - values[b] || a - b);
    const sorted = Float64Array.from(rows, (i) => values[i]);
    const prefix = new Float64Array(rows.length + 1);
    rows.forEach((i, k) => { prefix[k + 1] = prefix[k] + (durations[i] || 0); });
    let nullSeconds = 0;
    for (const i of nulls) nullSeconds += durations[i] || 0;
    const distinct = [];
    for (const v of sorted) if (!distinct.length || distinct[distinct.length - 1] !== v) distinct.push(v);
    return {rows, sorted, prefix, nulls: nulls.length, nullSeconds, distinct};
  }
  function lowerBound(arr, t) { let lo = 0, hi = arr.length; while (lo < hi) { const m = (lo + hi) >> 1; if (arr[m] < t) lo = m + 1; else hi = m; } return lo; }
  function upperBound(arr, t) { let lo = 0, hi = arr.length; while (lo < hi) { const m = (lo + hi) >> 1; if (arr[m] <= t) lo = m + 1; else hi = m; } return lo; }
  function keptWith(h, side, t) {
    // min: values >= t stay; max: values <= t stay; clips without the score always pass
    const [a, b] = side === "min" ? [lowerBound(h.sorted, t), h.sorted.length] : [0, upperBound(h.sorted, t)];
    return {kept: h.nulls + (b - a), seconds: h.nullSeconds + h.prefix[b] - h.prefix[a], a, b};
  }
  function thresholdAt(h, pos) {
    const d = h.distinct;
    if (!d.length) return 0;
    const pad = (d[d.length - 1] - d[0]) / 1000 || Math.abs(d[0]) / 100 || 0.01;
    if (pos <= 0) return d[0] - pad;
    if (pos >= d.length) return d[d.length - 1] + pad;
    return (d[pos - 1] + d[pos]) / 2; // between two values, so no clip sits exactly on it
  }
  function thumb(i, value) {
    const media = mediaOf(i);
    const image = media ? el("img", {src: media.thumb, alt: "", loading: "lazy"}) : el("div", {class: "noimg"}, "no preview");
    // a shard from elsewhere may hold no KEY.jpg: a grey box, not a broken image
    if (media) image.addEventListener("error", () => image.replaceWith(el("div", {class: "noimg"}, "no picture")));
    return el("li", {"data-row": i, title: cols.key[i], onclick: () => openClip(i, {scroll: true})},
      image, el("div", {class: "v"}, fmt(value, 5)), el("div", {class: "k"}, cols.key[i]));
  }

  function buildTuningView() {
    const view = $("#view-tuning");
    const base = simulate(null);
    const mode = C.mode === "score-only"
      ? el("p", {class: "note"}, "This run used filters.mode=score-only: every clip was kept and the rules below only show what they would drop. Counts are what each threshold would keep, all other rules as configured.")
      : el("p", {class: "note"}, "Counts are what each threshold would keep, all other rules as configured, computed from the manifest (no rerun). Clips dropped before the rules (too short, transitions, failed captions) stay out.");
    const summary = el("p", {id: "tune-baseline", "data-kept": base.kept, "data-hours": base.seconds / 3600},
      `As configured the rules keep ${base.kept.toLocaleString("en-US")} of ${eligible.reduce((a, b) => a + b, 0).toLocaleString("en-US")} clips they see · ${hours(base.seconds)}.`);
    view.append(mode, summary);
    if (!CHECKS.length) {
      view.append(el("p", {class: "note", id: "tune-none"}, "This run has no filter rules (filters.rules is empty)."));
      return;
    }
    const list = el("div", {class: "rules"});
    view.append(list);
    for (const check of CHECKS) list.append(check.side === "drop" ? cameraCard(check, base) : thresholdCard(check, base));
  }

  function thresholdCard(check, base) {
    const id = `tune-${check.ri}-${check.side}`;
    const op = check.side === "min" ? "≥" : "≤";
    const h = hingeOf(check);
    const card = el("section", {class: "rule", id, "data-rule": check.ri, "data-side": check.side, "data-score": check.score});
    card.append(el("h2", {}, `${check.score} ${check.side} (keep ${check.score} ${op} threshold) · configured ${fmt(check.value, 6)}`));
    if (!h.sorted.length) {
      card.append(el("p", {class: "note"}, `No clip the rules see has a ${check.score} score.`));
      return card;
    }
    const slider = el("input", {type: "range", id: `${id}-slider`, min: 0, max: h.distinct.length, step: 1, "aria-label": `${check.score} ${check.side} threshold`});
    const number = el("input", {type: "number", step: "any", id: `${id}-value`, "aria-label": `${check.score} ${check.side} threshold value`});
    const out = el("output", {id: `${id}-count`});
    const dropped = el("ul", {id: `${id}-dropped`});
    const kept = el("ul", {id: `${id}-kept`});
    card.append(
      el("div", {class: "slider-row"}, el("span", {class: "note"}, "threshold"), slider, number),
      out,
      el("div", {class: "around"},
        el("div", {}, el("h3", {}, "just dropped"), dropped),
        el("div", {}, el("h3", {}, "just kept"), kept)),
    );
    function update(t, fromSlider) {
      if (!fromSlider) slider.value = check.side === "min" ? lowerBound(h.distinct, t) : upperBound(h.distinct, t);
      number.value = Number(t.toPrecision(6));
      const r = keptWith(h, check.side, t);
      // every other bound as configured: clips outside the hinge set are dropped by another rule anyway
      const delta = r.kept - base.kept;
      out.dataset.threshold = t;
      out.dataset.kept = r.kept;
      out.dataset.hours = r.seconds / 3600;
      out.replaceChildren(`keeps ${r.kept.toLocaleString("en-US")} clips · ${hours(r.seconds)} `,
        el("span", {class: delta > 0 ? "delta-up" : delta < 0 ? "delta-down" : "note"}, `(${delta >= 0 ? "+" : ""}${delta.toLocaleString("en-US")} vs configured)`));
      const lowSide = h.rows.slice(Math.max(0, (check.side === "min" ? r.a : r.b) - AROUND), check.side === "min" ? r.a : r.b).reverse();
      const highSide = h.rows.slice(check.side === "min" ? r.a : r.b, (check.side === "min" ? r.a : r.b) + AROUND);
      const [justDropped, justKept] = check.side === "min" ? [lowSide, highSide] : [highSide, lowSide];
      const values = scoreCol(check.score);
      dropped.replaceChildren(...justDropped.map((i) => thumb(i, values[i])));
      kept.replaceChildren(...justKept.map((i) => thumb(i, values[i])));
      if (!justDropped.length) dropped.append(el("li", {class: "note"}, "none"));
      if (!justKept.length) kept.append(el("li", {class: "note"}, "none"));
    }
    slider.addEventListener("input", () => update(thresholdAt(h, Number(slider.value)), true));
    number.addEventListener("change", () => { if (number.value !== "") update(Number(number.value), false); });
    update(check.value, false);
    return card;
  }

  function cameraCard(check, base) {
    const id = `tune-${check.ri}-drop`;
    const card = el("section", {class: "rule", id, "data-rule": check.ri, "data-side": "drop", "data-score": "camera"});
    card.append(el("h2", {}, `camera labels dropped · configured ${[...check.drop].join(", ")}`));
    const out = el("output", {id: `${id}-count`});
    const boxes = el("div", {class: "labels"});
    const labels = new Set(D.camera);
    for (const l of check.drop) labels.add(l);
    const chosen = new Set(check.drop);
    function update() {
      const r = simulate({check, drop: chosen});
      const delta = r.kept - base.kept;
      out.dataset.kept = r.kept;
      out.dataset.hours = r.seconds / 3600;
      out.replaceChildren(`keeps ${r.kept.toLocaleString("en-US")} clips · ${hours(r.seconds)} `,
        el("span", {class: delta > 0 ? "delta-up" : delta < 0 ? "delta-down" : "note"}, `(${delta >= 0 ? "+" : ""}${delta.toLocaleString("en-US")} vs configured)`));
    }
    for (const label of [...labels].sort()) {
      const box = el("input", {type: "checkbox", "data-label": label, checked: chosen.has(label)});
      box.addEventListener("change", () => { if (box.checked) chosen.add(label); else chosen.delete(label); update(); });
      boxes.append(el("label", {}, box, ` drop ${label}`));
    }
    card.append(boxes, out);
    update();
    return card;
  }

  // ---------- rejected inputs ----------
  let rejectedTable = null;
  function buildRejectedView() {
    const view = $("#view-rejected");
    const n = REJ.cols.uri.length;
    const noun = REJ.input === "shards" ? "input shards" : "input videos";
    if (!n) {
      view.append(el("p", {class: "note", id: "rejected-count", "data-count": 0}, `No ${noun} were rejected.`));
      return;
    }
    const counts = new Map();
    for (const c of REJ.cols.code) counts.set(REJ.codes[c], (counts.get(REJ.codes[c]) || 0) + 1);
    const code = el("select", {id: "r-code"});
    optionList(code, [...counts.keys()].sort(), counts, "any error");
    const q = el("input", {id: "r-q", type: "search", placeholder: "uri or error text…"});
    const table = el("div", {class: "vt", id: "rejected-table", role: "grid"});
    view.append(el("div", {class: "filters"}, el("label", {}, "error", code), el("label", {}, "search", q)),
      el("div", {class: "count", id: "rejected-count"}), table);
    rejectedTable = new VirtualTable(table, [
      {id: "uri", label: REJ.input === "shards" ? "shard" : "video", width: 420, get: (i) => REJ.cols.uri[i]},
      {id: "code", label: "error code", width: 150, get: (i) => REJ.codes[REJ.cols.code[i]]},
      {id: "error", label: "error", width: 640, get: (i) => REJ.cols.error[i]},
    ], {});
    code.addEventListener("change", () => { state.rcode = code.value; refreshRejected(); });
    let typing = null;
    q.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { state.rq = q.value; refreshRejected(); }, 150); });
  }
  function refreshRejected() {
    if (!rejectedTable) return;
    const want = state.rcode ? REJ.codes.indexOf(state.rcode) : -2;
    const q = state.rq.trim().toLowerCase();
    const rows = [];
    for (let i = 0; i < REJ.cols.uri.length; i++) {
      if (want !== -2 && REJ.cols.code[i] !== want) continue;
      if (q && !`${REJ.cols.uri[i]} ${REJ.cols.error[i] || ""}`.toLowerCase().includes(q)) continue;
      rows.push(i);
    }
    const count = $("#rejected-count");
    count.dataset.count = rows.length;
    count.textContent = `${rows.length.toLocaleString("en-US")} of ${REJ.cols.uri.length.toLocaleString("en-US")} rejected ${REJ.input === "shards" ? "input shards" : "input videos"}`;
    rejectedTable.setRows(Int32Array.from(rows));
    writeHash();
  }

  // ---------- run facts ----------
  function buildFactsView() {
    const view = $("#view-facts");
    const run = RUN.run || {};
    const grid = el("div", {class: "facts-grid"});
    const section = (id, title, ...body) => el("section", {id}, el("h2", {}, title), ...body);
    const timings = run.timings || {};
    grid.append(section("facts-run", "Run", kv([
      ["job", RUN.job], ["state", run.state], ["models", run.models], ["started", run.started_at], ["finished", run.finished_at],
      ["wall", timings.wall_s === undefined ? null : `${fmt(timings.wall_s, 4)} s`], ["config fingerprint", run.config_fingerprint],
      ["output", run.output], ["command", (run.command || []).join(" ")],
    ])));
    if (run.counts) grid.append(section("facts-counts", "Counts", kv(Object.entries(run.counts).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : v]))));
    const tp = run.throughput || {};
    grid.append(section("facts-throughput", "Throughput", kv(Object.entries(tp))));
    const cap = run.captioning || {};
    if (Object.keys(cap).length) {
      const tokensPerS = cap.generate_s ? cap.new_tokens / cap.generate_s : null;
      const rows = [["model", cap.model], ["prompt", cap.prompt_id], ["clips", cap.clips], ["captioned", cap.captioned],
        ["new tokens", cap.new_tokens], ["tokens/s (generation)", tokensPerS], ["clips/s", cap.clips_per_s]];
      for (const a of cap.actors || []) rows.push([`actor ${a.worker} (${a.device})`, `${fmt(a.tokens_per_s)} tokens/s, ${a.clips} clips`]);
      grid.append(section("facts-captioning", "Captioning", el("div", {id: "tokens-per-s", "data-value": tokensPerS ?? ""}), kv(rows)));
    }
    const stageTimes = Object.entries(timings.stage_task_s || {}).map(([k, v]) => [`${k} (task s)`, v]);
    grid.append(section("facts-timings", "Timings", kv([...Object.entries(timings).filter(([k, v]) => typeof v !== "object" && k !== "start_unix"), ...stageTimes])));
    grid.append(section("facts-versions", "Versions", kv(Object.entries(run.versions || {}))));
    if (C.rules.length) grid.append(section("facts-rules", "Filter rules", kv(C.rules.map((r, k) => [`${k + 1}. ${r.score}`, r.drop ? `drop ${r.drop.join(", ")}` : [r.min !== null ? `min ${r.min}` : null, r.max !== null ? `max ${r.max}` : null].filter(Boolean).join(", ")]))));
    view.append(grid, el("details", {id: "facts-config"}, el("summary", {}, "config (as the run used it)"),
      el("pre", {class: "config"}, JSON.stringify(RUN.config || {}, null, 2))));
  }

  // ---------- tabs and start ----------
  const TABS = [["clips", "Clips"], ["tuning", "Threshold tuning"], ["rejected", "Rejected inputs"], ["facts", "Run facts"]];
  function showTab(tab) {
    state.tab = TABS.some(([t]) => t === tab) ? tab : "clips";
    for (const [t] of TABS) {
      $(`#view-${t}`).classList.toggle("active", t === state.tab);
      $(`#tab-${t}`).classList.toggle("active", t === state.tab);
    }
    if (state.tab === "clips") clipTable.schedule();
    if (state.tab === "rejected" && rejectedTable) rejectedTable.schedule();
    writeHash();
  }

  function applyState() {
    syncControls();
    showTab(state.tab);
    refreshClips();
    refreshRejected();
    const i = state.clip ? keyToRow.get(state.clip) : undefined;
    if (i !== undefined) openClip(i, {scroll: true});
    else $("#detail").hidden = true;
  }

  function start() {
    const run = RUN.run || {};
    const kept = cols.kept.reduce((a, b) => a + b, 0);
    let seconds = 0, keptSeconds = 0, transitions = 0;
    for (let i = 0; i < N; i++) {
      // rows that mark where two shots meet are listed (and filterable) but are not clips, as in the report
      if (dictValue("reason", i) === "transition") { transitions++; continue; }
      seconds += durations[i] || 0; if (cols.kept[i]) keptSeconds += durations[i] || 0;
    }
    const clips = N - transitions;
    const num = (n) => n.toLocaleString("en-US");
    const header = $("header.top");
    header.append(el("span", {class: "facts", id: "run-facts"},
      `${RUN.job || C.job} · ${num(clips)} candidate clips (${hours(seconds)}) · ${num(kept)} kept (${hours(keptSeconds)}) · ${num(clips - kept)} dropped` +
      (transitions ? ` · ${num(transitions)} transitions between shots` : "") +
      ` · ${num(REJ.cols.uri.length)} rejected inputs`));
    if (run.models === "random-weights") {
      header.before(el("div", {class: "banner", id: "random-weights"}, "models: random-weights — this run used tiny random-weight stand-ins, not real models: its scores and captions mean nothing."));
    }
    const nav = $("nav.tabs");
    for (const [t, label] of TABS) nav.append(el("button", {id: `tab-${t}`, type: "button", onclick: () => showTab(t)}, label));
    buildClipsView();
    buildTuningView();
    buildRejectedView();
    buildFactsView();
    readHash();
    applyState();
    window.addEventListener("hashchange", () => { if (!writingHash) { readHash(); applyState(); } });
    document.documentElement.dataset.ready = "1";
    // served by `reelmill report OUT --serve`: every clip plays from the shards
    if (location.protocol === "file:") return;
    fetch("serve.json").then((r) => (r.ok ? r.json() : null)).catch(() => null).then((info) => {
      if (!info) return;
      served = info;
      document.documentElement.dataset.served = "1";
      // every clip with media now has a picture beside its threshold
      $("#view-tuning").replaceChildren();
      buildTuningView();
      const pane = $("#detail");
      if (!pane.hidden && pane.dataset.row) openClip(Number(pane.dataset.row));
    });
  }
  start();
})();
