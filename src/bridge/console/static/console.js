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

const VIA = { apps: "in the app", ip_phone: "on desk phone", phone_number: "on their phone" };
const ENDED = {
  caller_hangup: "Caller hung up",
  timeout: "Nobody answered in time",
  rejected: "You declined the call",
  layer_moved_on: "Moved on to the next layer",
  callee_hangup: "The other side hung up",
  media_failed: "The call's audio could not be set up",
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
};

const VOICEMAIL_REFRESH_MS = 30000;
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
      for (const agent of frame.agents) {
        state.agents.set(agent.user_id, agent);
        state.names.set(agent.user_id, agent.name);
      }
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

function renderVoicemails() {
  const list = $("voicemails");
  list.replaceChildren(...state.voicemails.map(voicemailItem));
  $("no-voicemails").hidden = state.voicemails.length > 0;
}

function voicemailItem(message) {
  const forWhom = message.user_id
    ? `for ${userName(message.user_id)}`
    : message.group_id ? `for ring group ${message.group_id}` : "";
  const when = new Date(message.recorded_at).toLocaleString();
  const player = h("div", { class: "player" });
  const play = h("button", { type: "button", dataset: { action: "play" } }, "Play");
  play.addEventListener("click", () => playVoicemail(message, player, play));
  const remove = h("button", { type: "button", dataset: { action: "delete" } }, "Delete");
  remove.addEventListener("click", () => deleteVoicemail(message, remove));
  return h(
    "li",
    { class: "voicemail", dataset: { voicemailId: message.id } },
    h("span", { class: "vm-caller" }, message.caller || "Unknown caller"),
    " ",
    h("span", { class: "vm-line" }, message.line ? `on ${lineLabel(message.line)}` : ""),
    " ",
    h("span", { class: "vm-for" }, forWhom),
    h(
      "p",
      { class: "note" },
      `${when} · ${clock(message.duration_seconds)} · ${MESSAGE_ENDED[message.ended_by] || ""}`,
    ),
    h("div", { class: "buttons", role: "group", "aria-label": "Message" }, play, remove),
    player,
  );
}

async function playVoicemail(message, player, button) {
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
    const audio = h("audio", { controls: "", src: url });
    player.replaceChildren(audio);
    audio.play().catch(() => {}); // a page without a user gesture may not autoplay
  } finally {
    button.disabled = false;
  }
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
