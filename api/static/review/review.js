// The staff review page. Plain JavaScript over the public API (see /docs, tag "review"):
// no build step. State that should survive a reload (filters, page, open ticket) lives
// in the URL hash; the font size in localStorage.
"use strict";

const $ = (sel) => document.querySelector(sel);
const PAGE = 20;
const REFRESH_MS = 30000;
const SPEAKERS = { caller: "来电人", agent: "话务员" };
const VARIETY_LABELS = { mandarin: "普通话", cantonese: "粤语", wu: "吴语", min: "闽语",
  hakka: "客家话", southwestern: "西南官话", other: "其他方言", unknown: "未知方言" };
const STATUS = { new: "未处理", in_review: "复核中", reviewed: "已批准" };
const SOURCE = { voice_note: "语音留言", hotline: "热线录音", message: "文字留言" };
const URGENCY = { urgent: "紧急", normal: "一般" };
const FLAG_LABELS = {
  urgent: "紧急", possible_urgent: "可能紧急", low_confidence: "低置信度",
  homophone_match: "同音词匹配", no_location: "缺少地点", uncategorised: "未能分类",
  empty_transcript: "无有效内容", wrong_language: "语种异常", invalid_phone: "号码异常",
};

const REPEAT_ACTIONS = {
  "duplicate.link": "标记为重复件", "duplicate.unlink": "取消重复件",
  "cluster.form": "形成一类事", "cluster.grow": "一类事新增工单", "cluster.merge": "合并一类事",
  "cluster.split": "拆分一类事", "cluster.leave": "移出一类事",
};

const state = {
  csrf: null, user: null, taxonomy: null,
  filters: { status: "waiting", category: "", urgency: "", source: "", dialect: "", from: "", to: "" },
  offset: 0, queue: null, ticketId: null, view: null, stopAt: null, current: -1,
  busy: false,
};

// ----------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status; this.code = err.code; this.details = err.details;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const r = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (r.status === 401 && path !== "/v1/session") showSignIn("登录已过期，请重新登录。");
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

// ----------------------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function clock(seconds) {
  const s = Math.max(0, seconds || 0);
  const m = Math.floor(s / 60);
  return `${m}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
}

function when(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString("zh-CN", { hour12: false });
}

function pct(x) { return x === null || x === undefined ? "—" : `${Math.round(x * 100)}%`; }

function localDay(date, plusDays = 0) {
  // "2026-11-23" -> the start of that day in the browser's time zone, as ISO with offset
  const d = new Date(`${date}T00:00:00`);
  d.setDate(d.getDate() + plusDays);
  const off = -d.getTimezoneOffset();
  const sign = off >= 0 ? "+" : "-";
  const hh = String(Math.floor(Math.abs(off) / 60)).padStart(2, "0");
  const mm = String(Math.abs(off) % 60).padStart(2, "0");
  const y = d.getFullYear(), mo = String(d.getMonth() + 1).padStart(2, "0");
  const da = String(d.getDate()).padStart(2, "0");
  return `${y}-${mo}-${da}T00:00:00${sign}${hh}:${mm}`;
}

function banner(kind, message, ...buttons) {
  const b = $("#banner");
  b.className = kind; b.hidden = false; b.replaceChildren(el("div", { text: message }), ...buttons);
}

function clearBanner() { $("#banner").hidden = true; $("#banner").replaceChildren(); }

// ----------------------------------------------------------------------------- URL hash

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  for (const k of Object.keys(state.filters)) state.filters[k] = p.get(k) || state.filters[k];
  state.offset = Number(p.get("offset") || 0);
  return p.get("t");
}

function writeHash() {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(state.filters)) if (v && !(k === "status" && v === "waiting")) p.set(k, v);
  if (state.offset) p.set("offset", String(state.offset));
  if (state.ticketId) p.set("t", state.ticketId);
  history.replaceState(null, "", `#${p}`);
}

// ----------------------------------------------------------------------------- sign-in

function showSignIn(message) {
  state.csrf = null; state.user = null;
  $("#workspace").hidden = true; $("#signin").hidden = false;
  $("#sign-out").hidden = true; $("#who").textContent = "";
  $("#signin-error").textContent = message || "";
  $("#username").focus();
}

async function signedIn(session) {
  state.csrf = session.csrf_token; state.user = session.user;
  const speaks = (session.user.dialects || []).map((d) => VARIETY_LABELS[d] || d).join("、");
  $("#who").textContent = `${session.user.display_name}（${session.user.role === "admin" ? "管理员" : "复核员"}` +
    `${speaks ? ` · ${speaks}` : ""}）`;
  $("#sign-out").hidden = false; $("#signin").hidden = true; $("#workspace").hidden = false;
  if (!state.taxonomy) await loadTaxonomy();
  const open = readHash();
  syncFilterInputs();
  await loadQueue();
  if (open) await openTicket(open);
}

async function onSignIn(ev) {
  ev.preventDefault();
  $("#signin-error").textContent = "";
  try {
    const session = await api("POST", "/v1/session", {
      username: $("#username").value.trim(), password: $("#password").value,
    });
    $("#password").value = "";
    await signedIn(session);
  } catch (e) {
    $("#signin-error").textContent =
      e.status === 429 ? `尝试次数过多：${e.message}` : e.status === 401 ? "用户名或密码错误。" : e.message;
  }
}

async function signOut() {
  if (isDirty() && !confirm("有未保存的修改，确定退出吗？")) return;
  await api("DELETE", "/v1/session").catch(() => {});
  state.view = null; state.ticketId = null;
  showSignIn("已退出。");
}

// ----------------------------------------------------------------------------- taxonomy

async function loadTaxonomy() {
  state.taxonomy = await api("GET", "/v1/taxonomy");
  const groups = new Map();
  for (const c of state.taxonomy.categories) {
    if (!groups.has(c.group)) groups.set(c.group, []);
    groups.get(c.group).push(c);
  }
  const filter = $("#f-category"), edit = $("#category");
  for (const [group, cats] of groups) {
    const og1 = el("optgroup", { label: group }), og2 = el("optgroup", { label: group });
    for (const c of cats) {
      og1.append(el("option", { value: c.code, text: c.label }));
      og2.append(el("option", { value: c.code, text: `${c.label}（${c.department}）` }));
    }
    filter.append(og1); edit.append(og2);
  }
  for (const k of state.taxonomy.kinds) $("#kind").append(el("option", { value: k, text: k }));
}

// ----------------------------------------------------------------------------- queue

function syncFilterInputs() {
  const f = state.filters;
  $("#f-status").value = f.status; $("#f-category").value = f.category;
  $("#f-urgency").value = f.urgency; $("#f-source").value = f.source;
  $("#f-dialect").value = f.dialect;
  $("#f-from").value = f.from; $("#f-to").value = f.to;
}

function onFilter() {
  const f = state.filters;
  f.status = $("#f-status").value; f.category = $("#f-category").value;
  f.urgency = $("#f-urgency").value; f.source = $("#f-source").value;
  f.dialect = $("#f-dialect").value;
  f.from = $("#f-from").value; f.to = $("#f-to").value;
  state.offset = 0;
  writeHash();
  loadQueue();
}

async function loadQueue({ quiet = false } = {}) {
  const f = state.filters;
  const q = new URLSearchParams({ status: f.status, limit: String(PAGE), offset: String(state.offset) });
  if (f.category) q.set("category", f.category);
  if (f.urgency) q.set("urgency", f.urgency);
  if (f.source) q.set("source", f.source);
  if (f.dialect) q.set("dialect", f.dialect);
  if (f.from) q.set("created_from", localDay(f.from));
  if (f.to) q.set("created_to", localDay(f.to, 1));
  let data;
  try {
    data = await api("GET", `/v1/review/queue?${q}`);
  } catch (e) {
    if (!quiet) $("#counts").textContent = `队列加载失败：${e.message}`;
    return;
  }
  if (data.items.length === 0 && state.offset > 0 && data.total > 0) {
    // the page emptied under us (others approved tickets): step back, keep going
    state.offset = Math.max(0, Math.floor((data.total - 1) / PAGE) * PAGE);
    writeHash();
    return loadQueue({ quiet });
  }
  state.queue = data;
  renderQueue();
}

function renderQueue() {
  const data = state.queue, c = data.counts;
  $("#counts").replaceChildren(
    "待复核 ", el("b", { text: String(c.new + c.in_review) }),
    `（未处理 ${c.new}，复核中 ${c.in_review}）· 紧急 `, el("b", { class: c.urgent ? "error" : "", text: String(c.urgent) }),
    ` · 已批准 ${c.reviewed}`);
  const list = $("#queue-list");
  const scroll = list.scrollTop;
  list.replaceChildren(...data.items.map((t) => {
    const li = el("li", {
      tabindex: "0", "data-id": t.id, class: t.id === state.ticketId ? "selected" : "",
      onclick: () => openTicket(t.id),
      onkeydown: (e) => { if (e.key === "Enter") openTicket(t.id); },
    },
    el("span", { class: "row1" },
      t.urgency === "urgent" ? el("span", { class: "tag urgent", text: "紧急" }) : null,
      el("span", { class: `tag status-${t.status}`, text: STATUS[t.status] }),
      el("span", { class: "tag", text: t.category.label }),
      t.readable === false
        ? el("span", { class: "tag low dialect", text: `${VARIETY_LABELS[t.variety] || "方言"}·待听写` })
        : (t.variety && t.variety !== "mandarin"
          ? el("span", { class: "tag dialect", text: VARIETY_LABELS[t.variety] || t.variety }) : null),
      t.low_confidence_segments ? el("span", { class: "tag low", text: `⚠ ${t.low_confidence_segments} 段低置信度` }) : null),
    el("span", { class: "summary", text: t.summary }),
    el("span", { class: "meta", text: `${when(t.created_at)} · ${SOURCE[t.source] || t.source}` +
      (t.duration_s === null ? "" : ` · ${Math.round(t.duration_s)} 秒`) + ` · 置信度 ${pct(t.confidence)}` }));
    return li;
  }));
  list.scrollTop = scroll;
  const open = data.items.find((t) => t.id === state.ticketId);
  if (open && state.view && open.revision > state.view.revision && !state.busy) staleNotice(open);
  const from = data.total ? data.offset + 1 : 0;
  $("#page-info").textContent = `${from}–${data.offset + data.items.length} / ${data.total}`;
  $("#prev").disabled = data.offset === 0;
  $("#next").disabled = data.next_offset === null;
}

// someone else saved the open ticket: say so before the reviewer runs into a conflict
function staleNotice(item) {
  if (state.staleSeen === item.revision) return;
  state.staleSeen = item.revision;
  banner("notice", `${item.updated_by || "其他人"} 刚刚把这张工单更新为第 ${item.revision} 版（你看到的是第 ${state.view.revision} 版）。`,
    el("button", { type: "button", text: "载入最新版本", onclick: () => reloadLatest(isDirty() ? collectEdit() : null) }));
}

function page(delta) {
  state.offset = Math.max(0, state.offset + delta * PAGE);
  writeHash();
  loadQueue();
}

// ----------------------------------------------------------------------------- one ticket

async function openTicket(id, { keepBanner = false } = {}) {
  if (id !== state.ticketId && isDirty() && !confirm("当前工单有未保存的修改，确定放弃吗？")) return;
  let view;
  try {
    view = await api("GET", `/v1/tickets/${encodeURIComponent(id)}/review`);
  } catch (e) {
    if (e.status === 404) { state.ticketId = null; writeHash(); }
    $("#empty-hint").textContent = `无法打开工单：${e.message}`;
    return;
  }
  const sameAudio = state.view && state.view.ticket.id === id;
  state.ticketId = id; state.view = view; state.current = -1; state.stopAt = null;
  writeHash();
  for (const li of document.querySelectorAll("#queue-list li")) {
    li.classList.toggle("selected", li.dataset.id === id);
  }
  $("#empty-hint").hidden = true; $("#ticket-view").hidden = false;
  if (!keepBanner) clearBanner();
  renderTicket(view, { reloadAudio: !sameAudio });
  loadHistory();
}

// title and meta line: a typed message has a title and no recording
function renderHead(view) {
  const t = view.ticket;
  $("#ticket-title").textContent = `${t.id} · ${t.title ? `${t.title} · ` : ""}${t.kind} · ${t.category.label}`;
  const phone = t.submitter.phone ? ` · 回访电话 ${t.submitter.phone}` : "";
  $("#ticket-meta").textContent =
    `${STATUS[view.status]} · 第 ${view.revision} 版 · ${when(t.created_at)} · ${SOURCE[t.source] || t.source}` +
    (t.audio ? ` · ${clock(t.audio.duration_s)}` : "") + ` · 整体置信度 ${pct(view.confidence)}${phone}` +
    (view.reviewed_by ? ` · 批准人 ${view.reviewed_by}` : view.updated_by ? ` · 最后修改 ${view.updated_by}` : "");
}

function renderTicket(view, { reloadAudio = true } = {}) {
  const t = view.ticket;
  renderHead(view);
  const flags = t.review.flags.map((f) => FLAG_LABELS[f] ||
    (f.startsWith("dialect:") ? `方言：${VARIETY_LABELS[f.slice(8)] || f.slice(8)}，待人工听写` : f));
  $("#ticket-flags").replaceChildren(
    ...(t.urgency.level === "urgent" ? [el("span", { class: "tag urgent", text: `紧急：${t.urgency.reasons.join("；")}` }), " "] : []),
    ...flags.map((f) => el("span", { class: "tag", text: f })));
  const audio = $("#audio");
  $("#player").hidden = !view.audio_url;
  if (!view.audio_url) {
    if (audio.hasAttribute("src")) { audio.pause(); audio.removeAttribute("src"); audio.load(); }
  } else if (reloadAudio || !audio.hasAttribute("src")) { audio.src = view.audio_url; }

  const low = view.low_confidence_below;
  // dialect speech the model could not read: its text is not shown as a transcript; a
  // reviewer who speaks it writes what was said and what it means
  const tr = t.transcript;
  const variety = tr.variety || "mandarin";
  const dialect = tr.readable === false || variety !== "mandarin" ||
    tr.segments.some((s) => s.dialect_text);
  $("#dialect-box").hidden = !dialect;
  $("#variety").value = variety;
  $("#dialect-note").textContent = tr.readable === false
    ? `方言语音（${VARIETY_LABELS[variety] || variety}）：机器听写不可靠。请听录音，逐段写下方言原话和普通话意思；工单按普通话意思重新生成。`
    : `方言：${VARIETY_LABELS[variety] || variety}${tr.variety_confirmed_by ? `（${tr.variety_confirmed_by} 已确认）` : "（自动识别）"}`;
  $("#segments").replaceChildren(...t.transcript.segments.map((s, i) => {
    const isLow = s.confidence < low && s.text !== "";
    const speaker = SPEAKERS[s.speaker] || s.speaker || (t.source === "hotline" ? "" : "市民");
    const unreadable = s.readable === false;
    const area = el("textarea", { class: "seg-text", rows: "2", "aria-label": `第 ${i + 1} 段${dialect ? "普通话意思" : "文字"}`, "data-index": String(i) });
    area.value = unreadable ? "" : s.text;
    if (dialect) area.placeholder = "普通话意思";
    area.addEventListener("input", () => { markSegment(i); updateDirty(); });
    area.addEventListener("focus", () => setCurrent(i, false));
    let said = null;
    if (dialect) {
      said = el("textarea", { class: "seg-dialect", rows: "2", "aria-label": `第 ${i + 1} 段方言原话`, "data-index": String(i), placeholder: "方言原话（用方言字写下说了什么）" });
      said.value = s.dialect_text || "";
      said.addEventListener("input", () => { markSegment(i); updateDirty(); });
      said.addEventListener("focus", () => setCurrent(i, false));
    }
    const li = el("li", {
      class: `segment${isLow ? " low" : ""}`, "data-index": String(i),
      "data-start": String(s.start), "data-end": String(s.end),
      onclick: (e) => { if (e.target.tagName !== "TEXTAREA") playSegment(i); },
    },
    el("div", { class: "seg-head" },
      t.audio ? el("button", { type: "button", class: "seg-play", title: "播放这一段", text: `▶ ${clock(s.start)}–${clock(s.end)}` }) : null,
      speaker ? el("span", { class: "speaker", text: speaker }) : null,
      el("span", { class: `conf tag${isLow ? " low" : ""}`, text: isLow ? `⚠ 低置信度 ${pct(s.confidence)}` : `置信度 ${pct(s.confidence)}` }),
      s.flags.includes("corrected") ? el("span", { class: "tag", text: "已人工修改" }) : null,
      s.flags.includes("discarded") ? el("span", { class: "tag", text: "已标记为非语音" }) : null,
      unreadable ? el("span", { class: "tag low", text: `${VARIETY_LABELS[s.variety] || "方言"}·待听写` }) : null),
    unreadable && s.text ? el("p", { class: "machine-text", text: `机器听写（不可靠，仅供参考）：${s.text}` }) : null,
    said, area);
    return li;
  }));

  $("#kind").value = t.kind;
  $("#category").value = t.category.code;
  $("#urgency").value = t.urgency.level;
  $("#location-text").value = t.location.text || "";
  $("#location-district").value = t.location.district || "";
  $("#location-street").value = t.location.street || "";
  $("#summary").value = t.summary;
  $("#comment").value = "";
  updateSummaryCount();
  updateDirty();
  renderRepeats(view);
}

// ----------------------------------------------------------------------------- 重复件 / 一类事

function ticketLink(id, label) {
  return el("a", { href: `#t=${encodeURIComponent(id)}`, "data-ticket": id, text: label || id,
    onclick: (e) => { e.preventDefault(); openTicket(id); } });
}

function brief(item) {
  const words = item.title || item.summary || "";
  return `${when(item.at)}${words ? ` · ${words}` : ""}`;
}

function renderRepeats(view) {
  const r = view.repeats, t = view.ticket;
  $("#repeats").hidden = !r;
  if (!r) return;
  const dup = [];
  if (r.duplicate_of) {
    dup.push(el("p", { id: "dup-of" }, "本件是重复件，首件：", ticketLink(r.duplicate_of.ticket_id),
      ` ${brief(r.duplicate_of)}`,
      el("button", { type: "button", id: "unmark-self", text: "不是重复件",
        onclick: () => repeatAction("DELETE", `/v1/tickets/${encodeURIComponent(t.id)}/duplicate-of`,
          undefined, `已取消：${t.id} 不再是重复件。`) })));
  }
  if (r.repeats.length) {
    dup.push(el("h4", { text: `同一来电人的重复件（${r.repeats.length}）` }),
      el("ul", { id: "repeat-list" }, ...r.repeats.map((x) => el("li", { "data-id": x.ticket_id },
        ticketLink(x.ticket_id), ` ${brief(x)}`,
        el("button", { type: "button", class: "unmark", text: "取消重复",
          onclick: () => repeatAction("DELETE", `/v1/tickets/${encodeURIComponent(x.ticket_id)}/duplicate-of`,
            undefined, `已取消：${x.ticket_id} 不再是本件的重复件。`) })))));
  }
  if (!dup.length) dup.push(el("p", { class: "hint", text: "没有重复件。" }));
  $("#dup-panel").replaceChildren(...dup);
  $("#mark-dup").hidden = Boolean(r.duplicate_of);

  const c = r.cluster;
  $("#merge-cluster").hidden = !c;
  if (!c) {
    $("#cluster-panel").replaceChildren(el("p", { class: "hint",
      text: r.cluster_pinned ? "不属于任何一类事（已由人工移出）。" : "不属于任何一类事。" }));
    return;
  }
  const more = c.size > c.members.length ? `（只列出前 ${c.members.length} 张）` : "";
  $("#cluster-panel").replaceChildren(
    el("h4", { id: "cluster-head", text: `一类事 ${c.cluster_id}` }),
    el("p", { id: "cluster-desc" }, c.description),
    el("p", { class: "hint", text: `热度 ${c.heat.toFixed(1)} · ${c.size} 张工单 · ${c.callers} 位来电人` +
      (c.urgent ? ` · ${c.urgent} 张紧急` : "") + more }),
    el("ol", { id: "cluster-members" }, ...c.members.map((m) => el("li", {
      "data-id": m.ticket_id, class: m.ticket_id === t.id ? "this" : "" },
      m.ticket_id === t.id ? `${m.ticket_id}（本件）` : ticketLink(m.ticket_id), ` ${brief(m)}`,
      m.duplicate_of ? el("span", { class: "tag", text: "重复件" }) : null))),
    el("button", { type: "button", id: "leave-cluster", text: "把本件移出此类事",
      onclick: () => repeatAction("POST", `/v1/clusters/${encodeURIComponent(c.cluster_id)}/split`,
        { tickets: [t.id], new_cluster: false }, `已把 ${t.id} 移出一类事 ${c.cluster_id}。`) }));
}

async function repeatAction(method, path, body, done) {
  if (!state.view || state.busy) return;
  state.busy = true;
  try {
    await api(method, path, body);
    await refreshRepeats();
    banner("ok", done);
    loadQueue({ quiet: true });
  } catch (e) {
    banner("failure", `操作失败：${e.message}`);
  } finally {
    state.busy = false;
  }
}

// the links changed the ticket's document (a new revision number, same fields): keep any
// unsaved edits in the form, take the new revision as the one they start from
async function refreshRepeats() {
  const view = await api("GET", `/v1/tickets/${encodeURIComponent(state.view.ticket.id)}/review`);
  if (isDirty()) {
    state.view = view;
    renderHead(view); renderRepeats(view); updateDirty();
  } else {
    state.view = view;
    renderTicket(view, { reloadAudio: false });
  }
  await loadHistory();
}

function onMarkDuplicate(ev) {
  ev.preventDefault();
  const first = $("#dup-first").value.trim();
  if (!first) return;
  repeatAction("PUT", `/v1/tickets/${encodeURIComponent(state.view.ticket.id)}/duplicate-of`,
    { first }, `已标记为 ${first} 的重复件。`).then(() => { $("#dup-first").value = ""; });
}

function onMergeCluster(ev) {
  ev.preventDefault();
  const other = $("#merge-id").value.trim();
  const c = state.view && state.view.repeats && state.view.repeats.cluster;
  if (!other || !c) return;
  repeatAction("POST", `/v1/clusters/${encodeURIComponent(c.cluster_id)}/merge`,
    { clusters: [other] }, `已把一类事 ${other} 并入 ${c.cluster_id}。`).then(() => { $("#merge-id").value = ""; });
}

function markSegment(i) {
  const s = state.view.ticket.transcript.segments[i];
  const li = $(`#segments li[data-index="${i}"]`);
  const said = li.querySelector("textarea.seg-dialect");
  const meaning = li.querySelector("textarea.seg-text").value.trim();
  li.classList.toggle("edited", (s.readable === false ? meaning !== "" : meaning !== s.text) ||
    (said !== null && said.value.trim() !== (s.dialect_text || "")));
}

// what differs from the loaded revision, in the shape PATCH takes
function collectEdit() {
  const t = state.view.ticket;
  const segments = [];
  document.querySelectorAll("#segments textarea.seg-text").forEach((area) => {
    const i = Number(area.dataset.index);
    const s = t.transcript.segments[i];
    const edit = { index: i };
    const meaning = area.value.trim();
    // an unreadable segment's box starts empty: empty is "not written yet", not a change
    if (s.readable === false ? meaning !== "" : meaning !== s.text) edit.text = area.value;
    const said = area.parentElement.querySelector("textarea.seg-dialect");
    if (said && said.value.trim() !== (s.dialect_text || "")) edit.dialect_text = said.value;
    if ("text" in edit || "dialect_text" in edit) segments.push(edit);
  });
  const fields = {};
  const variety = $("#variety").value;
  if (!$("#dialect-box").hidden && (variety !== (t.transcript.variety || "mandarin") ||
      (segments.some((e) => "dialect_text" in e) && !t.transcript.variety_confirmed_by))) {
    fields.variety = variety;
  }
  if ($("#kind").value !== t.kind) fields.kind = $("#kind").value;
  if ($("#category").value !== t.category.code) fields.category = $("#category").value;
  if ($("#urgency").value !== t.urgency.level) fields.urgency = $("#urgency").value;
  const loc = {};
  for (const [key, sel] of [["text", "#location-text"], ["district", "#location-district"], ["street", "#location-street"]]) {
    if ($(sel).value.trim() !== (t.location[key] || "")) loc[key] = $(sel).value;
  }
  if (Object.keys(loc).length) fields.location = loc;
  if ($("#summary").value.trim() !== t.summary) fields.summary = $("#summary").value;
  const edit = { revision: state.view.revision, segments, fields };
  const comment = $("#comment").value.trim();
  if (comment) edit.comment = comment;
  return edit;
}

function isDirty() {
  if (!state.view) return false;
  const e = collectEdit();
  return e.segments.length > 0 || Object.keys(e.fields).length > 0;
}

function updateDirty() {
  $("#dirty").textContent = isDirty() ? "● 有未保存的修改" : "";
}

function updateSummaryCount() {
  $("#summary-count").textContent = `${$("#summary").value.length}/80`;
}

async function submit(action) {
  if (!state.view || state.busy) return;
  const edit = collectEdit();
  if (action === "save" && !isDirty()) { banner("ok", "没有需要保存的修改。"); return; }
  state.busy = true; $("#save").disabled = $("#approve").disabled = true;
  const id = state.view.ticket.id;
  try {
    const path = action === "approve" ? `/v1/tickets/${id}/approve` : `/v1/tickets/${id}`;
    const view = await api(action === "approve" ? "POST" : "PATCH", path, edit);
    state.view = view;
    renderTicket(view, { reloadAudio: false });
    banner("ok", action === "approve"
      ? `已批准：第 ${view.published_revision} 版已发布到投诉队列。`
      : `已保存为第 ${view.revision} 版。`);
    loadHistory();
    loadQueue({ quiet: true });
  } catch (e) {
    if (e.status === 409) conflict(e, edit);
    else if (e.status === 422) banner("failure", `无法保存：${e.message}`);
    else banner("failure", `保存失败：${e.message}`);
  } finally {
    state.busy = false; $("#save").disabled = $("#approve").disabled = false;
  }
}

function conflict(e, mine) {
  const d = e.details || {};
  banner("conflict",
    `保存冲突：${d.updated_by || "其他人"} 已于 ${when(d.updated_at)} 保存了这张工单（现为第 ${d.current_revision} 版），` +
    `你基于第 ${mine.revision} 版的修改没有保存，也没有覆盖对方的修改。`,
    el("button", { type: "button", text: "载入最新版本（放弃我的修改）", onclick: () => reloadLatest(null) }),
    el("button", { type: "button", text: "载入最新版本并重新填入我的修改", onclick: () => reloadLatest(mine) }));
}

async function reloadLatest(mine) {
  const view = await api("GET", `/v1/tickets/${state.view.ticket.id}/review`);
  state.view = view;
  renderTicket(view, { reloadAudio: false });
  if (mine) {
    for (const s of mine.segments) {
      const area = $(`#segments textarea.seg-text[data-index="${s.index}"]`);
      const said = $(`#segments textarea.seg-dialect[data-index="${s.index}"]`);
      if (area && "text" in s) area.value = s.text;
      if (said && "dialect_text" in s) said.value = s.dialect_text;
      if (area) markSegment(s.index);
    }
    const f = mine.fields;
    if (f.kind) $("#kind").value = f.kind;
    if (f.category) $("#category").value = f.category;
    if (f.urgency) $("#urgency").value = f.urgency;
    if (f.location) {
      if ("text" in f.location) $("#location-text").value = f.location.text;
      if ("district" in f.location) $("#location-district").value = f.location.district;
      if ("street" in f.location) $("#location-street").value = f.location.street;
    }
    if (f.summary !== undefined) $("#summary").value = f.summary;
    if (f.variety) $("#variety").value = f.variety;
    updateDirty();
    banner("ok", `已载入第 ${view.revision} 版并重新填入你的修改；请核对后保存。`);
  } else {
    clearBanner();
  }
  loadHistory();
}

// ----------------------------------------------------------------------------- history

async function loadHistory() {
  const id = state.ticketId;
  let entries;
  try {
    entries = await api("GET", `/v1/tickets/${id}/revisions`);
  } catch (e) {
    $("#history").replaceChildren(el("li", { text: `历史加载失败：${e.message}` }));
    return;
  }
  if (id !== state.ticketId) return;
  const links = (state.view && state.view.ticket.id === id && state.view.repeats) ? state.view.repeats.history : [];
  if (!entries.length && !links.length) {
    $("#history").replaceChildren(el("li", { class: "hint", text: "尚无人工修改（第 1 版为机器生成）。" }));
    return;
  }
  // revisions and repeat/cluster changes together, newest first
  const items = [...entries.map((r) => [r.created_at, revisionItem(r)]),
    ...links.map((h) => [h.at, repeatItem(h)])];
  items.sort((a, b) => new Date(b[0]) - new Date(a[0]));
  $("#history").replaceChildren(...items.map(([, li]) => li));
}

function repeatItem(h) {
  const d = h.detail || {};
  const n = (xs) => (xs || []).length;
  const what = {
    "duplicate.link": () => `${h.ticket_id} 是 ${d.first} 的重复件（第 ${d.repeat_count} 次）`,
    "duplicate.unlink": () => `${h.ticket_id} 不再是 ${d.first} 的重复件`,
    "cluster.form": () => `${h.cluster_id}：${n(d.added)} 张工单`,
    "cluster.grow": () => `${h.cluster_id}：新增 ${n(d.added)} 张`,
    "cluster.merge": () => (d.into ? `${h.cluster_id} 并入 ${d.into}` : `${n(d.added)} 张工单并入 ${h.cluster_id}`),
    "cluster.split": () => (d.added ? `${n(d.added)} 张工单组成 ${h.cluster_id}` : `${n(d.tickets)} 张工单移出 ${h.cluster_id}`),
    "cluster.leave": () => `${h.ticket_id} 移出 ${d.from}${d.into ? `，组成 ${d.into}` : ""}`,
  }[h.action];
  return el("li", { "data-action": h.action },
    el("strong", { text: REPEAT_ACTIONS[h.action] || h.action }),
    ` · ${h.author === "pipeline" ? "系统" : h.author} · ${when(h.at)}`,
    what ? el("div", { class: "change", text: what() }) : null);
}

function revisionItem(r) {
  return el("li", { "data-revision": String(r.revision) },
    el("strong", { text: `第 ${r.revision} 版 · ${r.action === "approve" ? "批准并发布" : "保存"}` }),
    ` · ${r.author} · ${when(r.created_at)}`,
    r.comment ? el("div", { class: "hint", text: `备注：${r.comment}` }) : null,
    ...r.changes.map((c) => el("div", { class: "change" },
      el("span", { class: "label", text: c.label }),
      ...changeRuns(c).map(([op, text]) => op === "equal" ? document.createTextNode(text)
        : el(op === "insert" ? "ins" : "del", { text })))));
}

// codes (category, urgency) read as their labels, whole; texts as the server's diff
function changeRuns(c) {
  const named = {
    category: (v) => (state.taxonomy.categories.find((x) => x.code === v) || { label: v }).label,
    urgency: (v) => URGENCY[v] || v,
  }[c.target];
  if (!named) return c.diff;
  return [["delete", named(c.before)], ["equal", " → "], ["insert", named(c.after)]];
}

// ----------------------------------------------------------------------------- player

function segmentsData() { return state.view ? state.view.ticket.transcript.segments : []; }

function setCurrent(i, focus) {
  const segs = document.querySelectorAll("#segments li");
  if (i < 0 || i >= segs.length) return;
  state.current = i;
  segs.forEach((li, j) => li.classList.toggle("current", j === i));
  if (focus) segs[i].querySelector("textarea").focus({ preventScroll: true });  // the dialect box first, where there is one
  segs[i].scrollIntoView({ block: "nearest" });
}

function playSegment(i) {
  const s = segmentsData()[i];
  if (!s) return;
  const audio = $("#audio");
  setCurrent(i, false);
  if (!state.view.audio_url) return;  // a typed message: nothing to play
  audio.currentTime = s.start;
  state.stopAt = s.end;
  audio.play().catch(() => {});
}

function togglePlay() {
  const audio = $("#audio");
  if (!state.view.audio_url) return;
  if (audio.paused) { state.stopAt = null; audio.play().catch(() => {}); } else audio.pause();
}

function nudge(seconds) {
  const audio = $("#audio");
  if (!state.view.audio_url) return;
  audio.currentTime = Math.max(0, Math.min((audio.duration || Infinity), audio.currentTime + seconds));
  state.stopAt = null;
}

function onTime() {
  const audio = $("#audio");
  const t = audio.currentTime;
  $("#clock").textContent = clock(t);
  if (state.stopAt !== null && t >= state.stopAt) { audio.pause(); state.stopAt = null; }
  document.querySelectorAll("#segments li").forEach((li) => {
    li.classList.toggle("playing", !audio.paused && t >= Number(li.dataset.start) && t < Number(li.dataset.end));
  });
}

function step(delta) {
  const n = segmentsData().length;
  if (!n) return;
  const i = Math.max(0, Math.min(n - 1, (state.current < 0 ? (delta > 0 ? -1 : n) : state.current) + delta));
  setCurrent(i, true);
  playSegment(i);
}

// ----------------------------------------------------------------------------- keys

function onKey(e) {
  if ($("#workspace").hidden || !state.view) return;
  // a key that ends or cancels a pinyin composition (Esc, Enter) belongs to the IME
  if (e.isComposing || e.keyCode === 229) return;
  const key = e.key;
  let handled = true;
  if (key === "Escape") togglePlay();
  else if (key === "F3") nudge(-3);
  else if (key === "F4") nudge(3);
  else if (e.altKey && key === "ArrowDown") step(1);
  else if (e.altKey && key === "ArrowUp") step(-1);
  else if ((e.ctrlKey || e.metaKey) && key.toLowerCase() === "s") submit("save");
  else if ((e.ctrlKey || e.metaKey) && key === "Enter") submit("approve");
  else handled = false;
  if (handled) { e.preventDefault(); e.stopPropagation(); }
}

// ----------------------------------------------------------------------------- fonts

function setScale(scale) {
  const s = Math.min(1.8, Math.max(0.8, Math.round(scale * 10) / 10));
  document.documentElement.style.fontSize = `${18 * s}px`;
  localStorage.setItem("minyin.fontScale", String(s));
}

function currentScale() { return Number(localStorage.getItem("minyin.fontScale") || 1); }

// ----------------------------------------------------------------------------- start

function nextTicket() {
  const items = (state.queue && state.queue.items) || [];
  const at = items.findIndex((t) => t.id === state.ticketId);
  const next = items.slice(at + 1).find((t) => t.status !== "reviewed") || items.find((t) => t.id !== state.ticketId && t.status !== "reviewed");
  if (next) openTicket(next.id);
  else banner("ok", "本页没有其他待复核工单。");
}

async function start() {
  setScale(currentScale());
  $("#font-up").addEventListener("click", () => setScale(currentScale() + 0.2));
  $("#font-down").addEventListener("click", () => setScale(currentScale() - 0.2));
  $("#signin-form").addEventListener("submit", onSignIn);
  $("#sign-out").addEventListener("click", signOut);
  $("#filters").addEventListener("change", onFilter);
  $("#prev").addEventListener("click", () => page(-1));
  $("#next").addEventListener("click", () => page(1));
  $("#save").addEventListener("click", () => submit("save"));
  $("#approve").addEventListener("click", () => submit("approve"));
  $("#next-ticket").addEventListener("click", nextTicket);
  $("#mark-dup").addEventListener("submit", onMarkDuplicate);
  $("#merge-cluster").addEventListener("submit", onMergeCluster);
  $("#fields").addEventListener("input", () => { updateSummaryCount(); updateDirty(); });
  $("#fields").addEventListener("change", updateDirty);
  $("#variety").addEventListener("change", updateDirty);
  $("#fields").addEventListener("submit", (e) => e.preventDefault());
  $("#rate").addEventListener("change", () => { $("#audio").playbackRate = Number($("#rate").value); });
  $("#audio").addEventListener("timeupdate", onTime);
  $("#audio").addEventListener("seeked", onTime);
  $("#audio").addEventListener("loadedmetadata", () => { $("#audio").playbackRate = Number($("#rate").value); });
  document.addEventListener("keydown", onKey, true);
  window.addEventListener("beforeunload", (e) => { if (isDirty()) { e.preventDefault(); e.returnValue = ""; } });
  setInterval(() => { if (!$("#workspace").hidden && !document.hidden) loadQueue({ quiet: true }); }, REFRESH_MS);
  try {
    await signedIn(await api("GET", "/v1/session"));
  } catch {
    showSignIn("");
  }
}

document.addEventListener("DOMContentLoaded", start);
