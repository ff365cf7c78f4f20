// The bridge console: an agent's and supervisor's page on the bridge's WebSocket (/ws, the
// protocol of docs/ws-protocol.md). No framework and no build step: the bridge serves this file
// as it is. Every string that comes from the network is put in the page as text (never as
// HTML): callers' numbers and names come from outside.
//
// What the buttons allow mirrors docs/ROLES.md (bridge.directory.roles) so that a user sees
// *why* a control is not offered; the server checks every frame again and its refusal is shown.

const TOKEN_KEY = "bridge.console.token"; // a pasted API token (the "use an API token" login)
const DEVICE = "web console"; // what other sessions read as "answered by ... on web console"
const PONG = '{"v":1,"type":"pong"}'; // the exact text the gateway handles without parsing
const REQUEST_TIMEOUT_MS = 20000; // a control waits for the carrier (retries included: 15 s)
const ENDINGS_KEPT = 6;

// -- ROLES.md, as far as the buttons are concerned ------------------------------------------
const SEE_LIVE_CALLS = new Set(["admin", "supervisor", "agent", "rep", "reporter", "end_client"]);
const SET_OWN_AVAILABILITY = new Set(["admin", "supervisor", "agent", "rep"]);
const MONITOR_ROLES = new Set(["admin", "supervisor", "agent"]); // each only with barge_whisper
const RECORD_ANY_CALL = new Set(["admin", "supervisor"]);
const RECORD_OWN_CALLS = new Set(["agent", "rep"]); // only with recording_control
const READ_ONLY_ROLES = new Set(["reporter", "end_client"]); // voicemail: no heard, no delete
const SEE_AUDIT = new Set(["admin"]); // change_directory with scope all: the audit trail

const VIA = { apps: "in the app", ip_phone: "on desk phone", phone_number: "on their phone" };
const ENDED = {
  caller_hangup: "Caller hung up",
  timeout: "Nobody answered in time",
  rejected: "You declined the call",
  layer_moved_on: "Moved on to the next layer",
  callee_hangup: "The other side hung up",
  media_failed: "The call's audio could not be set up",
};
// A finished call's outcome (GET /api/v1/calls?state=ended), in words.
const OUTCOME = {
  answered: "Answered",
  voicemail: "Went to voicemail",
  no_answer_fallback: "Nobody answered",
  caller_cancelled: "The caller hung up before an answer",
  hangup: "Nobody answered: the bridge hung up",
  forwarded: "Forwarded to a number",
  closed: "The line was closed",
  no_route: "Not a number of this bridge",
};
// Why a call that rang for this user was not theirs, from their own leg: how it failed
// (`failure`) first, else why its ringing stopped (`reason`). "answered by <name>" is made
// from the call's `answered_by` (missedWhy).
const MISSED_FAILURE = {
  busy: "you were busy",
  rejected: "you declined it",
  unreachable: "your phone could not be reached",
  media_failed: "your app's audio could not connect",
};
const MISSED_REASON = {
  caller_hangup: "the caller hung up",
  timeout: "nobody answered in time",
  layer_timeout: "nobody answered in time",
  layer_moved_on: "it moved on to the next layer",
  rejected: "you declined it",
  media_failed: "your app's audio could not connect",
};
const MIC_REFUSED =
  "The browser refused the microphone: allow it for this site (the icon in the address bar), then try again.";
const MONITOR_LABELS = { listen: "Listen", whisper: "Whisper", barge: "Barge" };
const MONITOR_DOING = { listen: "listening", whisper: "whispering", barge: "barging" };

const state = {
  token: null, // the bearer token: an access token of a password login, or a pasted one
  auth: null, // "password" (a login session: refreshed through its cookie) or "token"
  refreshTimer: null,
  renewedAt: 0, // when a closed connection last got a renewed token (no loop on refusals)
  passwordMinLength: null, // from the login answer
  me: null, // GET /api/v1/me, then the user of auth.ok
  ws: null,
  nextId: 1,
  pending: new Map(), // frame id -> {resolve, timer}
  retry: 0,
  retryTimer: null,
  presence: null,
  offers: new Map(), // call id -> call.offer frame (+ answering flag)
  current: null, // the call this user answered: {call_id, caller, line, state}
  wrapUntil: null, // Date
  endings: [],
  calls: new Map(), // the board: call id -> BoardCall
  agents: new Map(), // user id -> BoardAgent
  names: new Map(), // user id -> name
  lines: new Map(), // number -> line name
  monitoring: new Map(), // call id -> our monitoring session (from acks)
  recording: new Map(), // call id -> the recording as we last heard of it (from acks)
  busy: new Set(), // call ids with a control request in flight
  media: new Map(), // "call:<id>" / "monitor:<id>" -> this page's audio of it (WebRTC)
  voicemails: [], // GET /api/v1/voicemails
  voicemailTimer: null,
  players: new Map(), // voicemail id -> its player (kept across refreshes: playing goes on)
  recent: [], // GET /api/v1/calls?state=ended: finished calls, newest first
  recentRaw: null, // the last answer's text (nothing re-rendered when it is the same)
  recentVersion: 0,
  recentSig: null,
  recentTimer: null,
  recentSoon: [], // reloads after a call ended (its record is stored just after)
  recentAsked: 0, // the newest request (an older answer arriving late is dropped)
  audit: [], // GET /api/v1/audit records (admins)
  auditAsked: 0,
  auditVersion: 0,
  auditSig: null,
};

const VOICEMAIL_REFRESH_MS = 30000;
const RECENT_REFRESH_MS = 30000;
const RECENT_LIMIT = 20;
const RECENT_AFTER_END_MS = [1000, 5000];
const AUDIT_LIMIT = 50;
const MESSAGE_ENDED = {
  pound: "ended with #",
  silence: "ended by silence",
  hangup: "caller hung up",
  max_length: "cut at the longest length",
  interrupted: "interrupted",
};

const $ = (id) => document.getElementById(id);

// A small element builder; children are nodes or text.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// -- words -------------------------------------------------------------------------------------
function userName(id) {
  if (!id) return "";
  if (state.me && id === state.me.id) return "you";
  return state.names.get(id) || id;
}

function lineLabel(number) {
  if (!number) return "unknown line";
  const name = state.lines.get(number);
  return name ? `${name} (${number})` : number;
}

function answeredBy(by) {
  if (!by) return "Answered elsewhere";
  const where = by.device ? `on ${by.device}` : VIA[by.via] || "";
  if (!by.user_id) return by.via === "phone_number" ? "Answered on a forwarding number" : "Answered elsewhere";
  const who = state.me && by.user_id === state.me.id ? "you" : by.name || userName(by.user_id);
  return `Answered by ${who} ${where}`.trim();
}

function whyEnded(frame) {
  if (frame.reason === "answered_elsewhere") return answeredBy(frame.answered_by);
  return ENDED[frame.reason] || `Ended (${frame.reason})`;
}

function clock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function since(iso) {
  return clock((Date.now() - Date.parse(iso)) / 1000);
}

// -- log in / out ------------------------------------------------------------------------------
// Two ways in. People: email and password (POST /api/v1/auth/login) give an access token valid
// for minutes and a refresh session in an HttpOnly cookie, which /api/v1/auth/refresh exchanges
// for a fresh token before the old one expires; a reload resumes the session through the cookie.
// Operators and scripts: a pasted API token, kept in this tab (sessionStorage).

function setLoginError(text) {
  $("login-error").textContent = text;
}

function showLoginForm(mode) {
  const password = mode !== "token";
  $("password-form").hidden = !password;
  $("login-form").hidden = password;
  (password ? $("email") : $("token")).focus();
}

function minutes(seconds) {
  const s = Math.max(1, Math.ceil(seconds));
  if (s < 60) return `${s} second${s === 1 ? "" : "s"}`;
  const m = Math.ceil(s / 60);
  return `${m} minute${m === 1 ? "" : "s"}`;
}

// What a refused login (or password change) means, in words.
async function refusal(response, wrongText) {
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) return wrongText;
  if (response.status === 429) {
    const wait = Number(response.headers.get("Retry-After")) || body.retry_after || 60;
    return `Too many failed attempts: locked out. Try again in ${minutes(wait)}.`;
  }
  if (response.status === 403 && body.detail === "account suspended") return "This account is suspended: ask an admin.";
  if (response.status === 422) {
    const first = Array.isArray(body.detail) ? body.detail[0] : null;
    const text = first && first.msg ? first.msg : "check what you typed";
    return `${text.charAt(0).toUpperCase()}${text.slice(1)}.`;
  }
  if (response.status === 502 || response.status === 503 || response.status === 504) {
    return `The bridge cannot be reached (${response.status}). Try again in a moment.`;
  }
  return typeof body.detail === "string" ? `Refused: ${body.detail}` : `The bridge answered ${response.status}. Try again.`;
}

async function passwordLogin(email, password) {
  setLoginError("");
  let response;
  try {
    response = await fetch("/api/v1/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ email, password }),
      credentials: "same-origin",
    });
  } catch {
    setLoginError("The bridge cannot be reached: check your connection and try again.");
    return false;
  }
  if (!response.ok) {
    setLoginError(await refusal(response, "Wrong email or password."));
    $("password").value = "";
    $("password").focus();
    return false;
  }
  const body = await response.json();
  $("password").value = "";
  return startSession(body);
}

// A login session: its access token now, a refresh before it expires.
async function startSession(body) {
  state.passwordMinLength = body.password_min_length || state.passwordMinLength;
  scheduleRefresh(body.expires_in);
  const ok = await login(body.access_token, "password");
  if (!ok) clearTimeout(state.refreshTimer);
  return ok;
}

function scheduleRefresh(expiresIn) {
  clearTimeout(state.refreshTimer);
  // A minute ahead, or a quarter of a short lifetime.
  const lead = Math.min(60, expiresIn / 4);
  state.refreshTimer = setTimeout(() => refreshAccess(), Math.max(1, expiresIn - lead) * 1000);
}

// Exchange the refresh cookie for a fresh access token; the WebSocket gets it in a new `auth`
// frame (docs/ws-protocol.md), so the session goes on. True when a token was had.
async function refreshAccess() {
  clearTimeout(state.refreshTimer);
  let response;
  try {
    response = await fetch("/api/v1/auth/refresh", { method: "POST", credentials: "same-origin" });
  } catch {
    showBanner("The bridge cannot be reached: your session is kept and retried in 10 s.");
    state.refreshTimer = setTimeout(() => refreshAccess(), 10000);
    return false;
  }
  if (state.auth !== "password") return false; // logged out meanwhile
  if (response.status >= 500) {
    showBanner(`The bridge answered ${response.status}: retrying in 10 s.`);
    state.refreshTimer = setTimeout(() => refreshAccess(), 10000);
    return false;
  }
  if (!response.ok) {
    logout("Your session ended: log in again.", { remote: false });
    return false;
  }
  const body = await response.json();
  state.token = body.access_token;
  scheduleRefresh(body.expires_in);
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    const reply = await request("auth", { token: state.token, device: DEVICE });
    if (reply.type === "error") showBanner(`The bridge refused the renewed token: ${reply.message}`);
  }
  return true;
}

// At start, without a pasted token: a login session this browser still has (its cookie).
async function resumeSession() {
  let response;
  try {
    response = await fetch("/api/v1/auth/refresh", { method: "POST", credentials: "same-origin" });
  } catch {
    setLoginError("The bridge cannot be reached: check your connection, then reload the page.");
    return;
  }
  if (response.ok) await startSession(await response.json());
}

async function login(token, mode = "token") {
  setLoginError("");
  let response;
  try {
    response = await fetch("/api/v1/me", { headers: { Authorization: `Bearer ${token}` } });
  } catch (error) {
    setLoginError(`The bridge cannot be reached: ${error.message}`);
    return false;
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    setLoginError(`${mode === "token" ? "Token refused" : "Login refused"}: ${body.detail || response.status}`);
    if (mode === "token") sessionStorage.removeItem(TOKEN_KEY);
    return false;
  }
  state.token = token;
  state.auth = mode;
  state.me = await response.json();
  state.names.set(state.me.id, state.me.name);
  if (mode === "token") sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("app").hidden = false;
  $("whoami").hidden = false;
  $("me-name").textContent = state.me.name;
  $("me-role").textContent = state.me.role;
  $("new-password-help").textContent = state.passwordMinLength
    ? `At least ${state.passwordMinLength} characters; a long phrase is best.`
    : "A long phrase is best; the bridge says when one is too short.";
  loadLines(token);
  connect();
  loadVoicemails();
  loadRecent();
  if (SEE_AUDIT.has(state.me.role)) loadAudit(); // others never ask for it
  return true;
}

async function loadLines(token) {
  // Line names are a nicety: a role that may not read them just sees numbers.
  try {
    const response = await fetch("/api/v1/lines", { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) return;
    for (const line of await response.json()) state.lines.set(line.number, line.name);
    render();
  } catch {
    // numbers only
  }
}

// Back to the login form. `remote`: also end the login session at the bridge (the log-out
// button); not when the bridge has already ended it.
async function logout(message = "", { remote = true } = {}) {
  const mode = state.auth || "password";
  const token = state.token;
  const endSession = remote && state.auth === "password";
  state.auth = null; // no renewal from here on
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(state.retryTimer);
  clearTimeout(state.refreshTimer);
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close(1000, "logged out");
  stopAllAudio();
  state.token = state.me = state.presence = state.current = state.wrapUntil = state.auth = null;
  for (const map of [state.offers, state.calls, state.agents, state.monitoring, state.recording]) map.clear();
  state.endings = [];
  state.busy.clear();
  state.voicemails = [];
  clearTimeout(state.voicemailTimer);
  $("voicemail").hidden = true;
  for (const player of state.players.values()) releasePlayer(player);
  state.players.clear();
  $("voicemails").replaceChildren();
  $("voicemail-status").textContent = "";
  clearTimeout(state.recentTimer);
  for (const timer of state.recentSoon) clearTimeout(timer);
  state.recentSoon = [];
  state.recent = [];
  state.recentRaw = state.recentSig = null;
  $("recent").hidden = true;
  $("recent-calls").tBodies[0].replaceChildren();
  $("recent-status").textContent = "";
  state.audit = [];
  state.auditSig = null;
  $("audit").hidden = true;
  $("audit-filter").reset();
  $("audit-records").tBodies[0].replaceChildren();
  $("audit-status").textContent = "";
  if (endSession) {
    setConnection("offline", "Logging out…");
    try {
      await fetch("/api/v1/auth/logout", {
        method: "POST",
        credentials: "same-origin",
        headers: { Authorization: `Bearer ${token}` },
        signal: AbortSignal.timeout(3000),
      });
    } catch {
      // unreachable: the session ends by itself at its expiry
    }
  }
  $("app").hidden = true;
  $("whoami").hidden = true;
  $("login").hidden = false;
  $("token").value = "";
  $("password").value = "";
  $("change-password-form").reset();
  $("change-password-status").textContent = "";
  $("password-change").open = false;
  hideBanner();
  showLoginForm(mode);
  setLoginError(message);
  setConnection("offline", "Not connected");
}

async function changePassword() {
  const status = $("change-password-status");
  const say = (text, kind = "error") => {
    status.textContent = text;
    status.dataset.kind = kind;
  };
  const current = $("current-password").value;
  const next = $("new-password").value;
  if (next !== $("confirm-password").value) {
    say("The two new passwords differ.");
    return;
  }
  const button = $("change-password-form").querySelector("button[type=submit]");
  button.disabled = true;
  let response;
  try {
    response = await fetch("/api/v1/me/password", {
      method: "POST",
      headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ current_password: current, new_password: next }),
    });
  } catch {
    say("The bridge cannot be reached: your password is unchanged.");
    return;
  } finally {
    button.disabled = false;
  }
  if (response.status === 204) {
    $("change-password-form").reset();
    say("Password changed. Your other logins were logged out.", "ok");
    return;
  }
  if (response.status === 403) {
    say("The current password is wrong: your password is unchanged.");
    return;
  }
  say(await refusal(response, "Your session ended: log in again."));
}

// -- the WebSocket -----------------------------------------------------------------------------
function setConnection(kind, text) {
  const el = $("connection");
  el.dataset.state = kind;
  el.textContent = text;
}

function connect() {
  clearTimeout(state.retryTimer);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // The token goes in the first frame, not the URL (URLs end up in proxies' logs).
  const ws = new WebSocket(`${scheme}://${location.host}/ws`, ["bridge.v1"]);
  state.ws = ws;
  setConnection("connecting", "Connecting…");
  ws.addEventListener("open", () => {
    ws.send(JSON.stringify({ v: 1, type: "auth", id: "auth", token: state.token, device: DEVICE }));
  });
  ws.addEventListener("message", (event) => {
    if (state.ws !== ws) return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    handle(frame);
  });
  ws.addEventListener("close", (event) => {
    if (state.ws !== ws) return; // logged out, or replaced
    closed(event.code, event.reason);
  });
}

function closed(code, reason) {
  state.ws = null;
  for (const { resolve, timer } of state.pending.values()) {
    clearTimeout(timer);
    resolve({ type: "error", code: "disconnected", message: "the connection closed" });
  }
  state.pending.clear();
  // docs/ws-protocol.md "Close codes": a bad, expired or revoked token is not retried; a
  // login session gets a fresh token first (the connection comes back with it).
  const renewed = state.renewedAt && Date.now() - state.renewedAt < 5000;
  if ((code === 4001 || code === 4002) && state.auth === "password" && !renewed) {
    state.renewedAt = Date.now();
    setConnection("connecting", "Renewing the session…");
    refreshAccess().then((ok) => {
      if (ok && state.auth === "password" && !state.ws) connect();
    });
    return;
  }
  if (code === 4003 && state.auth === "password") {
    logout(`Access revoked${reason ? `: ${reason}` : ""}.`);
    return;
  }
  if (state.auth === "password" && (code === 4001 || code === 4002)) {
    logout(`The bridge refused the session${reason ? `: ${reason}` : ""}. Log in again.`);
    return;
  }
  if (code === 4001 || code === 4002 || code === 4003) {
    const why = { 4001: "Token refused", 4002: "Your token expired", 4003: "Access revoked" }[code];
    logout(`${why}${reason ? `: ${reason}` : ""}. Paste a new token.`);
    return;
  }
  if (code === 4009 || code === 1008 || code === 1009) {
    showBanner(`Disconnected: ${reason || code}. Reload the page to try again.`);
    setConnection("offline", "Disconnected");
    return;
  }
  // 1001 (the bridge restarts), 1006, 1011, 4008: reconnect with backoff and jitter.
  const delay = Math.min(30, 2 ** state.retry) * (0.5 + Math.random() / 2);
  state.retry += 1;
  setConnection("connecting", `Connection lost; reconnecting in ${Math.ceil(delay)} s`);
  state.retryTimer = setTimeout(connect, delay * 1000);
}

function send(type, fields = {}) {
  const id = state.nextId++;
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ v: 1, type, id, ...fields }));
  }
  return id;
}

// Send a frame and resolve with the frame that answers it (same id), or a local error.
function request(type, fields = {}) {
  return new Promise((resolve) => {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      resolve({ type: "error", code: "disconnected", message: "not connected" });
      return;
    }
    const id = send(type, fields);
    const timer = setTimeout(() => {
      state.pending.delete(id);
      resolve({ type: "error", code: "timeout", message: "no answer from the bridge" });
    }, REQUEST_TIMEOUT_MS);
    state.pending.set(id, { resolve, timer });
  });
}

function handle(frame) {
  if (frame.type === "ping") {
    state.ws?.send(PONG);
    return;
  }
  const waiting = frame.id !== undefined ? state.pending.get(frame.id) : undefined;
  switch (frame.type) {
    case "auth.ok":
      onAuthOk(frame);
      break;
    case "presence": {
      const wasOnCall = state.presence ? state.presence.on_call : false;
      state.presence = frame;
      if (frame.wrap_up_until) state.wrapUntil = new Date(frame.wrap_up_until);
      // A path that sends no `call.state ended` still ends the user's call in presence.
      if (wasOnCall && !frame.on_call && state.current) endCurrent();
      if (wasOnCall && !frame.on_call) recentSoon();
      break;
    }
    case "call.offer":
      state.offers.set(frame.call_id, { ...frame, answering: false });
      break;
    case "monitor.offer":
      joinWithAudio(frame);
      break;
    case "monitor.ended":
      stopAudio(frame.call_id, "monitor");
      state.monitoring.delete(frame.call_id);
      $("control-status").textContent = `You left the call (${frame.reason})`;
      break;
    case "call.ended":
      onEnded(frame);
      recentSoon();
      break;
    case "call.state":
      onCallState(frame);
      break;
    case "calls.board":
      state.calls = new Map(frame.calls.map((c) => [c.call_id, c]));
      state.agents = new Map(frame.agents.map((a) => [a.user_id, a]));
      for (const agent of frame.agents) state.names.set(agent.user_id, agent.name);
      break;
    case "calls.update":
      for (const call of frame.calls) state.calls.set(call.call_id, call);
      for (const id of frame.removed) {
        if (state.current && state.current.call_id === id) endCurrent();
        state.calls.delete(id);
        state.monitoring.delete(id);
        state.recording.delete(id);
      }
      // A call this user may see is over (it left the board), or an agent's call ended (off
      // the call, or a new wrap-up): a call shorter than the board's refresh never shows.
      let ended = frame.removed.length > 0;
      for (const agent of frame.agents) {
        const before = state.agents.get(agent.user_id);
        if (before && before.on_call && !agent.on_call) ended = true;
        if (before && agent.wrap_up_until && agent.wrap_up_until !== before.wrap_up_until) ended = true;
        state.agents.set(agent.user_id, agent);
        state.names.set(agent.user_id, agent.name);
      }
      if (ended) recentSoon();
      break;
    case "server.draining":
      showBanner("The bridge is restarting: the console reconnects by itself.");
      break;
    case "error":
      // Errors that answer a request go to it; others (rate limit, board revoked) are shown.
      if (!waiting) showBanner(`The bridge refused a request: ${frame.message}`);
      break;
    default:
      break;
  }
  if (waiting) {
    clearTimeout(waiting.timer);
    state.pending.delete(frame.id);
    waiting.resolve(frame);
  }
  render();
}

function onAuthOk(frame) {
  state.retry = 0;
  state.me = { ...state.me, ...frame.user };
  state.presence = frame.presence;
  // A new session is sent every offer still ringing: forget those heard before a reconnect.
  if (frame.id === "auth") state.offers.clear();
  if (frame.presence.wrap_up_until) state.wrapUntil = new Date(frame.presence.wrap_up_until);
  hideBanner();
  const expires = new Date(frame.expires_at);
  setConnection("online", `Connected (token valid until ${expires.toLocaleTimeString()})`);
  if (SEE_LIVE_CALLS.has(state.me.role) && frame.id === "auth") send("calls.subscribe");
}

function onEnded(frame) {
  const offer = state.offers.get(frame.call_id);
  state.offers.delete(frame.call_id);
  stopAudio(frame.call_id, "call");
  addEnding(frame.call_id, offer ? offer.caller : null, frame.reason, whyEnded(frame));
}

function onCallState(frame) {
  if (frame.state === "answered") {
    const offer = state.offers.get(frame.call_id) || {};
    state.offers.delete(frame.call_id);
    state.current = { call_id: frame.call_id, caller: offer.caller, line: offer.line, state: "answered", since: new Date() };
  } else if (frame.state === "held" && state.current) {
    state.current.state = "held";
  } else if (frame.state === "ended") {
    stopAudio(frame.call_id, "call");
    const caller = state.current ? state.current.caller : null;
    if (state.current && state.current.call_id === frame.call_id) state.current = null;
    const why = frame.reason ? ENDED[frame.reason] || frame.reason : "Call ended";
    addEnding(frame.call_id, caller, frame.reason || "ended", `Call ended: ${why.toLowerCase()}`);
    if (frame.wrap_up_until) state.wrapUntil = new Date(frame.wrap_up_until);
    recentSoon();
  }
}

// The answered call is over without a `call.state ended` for it (its reason is not known).
function endCurrent() {
  stopAudio(state.current.call_id, "call");
  addEnding(state.current.call_id, state.current.caller, "ended", "Call ended");
  state.current = null;
}

function addEnding(callId, caller, reason, text) {
  state.endings.unshift({ callId, caller, reason, text, at: new Date() });
  state.endings.length = Math.min(state.endings.length, ENDINGS_KEPT);
}

function showBanner(text) {
  $("banner").textContent = text;
  $("banner").hidden = false;
}

function hideBanner() {
  $("banner").hidden = true;
  $("banner").textContent = "";
}

// -- actions -----------------------------------------------------------------------------------
async function answer(callId, accept) {
  const offer = state.offers.get(callId);
  if (!offer || offer.answering) return;
  offer.answering = true;
  render();
  const fields = { call_id: callId };
  if (accept && offer.sdp) {
    // A SIP call: this page is the phone (microphone in, the caller's audio out).
    try {
      fields.sdp = await startAudio(callId, "call", offer.sdp);
    } catch (err) {
      offer.answering = false;
      showBanner(`Could not accept the call: ${err.message}`);
      render();
      return;
    }
  }
  const reply = await request(accept ? "call.accept" : "call.reject", fields);
  if (reply.type === "error") {
    stopAudio(callId, "call");
    offer.answering = false;
    showBanner(`Could not ${accept ? "accept" : "reject"} the call: ${reply.message}`);
    render();
  } else if (reply.type === "call.ended") {
    stopAudio(callId, "call");
  }
}

// -- audio: on SIP calls this page is a WebRTC peer of the bridge's media engine ---------------
async function microphone() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("this browser cannot use a microphone on this page (it must be served over https, or from localhost)");
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  } catch (err) {
    if (err.name === "NotAllowedError" || err.name === "SecurityError") throw new Error(MIC_REFUSED);
    if (err.name === "NotFoundError") throw new Error("no microphone was found: plug one in, then try again");
    throw new Error(`the microphone cannot be used (${err.message || err.name})`);
  }
}

// Answer the bridge's WebRTC offer: the answer SDP to send. The bridge is ICE-lite with one
// host candidate, so nothing is trickled: the browser's checks find it.
async function startAudio(callId, kind, offerSdp, { micOptional = false } = {}) {
  let mic = null;
  try {
    mic = await microphone();
  } catch (err) {
    if (!micOptional) throw err;
    $("control-status").textContent = `Listening without a microphone: ${err.message}`;
  }
  stopAudio(callId, kind);
  const pc = new RTCPeerConnection({ iceServers: [] });
  const audio = document.createElement("audio");
  audio.autoplay = true;
  audio.hidden = true;
  audio.dataset.callId = callId;
  audio.dataset.kind = kind;
  document.body.append(audio);
  const entry = { pc, mic, audio, kind, muted: false, problem: null, connection: "new", keys: "" };
  state.media.set(`${kind}:${callId}`, entry);
  if (mic) for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
  else pc.addTransceiver("audio", { direction: "recvonly" });
  pc.ontrack = (event) => {
    audio.srcObject = event.streams[0] || new MediaStream([event.track]);
    audio.play().catch(() => {}); // autoplay may wait for a click; the audio element stays
  };
  pc.onconnectionstatechange = () => {
    entry.connection = pc.connectionState;
    if (pc.connectionState === "failed") {
      entry.problem = "The audio connection failed: this browser cannot reach the bridge's media address (ICE or DTLS failed).";
      showBanner(entry.problem);
    }
    render();
  };
  try {
    await pc.setRemoteDescription({ type: "offer", sdp: offerSdp });
    await pc.setLocalDescription(await pc.createAnswer());
  } catch (err) {
    stopAudio(callId, kind);
    throw new Error(`the call's audio could not be set up (${err.message || err.name})`);
  }
  return pc.localDescription.sdp;
}

function stopAudio(callId, kind) {
  const key = `${kind}:${callId}`;
  const entry = state.media.get(key);
  if (!entry) return;
  state.media.delete(key);
  entry.pc.close();
  if (entry.mic) for (const track of entry.mic.getTracks()) track.stop();
  entry.audio.srcObject = null;
  entry.audio.remove();
}

function stopAllAudio() {
  for (const entry of [...state.media.values()]) stopAudio(entry.audio.dataset.callId, entry.kind);
}

function toggleMute(callId) {
  const entry = state.media.get(`call:${callId}`);
  if (!entry || !entry.mic) return;
  entry.muted = !entry.muted;
  for (const track of entry.mic.getAudioTracks()) track.enabled = !entry.muted;
  render();
}

// Key presses as RFC 4733 events in the call's audio (what an IVR on the other side hears).
function pressKey(callId, key) {
  const entry = state.media.get(`call:${callId}`);
  const sender = entry ? entry.pc.getSenders().find((s) => s.track && s.track.kind === "audio") : null;
  if (!sender || !sender.dtmf || !sender.dtmf.canInsertDTMF) {
    showBanner("Keys cannot be sent on this call now.");
    return;
  }
  sender.dtmf.insertDTMF(key, 120, 70);
  entry.keys += key;
  render();
}

async function hangUp(callId) {
  const reply = await request("call.hangup", { call_id: callId });
  if (reply.type === "error") showBanner(`Could not hang up: ${reply.message}`);
}

// A supervisor joins a SIP call in this page (`monitor.offer`, after Listen / Whisper / Barge).
async function joinWithAudio(frame) {
  let sdp;
  try {
    sdp = await startAudio(frame.call_id, "monitor", frame.sdp, { micOptional: frame.mode === "listen" });
  } catch (err) {
    $("control-status").textContent = `Could not join: ${err.message}`;
    showBanner(`Could not join the call: ${err.message}`);
    request("call.monitor", { call_id: frame.call_id, mode: "stop" });
    return;
  }
  const reply = await request("monitor.answer", { call_id: frame.call_id, sdp });
  if (reply.type === "ack") {
    state.monitoring.set(frame.call_id, reply.result);
    $("control-status").textContent = `${MONITOR_LABELS[reply.result.mode]}: you are in the call`;
  } else {
    stopAudio(frame.call_id, "monitor");
    $("control-status").textContent = `Could not join: ${reply.message}`;
  }
  render();
}

async function setAvailability(value) {
  const previous = state.presence ? state.presence.availability : null;
  const reply = await request("presence.set", { availability: value });
  if (reply.type === "error") {
    $("availability-note").textContent = reply.message;
    if (previous) $("availability").value = previous;
  } else {
    $("availability-note").textContent = "";
  }
}

async function control(callId, type, fields, label) {
  state.busy.add(callId);
  $("control-status").textContent = `${label}…`;
  render();
  const reply = await request(type, { call_id: callId, ...fields });
  state.busy.delete(callId);
  if (reply.type === "ack") {
    if (type === "call.monitor") {
      if (fields.mode === "stop") {
        state.monitoring.delete(callId);
        stopAudio(callId, "monitor");
      } else {
        state.monitoring.set(callId, reply.result);
      }
    } else {
      state.recording.set(callId, reply.result);
    }
    $("control-status").textContent = `${label}: done`;
  } else {
    $("control-status").textContent = `${label} refused: ${reply.message}`;
  }
  render();
}

// -- what the role allows (the reason shown when it does not) ----------------------------------
function monitorBlocked(call) {
  const { role, permissions = [] } = state.me;
  if (!MONITOR_ROLES.has(role)) return `Your role (${role}) may not listen, whisper or barge`;
  if (!permissions.includes("barge_whisper")) return "You lack the barge_whisper permission";
  if (call.state !== "answered") return "Not answered yet";
  if (call.answered_by === state.me.id) return "This is your own call";
  return null;
}

function recordingBlocked(call) {
  const { role, permissions = [] } = state.me;
  if (RECORD_OWN_CALLS.has(role)) {
    if (!permissions.includes("recording_control")) return "You lack the recording_control permission";
    if (call.answered_by !== state.me.id) return "Only calls you answered";
  } else if (!RECORD_ANY_CALL.has(role)) {
    return `Your role (${role}) may not control recordings`;
  }
  if (call.state !== "answered") return "Not answered yet";
  return null;
}

// -- rendering ---------------------------------------------------------------------------------
function render() {
  if (!state.me) return;
  renderPresence();
  renderCalls();
  renderBoard();
  renderRecent(); // names and line names may have come since
  renderAudit();
  if (state.voicemails.length) renderVoicemails();
}

function renderPresence() {
  const select = $("availability");
  const may = SET_OWN_AVAILABILITY.has(state.me.role);
  select.disabled = !may;
  if (!may) {
    const why = `Your role (${state.me.role}) does not take calls`;
    select.title = why;
    $("availability-note").textContent = why;
  }
  if (state.presence && document.activeElement !== select) select.value = state.presence.availability;
}

function renderCalls() {
  const status = $("status-line");
  const current = state.current;
  if (current) {
    status.dataset.state = current.state;
    status.textContent =
      current.state === "held" ? `On hold with ${current.caller || "the caller"}` : `On a call with ${current.caller || "the caller"}`;
    $("current-call").hidden = false;
    const media = state.media.get(`call:${current.call_id}`);
    const keys = "123456789*0#".split("").map((key) =>
      h("button", { type: "button", class: "key", dataset: { key }, "aria-label": `Key ${key}`, onclick: () => pressKey(current.call_id, key) }, key),
    );
    $("current-call").replaceChildren(
      h("p", {}, "Line: ", lineLabel(current.line)),
      h("p", {}, "Talking for ", h("span", { dataset: { since: current.since.toISOString() } }, since(current.since.toISOString()))),
      media
        ? h(
            "div",
            { class: "call-audio" },
            h("p", { class: "note", dataset: { audio: media.connection } }, media.problem || audioStatus(media)),
            h(
              "div",
              { class: "buttons" },
              h("button", { type: "button", id: "mute", "aria-pressed": media.muted ? "true" : "false", onclick: () => toggleMute(current.call_id) }, media.muted ? "Unmute" : "Mute"),
              h("button", { type: "button", id: "hang-up", class: "reject", onclick: () => hangUp(current.call_id) }, "Hang up"),
            ),
            h("div", { class: "keypad", role: "group", "aria-label": "Keypad" }, keys),
            media.keys ? h("p", { class: "note" }, "Keys sent: ", h("span", { id: "keys-sent" }, media.keys)) : null,
          )
        : h("p", { class: "note" }, "The audio of this call is in your carrier voice app or on your phone."),
    );
  } else {
    $("current-call").hidden = true;
    const onCall = state.presence && state.presence.on_call;
    status.dataset.state = onCall ? "answered" : "idle";
    status.textContent = onCall ? "On a call" : "No call";
  }

  const offers = [...state.offers.values()];
  $("no-offers").hidden = offers.length > 0;
  const list = $("offers");
  const shown = new Map([...list.children].map((li) => [li.dataset.callId, li]));
  for (const [callId, li] of shown) if (!state.offers.has(callId)) li.remove();
  for (const offer of offers) {
    const sig = `${offer.answering}|${state.lines.get(offer.line) || ""}`;
    const existing = shown.get(offer.call_id);
    if (existing && existing.dataset.sig === sig) continue;
    const titleId = `offer-${offer.call_id}`;
    const li = h(
      "li",
      { class: "offer", dataset: { callId: offer.call_id, sig }, "aria-labelledby": titleId },
      h("p", { id: titleId, class: "offer-title" }, "Incoming call from ", h("strong", { class: "offer-caller" }, offer.caller || "an unknown number")),
      h("p", { class: "offer-line" }, "on ", lineLabel(offer.line), offer.ring_group ? ` · ring group ${offer.ring_group}` : ""),
      h("p", { class: "note" }, "Rings for ", h("span", { dataset: { until: offer.expires_at } }, clock((Date.parse(offer.expires_at) - Date.now()) / 1000)), " more"),
      h(
        "div",
        { class: "buttons" },
        h("button", { type: "button", class: "accept", dataset: { action: "accept" }, disabled: offer.answering, onclick: () => answer(offer.call_id, true) }, offer.answering ? "Answering…" : "Accept"),
        h("button", { type: "button", class: "reject", dataset: { action: "reject" }, disabled: offer.answering, onclick: () => answer(offer.call_id, false) }, "Reject"),
      ),
    );
    if (existing) existing.replaceWith(li);
    else list.prepend(li);
  }

  $("no-endings").hidden = state.endings.length > 0;
  $("endings").replaceChildren(
    ...state.endings.map((e) =>
      h(
        "li",
        { class: "ending", dataset: { callId: e.callId, reason: e.reason } },
        h("span", { class: "ending-caller" }, e.caller || "Call"),
        " — ",
        h("span", { class: "ending-text" }, e.text),
        h("time", { datetime: e.at.toISOString() }, ` (${e.at.toLocaleTimeString()})`),
      ),
    ),
  );
  renderWrapUp();
}

function audioStatus(media) {
  if (media.connection === "connected") return media.muted ? "Audio connected — you are muted" : "Audio connected";
  if (media.connection === "failed") return "Audio failed";
  return "Connecting audio…";
}

function renderWrapUp() {
  const el = $("wrap-up");
  const left = state.wrapUntil ? (state.wrapUntil.getTime() - Date.now()) / 1000 : 0;
  if (left > 0 && !state.current) {
    el.hidden = false;
    el.textContent = `Wrap-up: ${clock(left)} left before the next call`;
  } else {
    el.hidden = true;
    el.textContent = "";
  }
}

function renderBoard() {
  const board = $("board");
  if (!SEE_LIVE_CALLS.has(state.me.role)) {
    board.hidden = true;
    return;
  }
  board.hidden = false;
  $("board-note").textContent =
    state.me.role === "reporter" || state.me.role === "end_client" ? "Read-only: your role watches calls, it does not act on them." : "";
  const calls = [...state.calls.values()].sort((a, b) => a.started_at.localeCompare(b.started_at));
  $("no-calls").hidden = calls.length > 0;
  const body = $("board-calls").tBodies[0];
  const rows = new Map([...body.rows].map((tr) => [tr.dataset.callId, tr]));
  for (const [callId, tr] of rows) if (!state.calls.has(callId)) tr.remove();
  for (const call of calls) {
    const sig = JSON.stringify([call, state.monitoring.get(call.call_id), state.recording.get(call.call_id), state.busy.has(call.call_id), [...state.names]]);
    const existing = rows.get(call.call_id);
    if (existing && existing.dataset.sig === sig) continue;
    const tr = boardRow(call, sig);
    if (existing) existing.replaceWith(tr);
    else body.append(tr);
  }
  // Keep the rows in start order, moving rows only when needed (a moved row loses focus).
  const order = calls.map((c) => c.call_id);
  if ([...body.rows].some((tr, i) => tr.dataset.callId !== order[i])) {
    for (const callId of order) body.append([...body.rows].find((tr) => tr.dataset.callId === callId));
  }

  const agents = [...state.agents.values()].sort((a, b) => a.name.localeCompare(b.name));
  $("board-agents").tBodies[0].replaceChildren(
    ...agents.map((a) =>
      h(
        "tr",
        { dataset: { userId: a.user_id } },
        h("th", { scope: "row" }, a.name),
        h("td", {}, agentStatus(a)),
        h("td", {}, a.reachable.length ? a.reachable.join(", ") : "not reachable"),
        h("td", {}, String(a.sessions)),
      ),
    ),
  );
}

function agentStatus(agent) {
  if (agent.status === "paused") return "paused";
  if (agent.on_call) return "on a call";
  if (agent.wrap_up_until && Date.parse(agent.wrap_up_until) > Date.now()) return "wrap-up";
  return agent.availability;
}

// The session as the ack described it: the bridge calls the supervisor (in the app through
// the carrier's voice SDK, or on their phone) and the audio goes there, not to this page.
function monitoring(session) {
  const doing = `You are ${MONITOR_DOING[session.mode]}`;
  if (session.status !== "dialing") return doing;
  const where = session.via === "phone_number" ? `on ${session.to}` : "in your app";
  return `${doing}: the bridge is calling you ${where}`;
}

function boardRow(call, sig) {
  const id = call.call_id;
  const monitor = state.monitoring.get(id);
  const recording = state.recording.get(id);
  const busy = state.busy.has(id);
  const monitorWhy = monitorBlocked(call);
  const recordWhy = recordingBlocked(call);
  const monitorReasonId = `why-monitor-${id}`;
  const recordReasonId = `why-record-${id}`;
  const who = call.answered_by ? userName(call.answered_by) : call.ringing.length ? `ringing: ${call.ringing.map(userName).join(", ")}` : "—";

  const monitorButtons = ["listen", "whisper", "barge"].map((mode) =>
    h(
      "button",
      {
        type: "button",
        dataset: { control: mode },
        "aria-pressed": monitor && monitor.mode === mode ? "true" : "false",
        disabled: Boolean(monitorWhy) || busy,
        title: monitorWhy || `${MONITOR_LABELS[mode]} (${mode === "listen" ? "muted" : mode === "whisper" ? "only the agent hears you" : "both sides hear you"})`,
        "aria-describedby": monitorWhy ? monitorReasonId : null,
        onclick: () => control(id, "call.monitor", { mode }, MONITOR_LABELS[mode]),
      },
      MONITOR_LABELS[mode],
    ),
  );
  if (monitor) {
    monitorButtons.push(
      h("button", { type: "button", dataset: { control: "leave" }, disabled: busy, onclick: () => control(id, "call.monitor", { mode: "stop" }, "Leave") }, "Leave"),
    );
  }
  const status = recording ? recording.status : null;
  const next = status === "in-progress" ? "pause" : status === "paused" ? "resume" : "start";
  const recordLabel = { start: "Record", pause: "Pause recording", resume: "Resume recording" }[next];
  const recordButtons = [
    h(
      "button",
      {
        type: "button",
        dataset: { control: "recording" },
        disabled: Boolean(recordWhy) || busy,
        title: recordWhy || `${recordLabel} (the call's recording)`,
        "aria-describedby": recordWhy ? recordReasonId : null,
        onclick: () => control(id, "call.recording", { action: next }, recordLabel),
      },
      recordLabel,
    ),
  ];
  if (status === "in-progress" || status === "paused") {
    recordButtons.push(
      h("button", { type: "button", dataset: { control: "recording-stop" }, disabled: busy, onclick: () => control(id, "call.recording", { action: "stop" }, "Stop recording") }, "Stop recording"),
    );
  }

  return h(
    "tr",
    { dataset: { callId: id, sig, state: call.state } },
    h("th", { scope: "row" }, call.caller || "unknown"),
    h("td", {}, lineLabel(call.line)),
    h("td", { class: `state state-${call.state}` }, call.state),
    h("td", { class: "agent" }, who),
    h("td", {}, h("span", { dataset: { since: call.started_at } }, since(call.started_at))),
    h(
      "td",
      { class: "controls" },
      h("div", { class: "buttons", role: "group", "aria-label": `Monitor the call from ${call.caller || "unknown"}` }, monitorButtons),
      monitorWhy ? h("p", { class: "reason", id: monitorReasonId, dataset: { for: "monitor" } }, `Listen / Whisper / Barge: ${monitorWhy}`) : null,
      monitor ? h("p", { class: "note monitoring" }, monitoring(monitor)) : null,
      h("div", { class: "buttons", role: "group", "aria-label": "Recording" }, recordButtons),
      recordWhy ? h("p", { class: "reason", id: recordReasonId, dataset: { for: "recording" } }, `Recording: ${recordWhy}`) : null,
      recording ? h("p", { class: "note" }, `Recording ${recording.status}`) : null,
    ),
  );
}

// -- voicemail ---------------------------------------------------------------------------------
async function loadVoicemails() {
  clearTimeout(state.voicemailTimer);
  const token = state.token;
  if (!token) return;
  state.voicemailTimer = setTimeout(loadVoicemails, VOICEMAIL_REFRESH_MS);
  let response;
  try {
    response = await fetch("/api/v1/voicemails", { headers: { Authorization: `Bearer ${token}` } });
  } catch (error) {
    $("voicemail-status").textContent = `Voicemail cannot be loaded: ${error.message}`;
    return;
  }
  if (token !== state.token) return; // logged out meanwhile
  if (response.status === 403 || response.status === 404) {
    $("voicemail").hidden = true; // this role has no voicemail
    return;
  }
  if (!response.ok) {
    $("voicemail-status").textContent = `Voicemail cannot be loaded (${response.status})`;
    return;
  }
  state.voicemails = await response.json();
  $("voicemail").hidden = false;
  renderVoicemails();
}

// Marking heard and deleting are refused to read-only roles (docs/ROLES.md): not offered.
function mayChangeVoicemail() {
  return Boolean(state.me) && !READ_ONLY_ROLES.has(state.me.role);
}

// The list, item by item: an item already shown is kept (its player goes on playing, a focused
// button keeps the focus) and only its heard state is brought up to date.
function renderVoicemails() {
  const list = $("voicemails");
  const wanted = new Set(state.voicemails.map((m) => m.id));
  const shown = new Map([...list.children].map((li) => [li.dataset.voicemailId, li]));
  for (const [id, li] of shown) {
    if (wanted.has(id)) continue;
    li.remove();
    shown.delete(id);
  }
  for (const [id, player] of state.players) {
    if (wanted.has(id)) continue;
    releasePlayer(player);
    state.players.delete(id);
  }
  for (const message of state.voicemails) {
    const li = shown.get(message.id);
    if (li) showHeard(li, message);
    else shown.set(message.id, voicemailItem(message));
  }
  const order = state.voicemails.map((m) => m.id);
  const now = [...list.children].map((li) => li.dataset.voicemailId);
  if (now.length !== order.length || now.some((id, i) => id !== order[i])) {
    for (const id of order) list.append(shown.get(id));
  }
  $("no-voicemails").hidden = state.voicemails.length > 0;
}

function voicemailItem(message) {
  const when = new Date(message.recorded_at).toLocaleString();
  let player = state.players.get(message.id);
  if (!player) {
    player = h("div", { class: "player" });
    state.players.set(message.id, player);
  }
  const caller = message.caller || "Unknown caller";
  const play = h("button", { type: "button", dataset: { action: "play" } }, "Play");
  play.addEventListener("click", () => playVoicemail(message.id, player, play));
  const buttons = [play];
  if (mayChangeVoicemail()) {
    const heard = h("button", { type: "button", dataset: { action: "heard" } }, "Mark heard");
    heard.addEventListener("click", () => {
      const current = state.voicemails.find((m) => m.id === message.id) || message;
      markHeard(message.id, !current.heard, heard);
    });
    const remove = h("button", { type: "button", dataset: { action: "delete" } }, "Delete");
    remove.addEventListener("click", () => deleteVoicemail(message, remove));
    buttons.push(heard, remove);
  }
  const li = h(
    "li",
    { class: "voicemail", dataset: { voicemailId: message.id } },
    h("span", { class: "vm-state" }),
    h("span", { class: "vm-caller" }, caller),
    " ",
    h("span", { class: "vm-line" }),
    " ",
    h("span", { class: "vm-for" }),
    h(
      "p",
      { class: "note" },
      `${when} · ${clock(message.duration_seconds)} · ${MESSAGE_ENDED[message.ended_by] || ""}`,
    ),
    h("p", { class: "note vm-heard" }),
    h("div", { class: "buttons", role: "group", "aria-label": `Message from ${caller}` }, buttons),
    player,
  );
  showHeard(li, message);
  return li;
}

// What can change on an item as it is shown: new or heard (by whom, when), and the names
// (users' and lines', which may come after the list).
function showHeard(li, message) {
  const heard = Boolean(message.heard);
  const by = message.heard_by ? userName(message.heard_by) : "";
  const at = message.heard_at ? new Date(message.heard_at).toLocaleString() : "";
  const forWhom = message.user_id
    ? `for ${userName(message.user_id)}`
    : message.group_id ? `for ring group ${message.group_id}` : "";
  const line = message.line ? `on ${lineLabel(message.line)}` : "";
  const sig = JSON.stringify([heard, by, at, forWhom, line]);
  if (li.dataset.sig === sig) return;
  li.dataset.sig = sig;
  li.dataset.heard = String(heard);
  li.querySelector(".vm-for").textContent = forWhom;
  li.querySelector(".vm-line").textContent = line;
  li.querySelector(".vm-state").replaceChildren(heard ? "" : h("span", { class: "badge vm-new" }, "new"), heard ? "" : " ");
  li.querySelector(".vm-heard").textContent = heard ? `Heard${by ? ` by ${by}` : ""}${at ? `, ${at}` : ""}` : "";
  const button = li.querySelector("[data-action=heard]");
  if (button) button.textContent = heard ? "Mark new" : "Mark heard";
}

function releasePlayer(player) {
  const audio = player.querySelector("audio");
  if (!audio) return;
  audio.pause();
  URL.revokeObjectURL(audio.src);
}

async function playVoicemail(id, player, button) {
  const message = state.voicemails.find((m) => m.id === id);
  if (!message) return;
  // <audio> cannot send the token: fetch the WAV, play it from memory.
  button.disabled = true;
  try {
    const response = await fetch(message.audio_url, {
      headers: { Authorization: `Bearer ${state.token}` },
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      $("voicemail-status").textContent = `Cannot play: ${body.detail || response.status}`;
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    releasePlayer(player);
    const audio = h("audio", { controls: "", src: url });
    player.replaceChildren(audio);
    audio.play().catch(() => {}); // a page without a user gesture may not autoplay
    // Listened to: heard, for everyone who sees the message.
    if (!message.heard && mayChangeVoicemail()) markHeard(id, true, null);
  } catch (error) {
    $("voicemail-status").textContent = `Cannot play: ${error.message}`;
  } finally {
    button.disabled = false;
  }
}

// POST .../heard: heard (or new again). `button`: the one pressed (null when playing did it).
async function markHeard(id, heard, button) {
  if (button) button.disabled = true;
  let response;
  try {
    response = await fetch(`/api/v1/voicemails/${encodeURIComponent(id)}/heard`, {
      method: "POST",
      headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ heard }),
    });
  } catch (error) {
    $("voicemail-status").textContent = `Cannot mark the message: ${error.message}`;
    return;
  } finally {
    if (button) button.disabled = false;
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    $("voicemail-status").textContent = `Cannot mark the message: ${body.detail || response.status}`;
    return;
  }
  const marked = await response.json();
  state.voicemails = state.voicemails.map((m) => (m.id === marked.id ? { ...m, ...marked } : m));
  if (button) $("voicemail-status").textContent = heard ? "Marked heard" : "Marked new";
  renderVoicemails();
}

async function deleteVoicemail(message, button) {
  button.disabled = true;
  const response = await fetch(`/api/v1/voicemails/${encodeURIComponent(message.id)}`, {
    method: "DELETE",
    headers: { Authorization: `Bearer ${state.token}` },
  }).catch((error) => ({ ok: false, status: error.message, json: async () => ({}) }));
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    $("voicemail-status").textContent = `Cannot delete: ${body.detail || response.status}`;
    button.disabled = false;
    return;
  }
  $("voicemail-status").textContent = "Message deleted";
  loadVoicemails();
}

// -- recent calls (the call history: GET /api/v1/calls?state=ended) ----------------------------
async function loadRecent() {
  clearTimeout(state.recentTimer);
  const token = state.token;
  if (!token || !state.me || !SEE_LIVE_CALLS.has(state.me.role)) return; // billing: no calls
  state.recentTimer = setTimeout(loadRecent, RECENT_REFRESH_MS);
  const asked = ++state.recentAsked;
  let response;
  try {
    response = await fetch(`/api/v1/calls?state=ended&limit=${RECENT_LIMIT}`, {
      headers: { Authorization: `Bearer ${token}` },
    });
  } catch (error) {
    $("recent-status").textContent = `Recent calls cannot be loaded: ${error.message}`;
    return;
  }
  if (token !== state.token || asked !== state.recentAsked) return; // logged out, or stale
  $("recent").hidden = false;
  if (response.status === 403 || response.status === 503) {
    clearTimeout(state.recentTimer);
    if (response.status === 503) state.recentTimer = setTimeout(loadRecent, RECENT_REFRESH_MS);
    recentUnavailable(
      response.status === 503
        ? "The call history is not available on this server (its event store is not running)."
        : `Your role (${state.me.role}) may not see the call history.`,
    );
    return;
  }
  if (!response.ok) {
    $("recent-status").textContent = `Recent calls cannot be loaded (${response.status})`;
    return;
  }
  const raw = await response.text();
  if (asked !== state.recentAsked) return;
  $("recent-unavailable").hidden = true;
  $("recent-list").hidden = false;
  $("recent-refresh").hidden = false;
  if (raw === state.recentRaw) return;
  let calls;
  try {
    calls = JSON.parse(raw);
  } catch {
    $("recent-status").textContent = "Recent calls cannot be read";
    return;
  }
  const first = state.recentRaw === null;
  const known = new Set(state.recent.map((c) => c.call_id));
  state.recentRaw = raw;
  state.recent = Array.isArray(calls) ? calls : [];
  state.recentVersion += 1;
  // A screen reader hears of a call just missed, not of every refresh.
  const missedNow = first ? [] : state.recent.filter((c) => !known.has(c.call_id) && missed(c));
  if (missedNow.length) {
    const call = missedNow[0];
    $("recent-status").textContent = `Missed call from ${call.caller || "an unknown number"}: ${missed(call)}`;
  }
  renderRecent();
}

function recentUnavailable(text) {
  $("recent-list").hidden = true;
  $("recent-refresh").hidden = true;
  $("recent-unavailable").textContent = text;
  $("recent-unavailable").hidden = false;
}

// A call of this user's ended: its record is written with its last event, just after.
function recentSoon() {
  if (!state.me || !SEE_LIVE_CALLS.has(state.me.role)) return;
  for (const timer of state.recentSoon) clearTimeout(timer);
  state.recentSoon = RECENT_AFTER_END_MS.map((ms) => setTimeout(loadRecent, ms));
}

// Null when the call is not one this user missed, else why they did not take it (in words).
function missed(call) {
  const me = state.me ? state.me.id : null;
  if (!me || call.answered_by === me) return null;
  const legs = (call.legs || []).filter((leg) => leg.user_id === me);
  if (!legs.length && !(call.users || []).includes(me)) return null; // never rung for it
  return missedWhy(call, legs);
}

function missedWhy(call, legs) {
  // A leg that rang until the end says why the ringing stopped; failed ones only how they failed.
  const latest = (list) => list.reduce((a, b) => ((b.ended_at || "") > (a.ended_at || "") ? b : a));
  const rang = legs.filter((leg) => !leg.failure);
  const leg = rang.length ? latest(rang) : legs.length ? latest(legs) : null;
  if (!leg) return "you could not be rung";
  if (leg.failure) return MISSED_FAILURE[leg.failure] || `your phone failed (${leg.failure})`;
  if (leg.reason === "answered_elsewhere") {
    return call.answered_by ? `answered by ${userName(call.answered_by)}` : "answered elsewhere";
  }
  return MISSED_REASON[leg.reason] || (leg.reason ? `ended (${leg.reason})` : "not answered by you");
}

function shortTime(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  if (at.toDateString() === new Date().toDateString()) {
    return at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  return at.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

function renderRecent() {
  if (!state.me || $("recent").hidden) return;
  const sig = `${state.recentVersion}|${state.me.id}|${[...state.names].join()}|${[...state.lines].join()}`;
  if (sig === state.recentSig) return;
  state.recentSig = sig;
  $("recent-calls").tBodies[0].replaceChildren(...state.recent.map(recentRow));
  $("no-recent").hidden = state.recent.length > 0;
}

function recentRow(call) {
  const why = missed(call);
  const line = call.line_name && call.line ? `${call.line_name} (${call.line})` : lineLabel(call.line);
  const outcome = OUTCOME[call.outcome] || (call.outcome ? call.outcome.replaceAll("_", " ") : "Ended");
  let answerer = "—";
  if (call.answered_by) answerer = `${userName(call.answered_by)} ${VIA[call.answered_via] || ""}`.trim();
  else if (call.outcome === "forwarded") answerer = "a forwarding number";
  const durations = [];
  if (call.wait_seconds !== null && call.wait_seconds !== undefined) durations.push(`rang ${clock(call.wait_seconds)}`);
  if (call.talk_seconds !== null && call.talk_seconds !== undefined) durations.push(`talked ${clock(call.talk_seconds)}`);
  return h(
    "tr",
    { dataset: { callId: call.call_id, outcome: call.outcome || "", missed: why ? "true" : "false" }, class: why ? "missed-row" : null },
    h("td", {}, h("time", { datetime: call.started_at || call.ended_at }, shortTime(call.started_at || call.ended_at))),
    h("th", { scope: "row", class: "recent-caller" }, call.caller || "Unknown caller"),
    h("td", {}, line),
    h(
      "td",
      { class: "recent-outcome" },
      why ? h("p", { class: "missed" }, h("strong", { class: "missed-label" }, "Missed"), ": ", h("span", { class: "missed-why" }, why)) : null,
      call.answered_by && call.answered_by === state.me.id ? h("p", { class: "yours" }, "You answered") : null,
      h("p", { class: "outcome" }, outcome),
    ),
    h("td", { class: "recent-answerer" }, answerer),
    h("td", { class: "recent-durations" }, durations.join(" · ") || "—"),
  );
}

// -- the audit trail (admins only: GET /api/v1/audit) ------------------------------------------
async function loadAudit() {
  const token = state.token;
  if (!token || !state.me || !SEE_AUDIT.has(state.me.role)) return;
  const query = new URLSearchParams({ limit: String(AUDIT_LIMIT) });
  const actor = $("audit-actor").value.trim();
  const action = $("audit-action").value.trim();
  if (actor) query.set("actor", actor);
  if (action) query.set("action", action);
  if ($("audit-refused").checked) query.set("allowed", "false");
  const asked = ++state.auditAsked;
  $("audit").hidden = false;
  $("audit-status").textContent = "Loading…";
  let response;
  try {
    response = await fetch(`/api/v1/audit?${query}`, { headers: { Authorization: `Bearer ${token}` } });
  } catch (error) {
    $("audit-status").textContent = `The audit trail cannot be loaded: ${error.message}`;
    return;
  }
  if (token !== state.token || asked !== state.auditAsked) return;
  if (response.status === 403 || response.status === 503) {
    $("audit-list").hidden = true;
    $("audit-filter").hidden = true;
    $("audit-status").textContent = "";
    $("audit-unavailable").textContent =
      response.status === 503
        ? "The audit trail is not available on this server (its event store is not running)."
        : "The bridge refused the audit trail to this login.";
    $("audit-unavailable").hidden = false;
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (asked !== state.auditAsked) return;
  if (!response.ok) {
    $("audit-status").textContent = `The audit trail cannot be loaded: ${body.detail || response.status}`;
    return;
  }
  $("audit-unavailable").hidden = true;
  $("audit-filter").hidden = false;
  $("audit-list").hidden = false;
  state.audit = Array.isArray(body.records) ? body.records : [];
  const filtered = actor || action || $("audit-refused").checked;
  const one = state.audit.length === 1;
  const count = `${state.audit.length} record${one ? "" : "s"}`;
  $("audit-status").textContent = filtered ? `${count} match${one ? "es" : ""} the filter` : `The last ${count}`;
  state.auditVersion += 1;
  renderAudit();
}

function renderAudit() {
  if (!state.me || !SEE_AUDIT.has(state.me.role) || $("audit").hidden) return;
  const sig = `${state.auditVersion}|${[...state.names].join()}`; // names may come after the records
  if (sig === state.auditSig) return;
  state.auditSig = sig;
  $("audit-records").tBodies[0].replaceChildren(...state.audit.map(auditRow));
  $("no-audit").hidden = state.audit.length > 0;
}

function auditRow(record) {
  const name = state.names.get(record.actor);
  const from = record.source || record.origin || record.channel || "";
  return h(
    "tr",
    { dataset: { auditId: record.id, allowed: String(Boolean(record.allowed)) } },
    h("td", {}, h("time", { datetime: record.at }, record.at ? new Date(record.at).toLocaleString() : "")),
    h(
      "th",
      { scope: "row" },
      h("span", { class: "audit-actor" }, name ? `${name} (${record.actor})` : record.actor || "—"),
      record.actor_role ? [" ", h("span", { class: "badge" }, record.actor_role)] : null,
    ),
    h("td", { class: "audit-action" }, record.action || ""),
    h("td", { class: "audit-target" }, record.target || "—"),
    h("td", { class: record.allowed ? "audit-result allowed" : "audit-result refused" }, record.allowed ? "allowed" : "refused"),
    h("td", { class: "audit-reason" }, record.reason || ""),
    h("td", { class: "audit-from" }, from || "—", record.path ? h("span", { class: "note audit-path" }, ` ${record.path}`) : null),
  );
}

// Countdowns and "since" clocks, once a second, without re-rendering anything else.
function tick() {
  for (const el of document.querySelectorAll("[data-since]")) el.textContent = since(el.dataset.since);
  for (const el of document.querySelectorAll("[data-until]")) el.textContent = clock((Date.parse(el.dataset.until) - Date.now()) / 1000);
  if (state.me) renderWrapUp();
}

// -- start -------------------------------------------------------------------------------------
function start() {
  $("password-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const email = $("email").value.trim();
    const password = $("password").value;
    if (email && password) passwordLogin(email, password);
  });
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) login(token, "token");
  });
  $("use-token").addEventListener("click", () => {
    setLoginError("");
    showLoginForm("token");
  });
  $("use-password").addEventListener("click", () => {
    setLoginError("");
    showLoginForm("password");
  });
  $("change-password-form").addEventListener("submit", (event) => {
    event.preventDefault();
    changePassword();
  });
  $("logout").addEventListener("click", () => logout());
  $("availability").addEventListener("change", (event) => setAvailability(event.target.value));
  $("voicemail-refresh").addEventListener("click", () => loadVoicemails());
  $("recent-refresh").addEventListener("click", () => loadRecent());
  $("audit-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    loadAudit();
  });
  $("audit-refused").addEventListener("change", () => loadAudit());
  $("audit-refresh").addEventListener("click", () => loadAudit());
  setInterval(tick, 1000);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    showLoginForm("token");
    login(saved, "token");
    document.body.dataset.ready = "true";
  } else {
    // Ready once it is known whether this browser is still logged in.
    resumeSession().finally(() => {
      document.body.dataset.ready = "true";
    });
  }
}

start();
