// loopchat web page: one WebSocket (subprotocol loopchat.v1) to the node
// that served the page, one binary message per protobuf Frame
// (docs/protocol.md, "WebSocket"; docs/web.md). Plain DOM, no framework;
// every text from the network goes in with textContent, never as HTML.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { ErrorCode, FrameSchema, KickReason } from "../gen/chat_pb.js";

const $ = (id) => document.getElementById(id);
const saved = window.localStorage;

// Timers from docs/protocol.md: a ping every 30 s keeps the session; a
// typing notice is sent at most every 3 s and shown for 5 s.
const PING_EVERY_MS = 25000;
const PONG_WITHIN_MS = 10000;
const TYPING_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 5000;
const PAGE = 50;

// Kick reasons after which the page must not reconnect by itself.
const STAY_OUT = new Set([
  KickReason.LOGGED_IN_ELSEWHERE,
  KickReason.DEVICE_LIMIT,
  KickReason.DISCONNECTED_BY_SERVER,
  KickReason.STORE_RESET,
]);

const KICK_TEXT = {
  [KickReason.LOGGED_IN_ELSEWHERE]: "This device logged in elsewhere.",
  [KickReason.DEVICE_LIMIT]: "Logged out: too many of your devices are online.",
  [KickReason.DISCONNECTED_BY_SERVER]: "The server ended this session",
  [KickReason.STORE_RESET]: "The server lost its data: log in again.",
};

class ProtoError extends Error {
  constructor(code, message) {
    super(message || ErrorCode[code] || "error");
    this.code = code;
  }
}

const st = {
  ws: null,
  seq: 0n,
  pending: new Map(), // seq string -> {resolve, reject}
  me: null, // {id: bigint, name}
  token: saved.getItem("loopchat.token") || "",
  deviceId: saved.getItem("loopchat.device") || "",
  stayOut: false, // no reconnecting: logged out or kicked for good
  retry: 0,
  retryTimer: 0,
  pingTimer: 0,
  pongTimer: 0,
  friends: new Map(), // user id string -> {id, name, online, lastSeenMs}
  groups: new Map(), // group id string -> {id, name}
  blocked: new Set(), // user id strings of the users this user blocks
  convs: new Map(), // key -> conversation (see conv())
  open: "", // key of the open conversation
  outbox: new Map(), // client_msg_id -> {key, text}: sent, no SendOK yet
  acks: [],
  ackTimer: 0,
  typingSentAt: 0,
};

if (!st.deviceId) {
  st.deviceId = "web-" + randomHex(8);
  saved.setItem("loopchat.device", st.deviceId);
}

function randomHex(bytes) {
  const b = new Uint8Array(bytes);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// ---- the connection ----

function wsURL() {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
}

function setStatus(state, text) {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text || state;
}

function notice(text) {
  const n = $("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

// connect opens a WebSocket and resolves once it is open.
function connect() {
  clearTimeout(st.retryTimer);
  if (st.ws) {
    st.ws.onclose = null;
    st.ws.close();
  }
  setStatus("connecting", st.retry ? `reconnecting (attempt ${st.retry + 1})` : "connecting");
  const ws = new WebSocket(wsURL(), "loopchat.v1");
  ws.binaryType = "arraybuffer";
  st.ws = ws;
  return new Promise((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("cannot reach the server"));
    ws.onmessage = (ev) => {
      let f;
      try {
        f = fromBinary(FrameSchema, new Uint8Array(ev.data));
      } catch (e) {
        console.error("undecodable frame", e);
        return;
      }
      onFrame(f);
    };
    ws.onclose = () => onClose(ws);
  });
}

function onClose(ws) {
  if (ws !== st.ws) return;
  st.ws = null;
  clearInterval(st.pingTimer);
  clearTimeout(st.pongTimer);
  for (const p of st.pending.values()) p.reject(new Error("connection lost"));
  st.pending.clear();
  if (st.stayOut || !st.token) {
    setStatus("offline");
    return;
  }
  // Back off from 250 ms to 5 s, with jitter, so a restarted node is not
  // met by every browser at once.
  const delay = Math.min(5000, 250 * 2 ** Math.min(st.retry, 5)) * (0.5 + Math.random() / 2);
  st.retry++;
  setStatus("connecting", `reconnecting (attempt ${st.retry + 1})`);
  st.retryTimer = setTimeout(resume, delay);
}

// resume logs in again with the saved token.
async function resume() {
  try {
    await connect();
    await login({ token: st.token });
  } catch (e) {
    if (e instanceof ProtoError) {
      if (e.code === ErrorCode.UNAUTHENTICATED || e.code === ErrorCode.PERMISSION_DENIED) {
        forgetToken();
        showLogin(e.message);
        st.ws && st.ws.close();
        return;
      }
      st.ws && st.ws.close(); // UNAVAILABLE and the like: try again later
    }
  }
}

function frame(kase, value) {
  st.seq++;
  const f = create(FrameSchema, { seq: st.seq, body: { case: kase, value } });
  return [st.seq, toBinary(FrameSchema, f)];
}

// request sends one request and resolves with its response body's value.
function request(kase, value = {}) {
  const ws = st.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error("not connected"));
  const [seq, bytes] = frame(kase, value);
  ws.send(bytes);
  return new Promise((resolve, reject) => st.pending.set(seq.toString(), { resolve, reject }));
}

// post sends a request that has no response when it succeeds (Ack).
function post(kase, value) {
  const ws = st.ws;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(frame(kase, value)[1]);
}

function onFrame(f) {
  if (f.seq !== 0n) {
    const p = st.pending.get(f.seq.toString());
    if (!p) {
      if (f.body.case === "error") console.warn("request failed", f.body.value);
      return;
    }
    st.pending.delete(f.seq.toString());
    if (f.body.case === "error") p.reject(new ProtoError(f.body.value.code, f.body.value.message));
    else p.resolve(f.body.value);
    return;
  }
  const v = f.body.value;
  switch (f.body.case) {
    case "message": return onMessage(v);
    case "readReceipt": return onReadReceipt(v);
    case "presence": return onPresence(v);
    case "typingNotice": return onTyping(v);
    case "kicked": return onKicked(v);
    case "error": return console.warn("protocol error", v.message);
  }
}

function onKicked(k) {
  if (!STAY_OUT.has(k.reason)) {
    st.retry = 0; // SERVER_SHUTTING_DOWN and the like: come back now, elsewhere
    return;
  }
  st.stayOut = true;
  let text = KICK_TEXT[k.reason];
  if (k.reason === KickReason.DISCONNECTED_BY_SERVER && k.message) text += ": " + k.message;
  if (k.reason === KickReason.STORE_RESET) forgetToken();
  notice(text);
  showLogin("");
}

// ---- logging in ----

async function login(creds) {
  const ok = await request("login", { ...creds, deviceId: st.deviceId });
  st.retry = 0;
  st.stayOut = false;
  const epoch = saved.getItem("loopchat.epoch");
  if (epoch && epoch !== ok.storeEpoch) {
    // The server's store was replaced: what the page remembers of it names
    // other messages now.
    resetData();
    saved.removeItem("loopchat.open");
  }
  saved.setItem("loopchat.epoch", ok.storeEpoch);
  if (st.me && st.me.id !== ok.userId) resetData();
  st.me = { id: ok.userId, name: ok.username, node: ok.nodeId };
  st.token = ok.token;
  saved.setItem("loopchat.token", ok.token);
  st.friends.clear();
  for (const f of ok.friends) setFriend(f);
  st.groups.clear();
  for (const g of ok.groups) st.groups.set(g.groupId.toString(), { id: g.groupId, name: g.name });
  showChat();
  setStatus("online", "online");
  notice("");
  startPings();
  // Messages sent while the connection was down go again, with the same
  // client_msg_id: the server stores each once.
  for (const [id, m] of st.outbox) sendNow(id, m);
  await refreshBlocked();
  await refreshConversations();
  const key = st.open || saved.getItem("loopchat.open");
  if (key) await openConversation(key, true);
}

function resetData() {
  st.convs.clear();
  st.blocked.clear();
  $("peer-actions").hidden = true;
  st.open = "";
  st.outbox.clear();
  $("messages").replaceChildren();
}

function forgetToken() {
  st.token = "";
  saved.removeItem("loopchat.token");
}

function startPings() {
  clearInterval(st.pingTimer);
  st.pingTimer = setInterval(() => {
    const ws = st.ws;
    // A connection that no longer answers is closed, which reconnects.
    st.pongTimer = setTimeout(() => ws && ws.close(), PONG_WITHIN_MS);
    request("ping").then(() => clearTimeout(st.pongTimer), () => {});
  }, PING_EVERY_MS);
}

async function onLoginForm(register) {
  const name = $("login-username").value.trim();
  const password = $("login-password").value;
  const err = $("login-error");
  err.textContent = "";
  if (!$("login-form").reportValidity()) return;
  $("login-submit").disabled = $("register-submit").disabled = true;
  try {
    st.stayOut = false;
    if (!st.ws || st.ws.readyState !== WebSocket.OPEN) await connect();
    if (register) await request("register", { username: name, password });
    await login({ username: name, password });
    $("login-password").value = "";
  } catch (e) {
    err.textContent = e.message;
    if (!(e instanceof ProtoError) && st.ws) st.ws.close();
  } finally {
    $("login-submit").disabled = $("register-submit").disabled = false;
  }
}

async function logout() {
  st.stayOut = true;
  try {
    await request("logout");
  } catch (e) {
    // The token is forgotten either way.
  }
  forgetToken();
  saved.removeItem("loopchat.open");
  st.me = null;
  resetData();
  if (st.ws) st.ws.close();
  showLogin("");
}

function showLogin(error) {
  $("login-view").hidden = false;
  $("chat-view").hidden = true;
  $("logout").hidden = true;
  $("me").hidden = true;
  $("login-error").textContent = error || "";
  setStatus("offline");
  $("login-username").focus();
}

function showChat() {
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("logout").hidden = false;
  $("me").hidden = false;
  $("me").textContent = st.me.name;
  $("me").dataset.node = st.me.node; // which node the session landed on
  $("me").title = st.me.node ? "connected to node " + st.me.node : "";
  renderFriends();
  renderGroups();
}

// ---- conversations ----

// conv returns the conversation with key ("u:<user id>" or "g:<group id>"),
// made on first use.
function conv(key, title) {
  let c = st.convs.get(key);
  if (!c) {
    c = {
      key, title: title || "", lastSeq: 0n, readSeq: 0n, unread: 0n, last: null,
      msgs: null, // loaded messages by seq order, null until opened
      ids: new Set(), // msg ids shown
      hasMore: false,
      peerRead: 0n, // the peer's read seq, from their receipts
      typing: new Map(), // user id string -> {name, until}
    };
    st.convs.set(key, c);
  }
  if (title && !c.title) c.title = title;
  return c;
}

function target(key) {
  const id = BigInt(key.slice(2));
  return key[0] === "g" ? { groupId: id } : { peerUserId: id };
}

function titleOf(key) {
  const id = key.slice(2);
  if (key[0] === "g") {
    const g = st.groups.get(id);
    return g ? g.name : "group " + id;
  }
  const f = st.friends.get(id);
  return f ? f.name : "";
}

async function refreshConversations() {
  const list = await request("listConversations", { limit: 100 });
  for (const s of list.conversations) {
    const key = s.groupId ? "g:" + s.groupId : "u:" + s.peerUserId;
    const c = conv(key, s.groupId ? s.groupName : s.peerUsername);
    c.lastSeq = s.lastSeq;
    c.readSeq = s.readSeq;
    c.unread = s.unread;
    if (s.lastMessage) c.last = s.lastMessage;
  }
  renderConversations();
}

async function openConversation(key, resuming) {
  const c = conv(key, titleOf(key));
  if (!c.title) c.title = titleOf(key) || key;
  const switching = st.open !== key;
  st.open = key;
  saved.setItem("loopchat.open", key);
  $("chat-title").textContent = c.title;
  $("composer").hidden = false;
  renderPeerActions();
  if (switching) {
    $("messages").replaceChildren();
    for (const m of c.msgs || []) $("messages").append(messageItem(c, m));
  }
  renderConversations();
  renderTyping();
  try {
    if (c.msgs === null) {
      // Pushes that arrive meanwhile go in too; the page merges by seq.
      c.msgs = [];
      const page = await request("history", { ...target(key), limit: PAGE });
      c.hasMore = page.hasMore;
      addMessages(c, page.messages.slice().reverse(), false);
    } else if (resuming && c.msgs.length) {
      await catchUp(c);
    }
  } catch (e) {
    if (!c.msgs.length) c.msgs = null;
    sidebarError(e);
    return;
  }
  if (!switching && !resuming) return;
  $("load-older").hidden = !c.hasMore;
  scrollToEnd();
  markRead(c);
  if (!resuming) $("composer-text").focus();
}

// catchUp fetches what came while the connection was down.
async function catchUp(c) {
  for (let i = 0; i < 5; i++) {
    const after = c.msgs[c.msgs.length - 1].seq;
    const page = await request("history", { ...target(c.key), afterSeq: after, limit: 200 });
    addMessages(c, page.messages, false);
    if (!page.hasMore) return;
  }
}

async function loadOlder() {
  const c = st.convs.get(st.open);
  if (!c || !c.msgs || !c.msgs.length) return;
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  $("load-older").disabled = true;
  try {
    const page = await request("history", { ...target(c.key), beforeSeq: c.msgs[0].seq, limit: PAGE });
    c.hasMore = page.hasMore;
    addMessages(c, page.messages.slice().reverse(), true);
    box.scrollTop = box.scrollHeight - fromBottom; // keep what was on screen in place
  } catch (e) {
    sidebarError(e);
  } finally {
    $("load-older").disabled = false;
    $("load-older").hidden = !c.hasMore;
  }
}

// addMessages merges messages (in seq order) into c, and into the page when
// c is open. older: they all go before what is loaded.
function addMessages(c, msgs, older) {
  const box = $("messages");
  const shown = st.open === c.key;
  const fresh = msgs.filter((m) => !c.ids.has(m.msgId.toString()));
  for (const m of fresh) c.ids.add(m.msgId.toString());
  if (older) {
    c.msgs.unshift(...fresh);
    if (shown) box.prepend(...fresh.map((m) => messageItem(c, m)));
    return;
  }
  for (const m of fresh) {
    // Pushes and pages can interleave: keep seq order.
    let i = c.msgs.length;
    while (i > 0 && m.seq && c.msgs[i - 1].seq > m.seq) i--;
    c.msgs.splice(i, 0, m);
    if (shown) place(box, messageItem(c, m), m.seq);
  }
}

// place puts li after the last shown message with a lower seq; messages
// still being sent (no msg id yet) stay last.
function place(box, li, seq) {
  let next = null;
  for (let el = box.lastElementChild; el; el = el.previousElementSibling) {
    if (el.dataset.msgId && (!seq || BigInt(el.dataset.seq) <= seq)) break;
    next = el;
  }
  box.insertBefore(li, next);
}

function messageItem(c, m) {
  const li = document.createElement("li");
  const mine = st.me && m.fromUserId === st.me.id;
  li.dataset.msgId = m.msgId.toString();
  li.dataset.seq = m.seq.toString();
  li.dataset.from = m.fromUsername;
  li.dataset.mine = String(mine);
  li.dataset.state = "sent";
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = m.fromUsername;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = m.text;
  if (c.key[0] === "g" && st.blocked.has(m.fromUserId.toString())) {
    // Blocking does not reach into groups (the server still delivers):
    // the page hides the text, and says why.
    li.dataset.blocked = "true";
    text.textContent = "(hidden: you blocked " + m.fromUsername + ")";
  }
  const at = document.createElement("time");
  const when = new Date(Number(m.sentAtMs));
  at.dateTime = when.toISOString();
  at.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  li.append(from, text, at);
  if (mine) {
    const r = document.createElement("span");
    r.className = "receipt";
    li.append(r);
    setReceipt(li, c.key[0] === "u" && m.seq && m.seq <= c.peerRead);
  }
  return li;
}

function setReceipt(li, read) {
  li.dataset.read = String(!!read);
  const r = li.querySelector(".receipt");
  if (r) {
    r.textContent = read ? "✓✓ read" : "✓";
    r.title = read ? "read" : "delivered to the server";
  }
}

function scrollToEnd() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

function markRead(c) {
  if (!c.lastSeq || c.readSeq >= c.lastSeq || document.visibilityState === "hidden") return;
  const upTo = c.lastSeq;
  request("markRead", { ...target(c.key), upToSeq: upTo }).then(() => {
    if (upTo > c.readSeq) c.readSeq = upTo;
    c.unread = c.lastSeq > c.readSeq ? c.lastSeq - c.readSeq : 0n;
    renderConversations();
  }, () => {});
}

// ---- pushes ----

function onMessage(m) {
  ack(m.msgId);
  if (!m.groupId && !m.toUserId) {
    notice(`${m.fromUsername || "server"}: ${m.text}`); // a broadcast: in no conversation
    return;
  }
  const mine = st.me && m.fromUserId === st.me.id;
  const key = m.groupId ? "g:" + m.groupId : "u:" + (mine ? m.toUserId : m.fromUserId);
  const c = conv(key, m.groupId ? titleOf(key) : mine ? titleOf(key) : m.fromUsername);
  c.typing.delete(m.fromUserId.toString());
  if (c.ids.has(m.msgId.toString())) return; // a replay of one already shown
  if (m.seq > c.lastSeq) {
    c.lastSeq = m.seq;
    c.last = m;
    if (!mine && m.seq > c.readSeq) c.unread++;
  }
  if (c.msgs !== null) addMessages(c, [m], false);
  if (st.open === key) {
    scrollToEnd();
    markRead(c);
    renderTyping();
  }
  renderConversations();
}

// ack acknowledges a shown message, in batches (at most 1024 ids each).
// An ack lost with the connection only means the message comes again,
// and is dropped by its msg id.
function ack(id) {
  st.acks.push(id);
  if (!st.ackTimer) st.ackTimer = setTimeout(flushAcks, 50);
}

function flushAcks() {
  st.ackTimer = 0;
  while (st.acks.length) post("ack", { msgIds: st.acks.splice(0, 1024) });
}

function onReadReceipt(r) {
  const key = r.groupId ? "g:" + r.groupId : "u:" + r.peerUserId;
  const c = conv(key, titleOf(key));
  if (st.me && r.readerUserId === st.me.id) {
    // Read on another of this user's devices.
    if (r.upToSeq > c.readSeq) c.readSeq = r.upToSeq;
    c.unread = c.lastSeq > c.readSeq ? c.lastSeq - c.readSeq : 0n;
    renderConversations();
    return;
  }
  if (r.upToSeq <= c.peerRead) return;
  c.peerRead = r.upToSeq;
  if (st.open !== key) return;
  for (const li of $("messages").querySelectorAll('li[data-mine="true"]')) {
    const seq = BigInt(li.dataset.seq || "0");
    if (seq && seq <= c.peerRead) setReceipt(li, true);
  }
}

function setFriend(f) {
  st.friends.set(f.userId.toString(), { id: f.userId, name: f.username, online: f.online, lastSeenMs: f.lastSeenMs });
}

function onPresence(p) {
  setFriend(p);
  renderFriends();
}

function onTyping(t) {
  const key = t.groupId ? "g:" + t.groupId : "u:" + t.userId;
  const c = conv(key, t.groupId ? titleOf(key) : t.username);
  c.typing.set(t.userId.toString(), { name: t.username, until: Date.now() + TYPING_SHOWN_MS });
  renderTyping();
  setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
}

function renderTyping() {
  const c = st.convs.get(st.open);
  const names = [];
  if (c) {
    for (const [id, t] of c.typing) {
      if (t.until > Date.now()) names.push(t.name);
      else c.typing.delete(id);
    }
  }
  $("typing").textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
}

// ---- sending ----

function onComposer(ev) {
  ev.preventDefault();
  const input = $("composer-text");
  const text = input.value;
  if (!text.trim() || !st.open) return;
  input.value = "";
  const id = "web-" + randomHex(12);
  const m = { key: st.open, text, li: pendingItem(text) };
  st.outbox.set(id, m);
  sendNow(id, m);
}

function pendingItem(text) {
  const li = document.createElement("li");
  li.dataset.mine = "true";
  li.dataset.state = "pending";
  li.dataset.from = st.me.name;
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = st.me.name;
  const t = document.createElement("span");
  t.className = "text";
  t.textContent = text;
  const r = document.createElement("span");
  r.className = "receipt";
  r.textContent = "sending…";
  li.append(from, t, r);
  $("messages").append(li);
  scrollToEnd();
  return li;
}

function sendNow(id, m) {
  const to = m.key[0] === "g" ? { case: "groupId", value: BigInt(m.key.slice(2)) } : { case: "userId", value: BigInt(m.key.slice(2)) };
  request("send", { to, text: m.text, clientMsgId: id }).then((ok) => {
    st.outbox.delete(id);
    m.li.remove();
    const c = conv(m.key, titleOf(m.key));
    const sent = { msgId: ok.msgId, fromUserId: st.me.id, fromUsername: st.me.name, text: m.text, sentAtMs: ok.sentAtMs, seq: ok.seq };
    if (ok.seq > c.lastSeq) {
      c.lastSeq = ok.seq;
      c.last = sent;
    }
    if (ok.seq > c.readSeq) c.readSeq = ok.seq; // sending marks read
    c.unread = c.lastSeq > c.readSeq ? c.lastSeq - c.readSeq : 0n;
    if (c.msgs !== null) addMessages(c, [sent], false);
    if (st.open === m.key) scrollToEnd();
    renderConversations();
  }, (e) => {
    if (!(e instanceof ProtoError)) return; // connection lost: sent again after the next login
    st.outbox.delete(id);
    m.li.dataset.state = "failed";
    m.li.querySelector(".receipt").textContent = "not sent: " + e.message;
  });
}

function onComposerInput() {
  if (!st.open || Date.now() - st.typingSentAt < TYPING_EVERY_MS) return;
  st.typingSentAt = Date.now();
  request("typing", target(st.open)).catch(() => {});
}

// ---- friends and groups ----

async function addFriend(ev) {
  ev.preventDefault();
  const name = $("add-friend-name").value.trim();
  try {
    await request("addFriend", { username: name });
    $("add-friend-name").value = "";
    await refreshFriends();
  } catch (e) {
    sidebarError(e);
  }
}

// The open 1:1 conversation's peer: {id (string), name}, or null.
function openPeer() {
  if (!st.open || st.open[0] !== "u") return null;
  const id = st.open.slice(2);
  const c = st.convs.get(st.open);
  return { id, name: (c && c.title) || titleOf(st.open) };
}

// renderPeerActions shows Unfriend (for a friend) and Block or Unblock
// above a 1:1 conversation.
function renderPeerActions() {
  const peer = openPeer();
  $("peer-actions").hidden = !peer || (st.me && peer.id === st.me.id.toString());
  if (!peer) return;
  $("unfriend").hidden = !st.friends.has(peer.id);
  const blocked = st.blocked.has(peer.id);
  $("block").textContent = blocked ? "Unblock" : "Block";
  $("block").dataset.blocked = String(blocked);
}

async function unfriend() {
  const peer = openPeer();
  if (!peer) return;
  try {
    await request("removeFriend", { username: peer.name });
    await refreshFriends();
  } catch (e) {
    sidebarError(e);
  }
}

async function toggleBlock() {
  const peer = openPeer();
  if (!peer) return;
  const blocked = st.blocked.has(peer.id);
  if (!blocked && !confirmBlock(peer.name)) return;
  try {
    await request(blocked ? "unblock" : "block", { username: peer.name });
    await refreshBlocked();
    await refreshFriends(); // a block ends the friendship
  } catch (e) {
    sidebarError(e);
  }
}

// confirmBlock asks before blocking.
function confirmBlock(name) {
  return window.confirm(`Block ${name}? Neither of you can message or befriend the other until you unblock.`);
}

async function refreshBlocked() {
  const list = await request("listBlocked");
  st.blocked = new Set(list.users.map((u) => u.userId.toString()));
  renderPeerActions();
}

async function refreshFriends() {
  const list = await request("listFriends");
  st.friends.clear();
  for (const f of list.friends) setFriend(f);
  renderFriends();
  renderPeerActions();
}

async function refreshGroups() {
  const list = await request("listGroups");
  st.groups.clear();
  for (const g of list.groups) st.groups.set(g.groupId.toString(), { id: g.groupId, name: g.name });
  renderGroups();
}

async function createGroup(ev) {
  ev.preventDefault();
  try {
    const g = await request("createGroup", { name: $("create-group-name").value.trim() });
    $("create-group-name").value = "";
    await refreshGroups();
    await openConversation("g:" + g.groupId);
  } catch (e) {
    sidebarError(e);
  }
}

async function joinGroup(ev) {
  ev.preventDefault();
  const id = $("join-group-id").value.trim();
  try {
    await request("joinGroup", { groupId: BigInt(id) });
    $("join-group-id").value = "";
    await refreshGroups();
    await openConversation("g:" + id);
  } catch (e) {
    sidebarError(e);
  }
}

function sidebarError(e) {
  $("sidebar-error").textContent = e ? e.message : "";
  if (e) setTimeout(() => sidebarError(null), 6000);
}

// ---- rendering the lists ----

function listButton(li, key, parts) {
  const b = document.createElement("button");
  b.type = "button";
  b.append(...parts);
  b.addEventListener("click", () => openConversation(key));
  li.dataset.conv = key;
  if (st.open === key) li.setAttribute("aria-current", "true");
  li.append(b);
  return li;
}

function span(cls, text) {
  const s = document.createElement("span");
  s.className = cls;
  s.textContent = text;
  return s;
}

function renderConversations() {
  const items = [];
  // Most recent first, as ListConversations orders them.
  const at = (c) => (c.last ? c.last.sentAtMs : 0n);
  const convs = [...st.convs.values()].sort((a, b) => (at(a) === at(b) ? 0 : at(a) > at(b) ? -1 : 1));
  for (const c of convs) {
    if (!c.lastSeq && !c.last) continue;
    const li = document.createElement("li");
    li.dataset.unread = c.unread.toString();
    const badge = span("unread", c.unread.toString());
    badge.dataset.unread = c.unread.toString();
    badge.setAttribute("aria-label", `${c.unread} unread`);
    const preview = c.last ? `${c.last.fromUsername}: ${c.last.text}` : "";
    items.push(listButton(li, c.key, [span("title", c.title || titleOf(c.key)), span("preview", preview), badge]));
  }
  $("conversations").replaceChildren(...items);
}

function lastSeen(ms) {
  if (!ms) return "";
  const d = new Date(Number(ms));
  return "last seen " + d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

function renderFriends() {
  const items = [];
  for (const f of st.friends.values()) {
    const li = document.createElement("li");
    li.dataset.userId = f.id.toString();
    li.dataset.username = f.name;
    li.dataset.online = String(f.online);
    const dot = span("presence", "");
    dot.setAttribute("aria-label", f.online ? "online" : "offline");
    items.push(listButton(li, "u:" + f.id, [dot, span("title", f.name), span("last-seen", f.online ? "" : lastSeen(f.lastSeenMs))]));
  }
  $("friends").replaceChildren(...items);
}

function renderGroups() {
  const items = [];
  for (const g of st.groups.values()) {
    const li = document.createElement("li");
    li.dataset.groupId = g.id.toString();
    items.push(listButton(li, "g:" + g.id, [span("title", g.name), span("last-seen", "#" + g.id)]));
  }
  $("groups").replaceChildren(...items);
}

// ---- start ----

function start() {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    onLoginForm(false);
  });
  $("register-submit").addEventListener("click", () => onLoginForm(true));
  $("logout").addEventListener("click", logout);
  $("composer").addEventListener("submit", onComposer);
  $("composer-text").addEventListener("input", onComposerInput);
  $("load-older").addEventListener("click", loadOlder);
  $("messages").addEventListener("scroll", () => {
    const c = st.convs.get(st.open);
    if ($("messages").scrollTop < 20 && c && c.hasMore && !$("load-older").disabled) loadOlder();
  });
  $("add-friend-form").addEventListener("submit", addFriend);
  $("unfriend").addEventListener("click", unfriend);
  $("block").addEventListener("click", toggleBlock);
  $("create-group-form").addEventListener("submit", createGroup);
  $("join-group-form").addEventListener("submit", joinGroup);
  document.addEventListener("visibilitychange", () => {
    const c = st.convs.get(st.open);
    if (c) markRead(c);
  });
  if (st.token) {
    $("login-view").hidden = true;
    resume();
  } else {
    showLogin("");
  }
}

start();
