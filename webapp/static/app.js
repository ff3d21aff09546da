/* Beacon demo page.
 *
 * Plain JavaScript, no build step. It speaks exactly the contract in docs/PROTOCOL.md:
 * REST with `Authorization: Bearer <jwt>`, one Socket.IO connection with `auth: {token}`,
 * and Web Push through the service worker in /sw.js. docs/FRONTEND_GUIDE.md explains each
 * piece; this file is the worked example.
 */
(() => {
  "use strict";

  const SESSION_KEY = "beacon.session";
  const TOAST_MS = 8000;
  const PEOPLE_SHOWN = 12;
  const MESSAGES_PAGE = 50;
  const SUBSCRIBE_TIMEOUT_MS = 20000;
  const SNOOZE_MINUTES = 60;
  const LEVEL_LABELS = { all: "All", mentions: "Mentions", none: "Nothing" };
  const EMAIL_LEVEL_LABELS = { all: "All", mentions: "Mentions", none: "Never" };
  const IDLE_AFTER_MS = 2 * 60 * 1000; // no input for this long (or the page hidden): idle
  const PRESENCE_REFRESH_MS = 60 * 1000; // while in use, "still active" at most this often
  const PRESENCE_RETRY_MS = 5000; // after a set_presence that failed
  const TYPING_SEND_MS = 2500; // while the user types, `typing` at most this often (the server allows one per 2 s)
  const TYPING_EXPIRES_S = 6; // how long "is typing" stays without a repeat, when the event does not say
  const SYNC_AFTER_HIDDEN_MS = 60 * 1000; // hidden longer than this: catch up when shown again
  const GAP_PAGE = 100; // messages per page when filling a gap after a sync…
  const GAP_PAGES = 5; // …and how many pages before reloading the topic instead
  const RECEIPTS_LIMIT = 100;
  const DEVICE_ICONS = {
    browser: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 4h16a2 2 0 0 1 2 2v12a2 2 0 0 1-2 2H4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2Zm0 5v9h16V9H4Z"/></svg>',
    phone: '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M7 1h10a2 2 0 0 1 2 2v18a2 2 0 0 1-2 2H7a2 2 0 0 1-2-2V3a2 2 0 0 1 2-2Zm0 4v14h10V5H7Zm5 15.1a1 1 0 1 0 0 2 1 1 0 0 0 0-2Z"/></svg>',
  };
  const DEVICE_KINDS = { fcm: "Android (FCM)", apns: "iPhone (APNs)" };
  const CHANNEL_NAMES = { webpush: "Browser", ...DEVICE_KINDS }; // a push delivery's `channel`
  const DECISIONS_PAGE = 200; // the server keeps at most 200 decisions per user: one page
  const DECISIONS_PAGES = 3; // …and never more than this many pages, whatever it answers
  const TEST_PUSH_GIVE_UP_MS = 60 * 1000; // after a 202: stop waiting for test_push_result
  const BELL_OFF = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M20 18.69 7.84 6.14 5.27 3.49 4 4.76l2.8 2.8v.01c-.52.99-.8 2.16-.8 3.42v5l-2 2v1h13.73l2 2L21 19.72l-1-1.03zM12 22c1.11 0 2-.89 2-2h-4c0 1.11.89 2 2 2zm6-7.32V11c0-3.08-1.64-5.64-4.5-6.32V4c0-.83-.67-1.5-1.5-1.5s-1.5.67-1.5 1.5v.68c-.15.03-.29.08-.42.12-.1.03-.2.07-.3.11h-.01c-.01 0-.01 0-.02.01-.23.09-.46.2-.68.31 0 0-.01 0-.01.01L18 14.68z"/></svg>';

  const $ = (selector) => document.querySelector(selector);
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  };

  const state = {
    devLogin: false,
    devUsers: [],
    devUsersTruncated: false,
    token: null,
    username: null,
    me: null, // {user_id, username, display_name}
    socket: null,
    topicChanges: 0, // topic_added/topic_removed seen, so a list fetched meanwhile does not undo them
    topics: new Map(), // topic_id -> {topic_id, topic_name, room_id, room_name, unread_count, last_read_message_id}
    people: new Map(), // user_id -> {user_id, username, display_name, is_online, last_seen_at}
    showAllPeople: false,
    current: null, // topic_id of the open topic
    messages: [], // the open topic's messages, oldest first
    nextBefore: null,
    readers: new Map(), // topic_id -> Map(user_id -> {last_read_message_id, version}): "Seen by"
    receiptsEnabled: null, // false: no read receipts for this user (server setting or their choice); null: not known
    receiptsEpoch: 0, // bumped when sharing is switched, so a receipts answer from before is dropped
    names: new Map(), // user_id -> display name, for readers not in state.people
    markTimer: null,
    readHold: null, // topic_id the user marked unread: not read automatically while it stays open
    cursor: null, // the `cursor` of the last sync: the next one's `since`
    connects: 0, // "connect" events of this socket: after the first, each is a reconnection
    syncing: null, // the sync under way (a Promise), and whether another is due after it
    syncAgain: false,
    hiddenAt: null, // when the page was hidden (Date.now()), null while visible
    typing: new Map(), // user_id -> {name, timer}: who is typing in the open topic
    typingSent: null, // {topicId, at} of the last `typing` this page sent
    typingUnsupported: false, // the server answered unknown_event (an older server)
    pushSupported: "serviceWorker" in navigator && "PushManager" in window && "Notification" in window,
    registration: null,
    prefs: null, // GET /api/notifications/preferences, kept current by preferences_updated
    snoozeTimer: null,
    devicesLoads: 0, // counts GET /api/notifications/subscriptions calls, so a stale answer is dropped
    attention: "active", // this page: "active" (in use) or "idle" (hidden, or no input for IDLE_AFTER_MS)
    lastInput: Date.now(),
    pointerAt: null, // "x,y" of the last pointermove
    idleTimer: null,
    presenceSent: null, // {state, at, failed} of the last set_presence on this connection
    presenceUnsupported: false, // the server answered unknown_event (an older server)
    emailsAvailable: false, // GET /api/demo/emails answered (development mailbox)
    emailsLoads: 0,
    ownDeviceId: null, // this browser's push subscription id (POST /api/notifications/subscribe)
    decisions: new Map(), // topic_id -> {byMessage: Map(message_id -> decision), upTo, loading, error}
    whyOpen: new Set(), // ids of the open topic's messages whose "why (not) notified" is shown
    quietFocus: false, // focus moved back by a re-render, not by the user (see renderMessages)
    testPush: { pending: null, results: new Map(), timer: null }, // "Send a test notification"
  };

  // ---------------------------------------------------------------- formatting helpers

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
  const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
  const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

  /** "just now", "5 minutes ago", … up to a week; the date after that. */
  function ago(iso) {
    const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
    if (seconds < 45) return "just now";
    const steps = [[60, "second"], [3600, "minute"], [86400, "hour"], [604800, "day"]];
    for (let i = 1; i < steps.length; i += 1) {
      if (seconds < steps[i][0]) return relative.format(-Math.round(seconds / steps[i - 1][0]), steps[i][1]);
    }
    return dayFormat.format(new Date(iso));
  }

  function lastSeen(iso) {
    return iso ? `Last seen ${ago(iso)}` : "Offline";
  }

  /** A person with `status` ("active" | "idle" | "offline"); from is_online if the server sent none. */
  function withStatus(person) {
    return { ...person, status: person.status || (person.is_online ? "active" : "offline") };
  }

  const STATUS_TEXT = { active: "Online", idle: "Idle" };

  /** "30 seconds", "1 minute", "10 minutes", "1 hour" … */
  function duration(seconds) {
    const unit = [[3600, "hour"], [60, "minute"], [1, "second"]].find(([size]) => seconds % size === 0 && seconds >= size);
    if (!unit) return "immediately";
    const count = seconds / unit[0];
    return `${count} ${unit[1]}${count === 1 ? "" : "s"}`;
  }

  function clock(iso) {
    const date = new Date(iso);
    const today = date.toDateString() === new Date().toDateString();
    return today ? timeFormat.format(date) : `${dayFormat.format(date)}, ${timeFormat.format(date)}`;
  }

  function displayName(user) {
    return (user && (user.display_name || user.name || user.username)) || "Someone";
  }

  function initials(name) {
    const parts = String(name).trim().split(/[\s._-]+/).filter(Boolean);
    return ((parts[0] || "?")[0] + (parts.length > 1 ? parts[parts.length - 1][0] : "")).toUpperCase();
  }

  function avatar(id, name, small) {
    let hash = 0;
    for (const ch of String(id)) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
    const node = el("span", `avatar av-${hash % 8}${small ? " small" : ""}`, initials(name));
    node.setAttribute("aria-hidden", "true");
    return node;
  }

  // ---------------------------------------------------------------- session and REST

  function saveSession() {
    const value = JSON.stringify({ token: state.token, username: state.username });
    sessionStorage.setItem(SESSION_KEY, value); // this tab
    localStorage.setItem(SESSION_KEY, value); // default for new tabs (e.g. a notification click)
  }

  function loadSession() {
    for (const store of [sessionStorage, localStorage]) {
      try {
        const value = JSON.parse(store.getItem(SESSION_KEY) || "null");
        if (value && value.token) return value;
      } catch (_) { /* ignore a damaged entry */ }
    }
    return null;
  }

  function clearSession() {
    sessionStorage.removeItem(SESSION_KEY);
    localStorage.removeItem(SESSION_KEY);
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.error;
      this.body = body || {};
    }
  }

  async function api(method, path, body, { auth = true, retry = true } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (auth && state.token) headers.Authorization = `Bearer ${state.token}`;
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (response.status === 401 && auth && retry && (await refreshToken())) {
      return api(method, path, body, { auth, retry: false });
    }
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  /** A new token for the same user when development login is on; false otherwise. */
  async function refreshToken() {
    if (!state.devLogin || !state.username) return false;
    try {
      const data = await api("POST", "/api/dev/token", { username: state.username }, { auth: false });
      state.token = data.token;
      saveSession();
      return true;
    } catch (_) {
      return false;
    }
  }

  // ---------------------------------------------------------------- login view

  async function loadDevUsers(query) {
    try {
      const path = "/api/dev/users" + (query ? `?q=${encodeURIComponent(query)}` : "");
      const data = await api("GET", path, undefined, { auth: false });
      state.devLogin = true;
      state.devUsers = data.users;
      state.devUsersTruncated = Boolean(data.truncated);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;
      state.devLogin = false;
      state.devUsers = [];
    }
  }

  function renderLogin() {
    const dev = state.devLogin;
    $("#login-title").textContent = dev ? "Pick a development user" : "Sign in with a token";
    $("#login-intro").hidden = !dev;
    $("#token-intro").hidden = dev;
    $("#user-filter-label").hidden = !dev;
    $("#dev-users").hidden = !dev;
    const tokenLogin = $("#token-login");
    tokenLogin.open = !dev;
    tokenLogin.querySelector("summary").hidden = !dev;
    renderUserPicker();
  }

  function renderUserPicker() {
    const list = $("#dev-users");
    const filter = $("#user-filter").value.trim().toLowerCase();
    list.replaceChildren();
    const users = state.devUsers.filter((u) =>
      !filter || u.username.toLowerCase().includes(filter) || displayName(u).toLowerCase().includes(filter))
      .sort((a, b) => displayName(a).localeCompare(displayName(b)) || a.username.localeCompare(b.username));
    for (const user of users) {
      const item = el("li");
      const button = el("button", "user-choice");
      button.type = "button";
      button.dataset.username = user.username;
      const names = el("span", "names");
      names.append(el("span", "name", displayName(user)), el("span", "username", `@${user.username}`));
      button.append(avatar(user.user_id, displayName(user)), names);
      button.addEventListener("click", () => loginAs(user.username));
      item.append(button);
      list.append(item);
    }
    $("#dev-users-empty").hidden = !state.devLogin || users.length > 0 || Boolean(filter);
  }

  let filterTimer = null;
  function onFilterInput() {
    renderUserPicker();
    if (!state.devUsersTruncated) return;
    clearTimeout(filterTimer); // more users than the list holds: ask the server
    filterTimer = setTimeout(async () => {
      await loadDevUsers($("#user-filter").value.trim());
      renderUserPicker();
    }, 250);
  }

  function showLoginError(message) {
    const node = $("#login-error");
    node.textContent = message;
    node.hidden = !message;
  }

  async function loginAs(username) {
    showLoginError("");
    try {
      const data = await api("POST", "/api/dev/token", { username }, { auth: false });
      state.token = data.token;
      state.username = username;
      saveSession();
      await startApp();
    } catch (err) {
      showLoginError(`Could not sign in as ${username}: ${err.message}`);
    }
  }

  async function loginWithToken(event) {
    event.preventDefault();
    showLoginError("");
    state.token = $("#token-input").value.trim();
    state.username = null;
    try {
      await startApp();
      saveSession();
    } catch (err) {
      state.token = null;
      showLoginError(`That token was refused: ${err.message}`);
    }
  }

  function showLogin() {
    stopSocket();
    state.token = null;
    state.me = null;
    state.current = null;
    state.prefs = null;
    state.cursor = null; // the next user starts from a sync of their own
    state.readers = new Map();
    state.receiptsEnabled = null;
    state.readHold = null;
    state.ownDeviceId = null;
    state.decisions = new Map();
    state.whyOpen = new Set();
    resetTestPush();
    clearTyping();
    clearTimeout(state.snoozeTimer);
    renderTopicLevel();
    renderSnooze();
    closeDevices();
    closeDialog("#settings-dialog");
    closeDialog("#emails-dialog");
    renderSettings();
    state.emailsAvailable = false;
    $("#app-view").hidden = true;
    $("#me").hidden = true;
    $("#push-button").hidden = true;
    $("#devices-button").hidden = true;
    $("#emails-button").hidden = true;
    $("#token-status").hidden = true;
    $("#login-view").hidden = false;
    setConnection("idle", "Not connected");
    document.title = "Beacon";
    renderLogin();
  }

  // ---------------------------------------------------------------- the app

  async function startApp() {
    const me = await api("GET", "/api/users/me");
    state.username = me.username;
    state.me = me;
    state.people.set(me.user_id, withStatus({ ...me, is_online: true }));
    renderMe();
    $("#devices-button").hidden = false;
    $("#login-view").hidden = true;
    $("#app-view").hidden = false;
    await Promise.all([loadTopics(), loadPeople(), refreshPreferences()]);
    connectSocket();
    setupPush();
    probeEmails();
    const params = new URLSearchParams(location.search);
    const wanted = params.get("topic");
    if (wanted && state.topics.has(wanted)) openTopic(wanted);
  }

  function renderMe() {
    const box = $("#me");
    box.hidden = false;
    box.querySelector(".avatar").replaceWith(avatar(state.me.user_id, displayName(state.me), true));
    box.querySelector(".me-name").textContent = displayName(state.me);
    box.querySelector(".me-username").textContent = `@${state.me.username}`;
  }

  async function loadTopics() {
    // A topic_added or topic_removed that arrives while the list is fetched may be newer than
    // the answer: fetch again rather than let the answer undo it.
    for (let attempt = 0; ; attempt += 1) {
      const changes = state.topicChanges;
      const data = await api("GET", "/api/topics");
      if (changes !== state.topicChanges && attempt < 3) continue;
      state.topics = new Map(data.topics.map((t) => [t.topic_id, topicRow(t)]));
      renderTopics();
      return;
    }
  }

  async function loadPeople() {
    const online = await api("GET", "/api/users/online");
    if (state.devLogin) {
      await loadDevUsers("");
      for (const user of state.devUsers) state.people.set(user.user_id, { ...user });
    }
    // Redis is the live truth for who is online right now (and active or idle).
    const onlineIds = new Set(online.users.map((u) => u.user_id));
    for (const person of state.people.values()) {
      if (onlineIds.has(person.user_id)) continue;
      person.is_online = false;
      person.status = "offline";
    }
    for (const user of online.users) state.people.set(user.user_id, withStatus({ ...user, is_online: true }));
    if (state.me) {
      const me = state.people.get(state.me.user_id);
      me.is_online = true;
      if (me.status === "offline") me.status = "active";
    }
    renderPeople();
  }

  /** Is a change with ``version`` as new as the state held (``held``)? Every change of a
   * member's unread count or read marker gets a higher version; events, acks and lists can
   * arrive out of order, so the highest wins. Without versions (an older server): yes. */
  function isCurrent(version, held) {
    return version === undefined || version === null || held === undefined || held === null || version >= held;
  }

  /** A topic row (GET /api/topics, sync, topic_added) to hold: the count and marker the page
   * already has win when they are newer (an event that overtook the answer). */
  function topicRow(row) {
    const clean = { ...row };
    for (const key of ["messages", "has_more", "next_before", "receipts"]) delete clean[key]; // sync's extras
    const held = state.topics.get(row.topic_id);
    if (held && !isCurrent(clean.version, held.version)) {
      return { ...clean, unread_count: held.unread_count, last_read_message_id: held.last_read_message_id, version: held.version };
    }
    return clean;
  }

  /** This user's own count and marker in a topic (unread_update, their messages_read, the mark
   * acks): applied unless older than what the page holds. Returns whether it was applied. */
  function applyOwnState(update) {
    const topic = state.topics.get(update.topic_id);
    if (!topic || !isCurrent(update.version, topic.version)) return false;
    if (update.unread_count !== undefined) topic.unread_count = update.unread_count;
    if (update.last_read_message_id !== undefined) topic.last_read_message_id = update.last_read_message_id;
    if (update.version !== undefined) topic.version = update.version;
    return true;
  }

  function renderTopics() {
    const list = $("#topic-list");
    list.replaceChildren();
    const rooms = new Map();
    const topics = [...state.topics.values()].sort((a, b) =>
      a.room_name.localeCompare(b.room_name) || a.topic_name.localeCompare(b.topic_name));
    for (const topic of topics) {
      if (!rooms.has(topic.room_id)) {
        const group = el("div", "room");
        group.append(el("div", "room-name", topic.room_name));
        rooms.set(topic.room_id, group);
        list.append(group);
      }
      const button = el("button", "topic");
      button.type = "button";
      button.dataset.topicId = topic.topic_id;
      button.setAttribute("aria-current", String(topic.topic_id === state.current));
      button.append(el("span", "topic-name", topic.topic_name));
      if (effectiveLevel(topic) === "none") {
        button.classList.add("is-muted");
        const mark = el("span", "muted-mark");
        mark.innerHTML = BELL_OFF;
        mark.title = "Notifications off";
        mark.setAttribute("role", "img");
        mark.setAttribute("aria-label", "notifications off");
        button.append(mark);
      }
      if (topic.unread_count > 0) {
        button.classList.add("has-unread");
        const badge = el("span", "badge", topic.unread_count > 99 ? "99+" : String(topic.unread_count));
        badge.setAttribute("aria-label", `${topic.unread_count} unread`);
        button.append(badge);
      }
      button.addEventListener("click", () => openTopic(topic.topic_id));
      rooms.get(topic.room_id).append(button);
    }
    $("#topics-empty").hidden = state.topics.size > 0;
    const total = topics.reduce((sum, t) => sum + t.unread_count, 0);
    document.title = total > 0 ? `(${total}) Beacon` : "Beacon";
  }

  function renderPeople() {
    const rank = { active: 0, idle: 1, offline: 2 };
    const people = [...state.people.values()].sort((a, b) => {
      if (state.me && (a.user_id === state.me.user_id) !== (b.user_id === state.me.user_id)) {
        return a.user_id === state.me.user_id ? -1 : 1;
      }
      if (a.status !== b.status) return rank[a.status] - rank[b.status];
      const seen = (b.last_seen_at || "").localeCompare(a.last_seen_at || "");
      return seen || displayName(a).localeCompare(displayName(b));
    });
    const shown = state.showAllPeople ? people : people.slice(0, PEOPLE_SHOWN);
    const list = $("#people-list");
    list.replaceChildren();
    for (const person of shown) {
      const item = el("li", "person");
      item.dataset.userId = person.user_id;
      item.dataset.username = person.username;
      item.dataset.online = String(Boolean(person.is_online));
      item.dataset.status = person.status; // active: green dot; idle: hollow amber; offline: grey
      const face = avatar(person.user_id, displayName(person));
      const dot = el("span", "status-dot");
      face.append(dot);
      const names = el("span", "names");
      const name = el("span", "name", displayName(person));
      if (state.me && person.user_id === state.me.user_id) name.append(" ", el("span", "you", "(you)"));
      const seen = el("span", "seen", STATUS_TEXT[person.status] || lastSeen(person.last_seen_at));
      if (person.status === "idle") seen.title = "Online, but not using Beacon right now";
      else if (person.last_seen_at) seen.title = new Date(person.last_seen_at).toLocaleString();
      names.append(name, seen);
      item.append(face, names);
      item.setAttribute("aria-label", `${displayName(person)}: ${seen.textContent}`);
      list.append(item);
    }
    const more = $("#people-more");
    more.hidden = people.length <= PEOPLE_SHOWN;
    more.textContent = state.showAllPeople ? "Show fewer" : `Show all ${people.length}`;
    const onlineCount = people.filter((p) => p.is_online).length;
    $("#online-count").textContent = `${onlineCount} online`;
  }

  // ---------------------------------------------------------------- Socket.IO

  function setConnection(kind, label) {
    const box = $("#connection");
    box.dataset.state = kind;
    box.querySelector(".label").textContent = label;
  }

  function stopSocket() {
    state.presenceSent = null;
    if (state.socket) {
      state.socket.removeAllListeners();
      state.socket.disconnect();
      state.socket = null;
    }
  }

  function connectSocket() {
    stopSocket();
    setConnection("connecting", "Connecting…");
    // The auth callback runs on every (re)connection, so a refreshed token is picked up.
    const socket = io({ auth: (cb) => cb({ token: state.token }) });
    state.socket = socket;
    state.connects = 0;

    socket.on("connect", onConnect);
    socket.on("disconnect", (reason) => {
      if (reason === "io client disconnect") return;
      setConnection("reconnecting", "Reconnecting…");
    });
    socket.on("connect_error", async (err) => {
      const code = err.data && err.data.error;
      if (socket.active) { // a transport problem: the client retries by itself
        setConnection("reconnecting", "Reconnecting…");
        return;
      }
      // Refused by the server (bad or expired token): no automatic retry.
      if (["token_expired", "invalid_token", "missing_token"].includes(code) && (await refreshToken())) {
        socket.connect();
        return;
      }
      setConnection("error", "Refused");
      toast({ kind: "error", title: "Connection refused", body: err.message });
      if (code === "unknown_user" || code === "invalid_token" || code === "token_expired") {
        clearSession();
        showLogin();
      }
    });

    socket.on("user_status_change", onUserStatus);
    socket.on("global_message_alert", onGlobalAlert);
    socket.on("new_message", onNewMessage);
    socket.on("unread_update", onUnreadUpdate);
    socket.on("messages_read", onMessagesRead);
    socket.on("preferences_updated", onPreferences);
    socket.on("topic_added", onTopicAdded);
    socket.on("topic_removed", onTopicRemoved);
    socket.on("user_typing", onUserTyping);
    socket.on("test_push_result", onTestPushResult);
    socket.on("token_expiring", onTokenExpiring);
    socket.on("token_expired", () => onTokenExpired(socket));
    socket.on("access_revoked", (payload) => {
      toast({ kind: "error", title: "Signed out", body: payload.message });
      clearSession();
      showLogin();
    });
    socket.on("error", (payload) => toast({ kind: "error", title: "Server error", body: payload.message || payload.code }));
  }

  function showTokenStatus(text) {
    const node = $("#token-status");
    node.textContent = text;
    node.hidden = false;
    console.info(`[beacon] ${text}`);
  }

  /** The server says the connection's token expires soon: hand it a new one for the same user. */
  async function onTokenExpiring({ expires_at: expiresAt }) {
    if (!(await refreshToken())) { // a pasted token: only its owner's backend can renew it
      showTokenStatus(`Session ends at ${clock(expiresAt)}`);
      return;
    }
    try {
      const ack = await emit("refresh_token", { token: state.token });
      showTokenStatus(`Session refreshed at ${clock(new Date().toISOString())}, valid until ${clock(ack.expires_at)}`);
    } catch (err) {
      showTokenStatus(`Session refresh refused (${err.code || err.message})`);
    }
  }

  /** No refresh in time: the server closes the connection; come back with a fresh token. */
  async function onTokenExpired(socket) {
    showTokenStatus("Session expired");
    if (!(await refreshToken())) {
      clearSession();
      showLogin();
      return;
    }
    if (state.socket !== socket) return;
    if (socket.connected) socket.once("disconnect", () => socket.connect());
    else socket.connect();
  }

  /** Every (re)connection: rooms are per connection, so join the open topic again, then catch
   * up with one `sync` (on the first connection too: it closes the gap between the page's REST
   * loads and the socket, and gives the cursor the next sync starts from). */
  async function onConnect() {
    setConnection("connected", "Live");
    state.connects += 1;
    const reconnected = state.connects > 1;
    // A new connection starts active on the server: say so if this page is idle.
    state.presenceSent = { state: "active", at: Date.now() };
    state.presenceUnsupported = false;
    sendPresence();
    try {
      // Join first, then take the snapshot: whatever is committed after it arrives live.
      if (state.current) await joinTopic(state.current);
      // sync's `users` are the people who share a topic with this user; the panel lists
      // everyone online, so a reconnection asks for that list too.
      await Promise.all([catchUp(), reconnected ? loadPeople() : null]);
      if (state.current && mayAutoRead()) await markRead().catch((err) => console.warn("mark_as_read failed:", err.message));
    } catch (err) {
      toast({ kind: "error", title: "Could not refresh", body: err.message });
    }
  }

  // ---------------------------------------------------------------- catching up (sync)

  /** Catch up with what this page missed: one `sync` at a time; asked for during one, another
   * runs right after it (its snapshot may predate what prompted the second). */
  function catchUp() {
    if (state.syncing) {
      state.syncAgain = true;
      return state.syncing;
    }
    state.syncing = (async () => {
      try {
        do {
          state.syncAgain = false;
          await syncOnce();
        } while (state.syncAgain && state.socket && state.socket.connected);
      } finally {
        state.syncing = null;
      }
    })();
    return state.syncing;
  }

  /** The newest message id this page has seen, as `since` for a first sync: then the answer
   * brings only what is newer (typically the unread messages), not every topic's history. */
  function knownNewest() {
    const ids = [...state.topics.values()].map((t) => t.last_read_message_id || 0);
    if (state.messages.length) ids.push(state.messages[state.messages.length - 1].id);
    const newest = Math.max(0, ...ids);
    return newest > 0 ? newest : null;
  }

  async function syncOnce() {
    const since = state.cursor !== null ? state.cursor : knownNewest();
    const changes = state.topicChanges;
    let answer;
    try {
      answer = await emit("sync", since === null ? {} : { since });
    } catch (err) {
      if (!state.socket || !state.socket.connected) return; // the next "connect" syncs
      // Refused (rate_limited; unknown_event from an older server) or no answer: reload what a
      // fresh page loads. The cursor stays: the next sync starts from it.
      console.warn(`sync failed (${err.code || err.message}): reloading`);
      await Promise.all([loadTopics(), refreshPreferences(), state.current ? loadMessages() : null]);
      if (state.current) await loadReceipts(state.current);
      return;
    }
    await applySync(answer);
    // A topic_added or topic_removed during the sync may be newer than its snapshot.
    if (changes !== state.topicChanges) await loadTopics();
  }

  /** Make the page what a fresh load would show: the topic list (a topic missing from it was
   * removed), counts and markers (the highest version wins), receipts, people, preferences, and
   * the open topic's messages merged by id. */
  async function applySync(answer) {
    if (answer.cursor !== null && answer.cursor !== undefined) state.cursor = answer.cursor;
    if (answer.preferences) onPreferences(answer.preferences);
    const rows = new Map(answer.topics.map((t) => [t.topic_id, topicRow(t)]));
    const open = state.current;
    const gone = open && !rows.has(open) ? state.topics.get(open) : null;
    state.topics = rows;
    if (open && !rows.has(open)) {
      closeTopic();
      toast({ title: "Topic closed", body: gone ? `${gone.topic_name} is no longer one of your topics.` : "It is no longer one of your topics." });
    }
    // receipts_enabled: the server's setting and this user's share_read_receipts together.
    state.receiptsEnabled = answer.receipts_enabled !== false;
    if (!state.receiptsEnabled) state.readers = new Map();
    else for (const t of answer.topics) replaceReceipts(t.topic_id, t.receipts || []);
    renderSettings(); // receipts off on the server: the switch says so
    for (const user of answer.users || []) mergePerson(user);
    renderTopics();
    renderPeople();
    const entry = answer.topics.find((t) => t.topic_id === state.current);
    if (entry) await mergeSynced(entry);
    else renderMessages({});
  }

  /** The open topic after a sync: its new messages (id > since, newest first) merged by id. With
   * `has_more`, the answer left out messages between what the page showed and its oldest one:
   * page them in (GET …/messages?before=), or, past GAP_PAGES pages, reload the topic as a fresh
   * page shows it. */
  async function mergeSynced(entry) {
    const topicId = entry.topic_id;
    const shownNewest = state.messages.length ? state.messages[state.messages.length - 1].id : null;
    addMessages(entry.messages);
    // Nothing shown before: the answer's messages are the newest, and older ones are left to
    // "Load earlier messages". Otherwise the hole is between the two.
    if (entry.has_more && shownNewest === null) state.nextBefore = state.messages.length ? state.messages[0].id : null;
    let closed = !entry.has_more || shownNewest === null || entry.next_before <= shownNewest + 1;
    let before = entry.next_before;
    for (let pages = 0; !closed && pages < GAP_PAGES; pages += 1) {
      const page = await api("GET", `/api/topics/${encodeURIComponent(topicId)}/messages?limit=${GAP_PAGE}&before=${before}`);
      if (state.current !== topicId) return;
      addMessages(page.messages);
      closed = page.next_before === null || page.messages.some((m) => m.id <= shownNewest);
      before = page.next_before;
    }
    if (state.current !== topicId) return;
    if (!closed) { // a long gap: start again from the newest page
      state.messages = [];
      state.nextBefore = null;
      await loadMessages();
      return;
    }
    renderMessages({});
  }

  /** Merge messages into the open topic by id (one can arrive both in an answer and live). */
  function addMessages(list) {
    const known = new Set(state.messages.map((m) => m.id));
    const fresh = list.filter((m) => m.topic_id === state.current && !known.has(m.id));
    if (!fresh.length) return;
    state.messages = [...state.messages, ...fresh].sort((a, b) => a.id - b.id);
    // "Load earlier messages" continues below the oldest shown (null: the whole topic is shown).
    if (state.nextBefore !== null) state.nextBefore = state.messages[0].id;
  }

  function emit(event, payload) {
    return new Promise((resolve, reject) => {
      if (!state.socket || !state.socket.connected) {
        reject(new Error("not connected"));
        return;
      }
      state.socket.timeout(10000).emit(event, payload, (err, ack) => {
        if (err) reject(new Error(`${event}: no answer from the server`));
        else if (!ack || !ack.ok) reject(Object.assign(new Error((ack && ack.message) || `${event} failed`), { code: ack && ack.error }));
        else resolve(ack);
      });
    });
  }

  /** A user_status_change (or a user of a sync answer) over what the page knows of them. */
  function mergePerson(payload) {
    const known = state.people.get(payload.user_id) || {};
    const person = withStatus({ ...known, ...payload, status: payload.status });
    if (state.me && payload.user_id === state.me.user_id) {
      person.is_online = true; // this page is connected, whatever an old event says
      if (person.status === "offline") person.status = state.attention;
    }
    state.people.set(payload.user_id, person);
  }

  function onUserStatus(payload) {
    mergePerson(payload);
    renderPeople();
  }

  function onGlobalAlert(alert) {
    if (state.me && alert.sender.id === state.me.user_id) return; // your own message
    if (alert.topic_id === state.current && document.visibilityState === "visible") return; // on screen already
    const topic = state.topics.get(alert.topic_id);
    const where = topic ? `${topic.room_name} › ${topic.topic_name}` : alert.topic_name;
    toast({
      title: alert.sender.name,
      where,
      body: alert.preview,
      avatarOf: { id: alert.sender.id, name: alert.sender.name },
      action: topic && alert.topic_id !== state.current ? { label: "Open", run: () => openTopic(alert.topic_id, alert.message_id) } : null,
      data: { topicId: alert.topic_id, messageId: String(alert.message_id) },
    });
  }

  function onNewMessage(message) {
    if (message.topic_id !== state.current) return;
    stopTyping(message.sender.id); // they sent what they were typing
    if (state.messages.some((m) => m.id === message.id)) return;
    state.messages.push(message);
    renderMessages({ scroll: true });
    scheduleMarkRead();
  }

  function onUnreadUpdate(update) {
    const topic = state.topics.get(update.topic_id);
    if (!topic) {
      loadTopics().catch(() => {}); // added to a new topic since the page loaded
      return;
    }
    if (!applyOwnState(update)) return; // older than what the page holds
    renderTopics();
    if (update.topic_id === state.current && update.unread_count > 0) scheduleMarkRead();
  }

  /** The integration API made this user a member: the row is as GET /api/topics lists it. */
  function onTopicAdded(row) {
    state.topicChanges += 1;
    state.topics.set(row.topic_id, topicRow(row));
    renderTopics();
    // Sent only for a new membership, which a list fetched meanwhile may already show.
    toast({
      title: `Added to ${row.topic_name}`,
      where: `#${row.room_name}`,
      action: { label: "Open", run: () => openTopic(row.topic_id) },
    });
  }

  /** Removed from the topic, or the topic was deleted: it leaves the list (and the screen). */
  function onTopicRemoved({ topic_id: topicId, reason }) {
    state.topicChanges += 1;
    const topic = state.topics.get(topicId);
    if (!topic) return;
    state.topics.delete(topicId);
    if (state.current === topicId) closeTopic();
    renderTopics();
    toast({
      title: reason === "deleted" ? `${topic.topic_name} was deleted` : `Removed from ${topic.topic_name}`,
      where: `#${topic.room_name}`,
    });
  }

  function closeTopic() {
    state.current = null;
    state.messages = [];
    state.whyOpen = new Set();
    state.nextBefore = null;
    state.readHold = null;
    clearTyping();
    const url = new URL(location.href);
    url.searchParams.delete("room");
    url.searchParams.delete("topic");
    history.replaceState(null, "", url);
    $("#topic-title").textContent = "Choose a topic";
    $("#topic-subtitle").textContent = "Messages appear here as they are sent.";
    $("#composer").hidden = true;
    renderMessages({});
    renderTopicLevel();
  }

  function onMessagesRead(receipt) {
    if (state.me && receipt.user_id === state.me.user_id) {
      // This user read it (or marked it unread), maybe on another tab or device.
      if (!applyOwnState({ unread_count: 0, ...receipt })) return;
      // A count above 0 is a mark_as_unread: if the topic is open here too, do not read it
      // back at once; the user's next interaction with it does (see markUnread).
      if (receipt.unread_count > 0 && receipt.topic_id === state.current) state.readHold = receipt.topic_id;
      renderTopics();
      if (receipt.topic_id === state.current) renderMessages({});
      return;
    }
    if (state.receiptsEnabled === false) return; // receipts are off for this user: none shown
    if (applyReceipt(receipt.topic_id, receipt) && receipt.topic_id === state.current) renderMessages({});
  }

  // ---------------------------------------------------------------- read receipts

  /** Another member's marker, unless the page holds a newer one for them. */
  function applyReceipt(topicId, receipt) {
    if (!state.readers.has(topicId)) state.readers.set(topicId, new Map());
    const readers = state.readers.get(topicId);
    const held = readers.get(receipt.user_id);
    if (held && !isCurrent(receipt.version, held.version)) return false;
    readers.set(receipt.user_id, { last_read_message_id: receipt.last_read_message_id, version: receipt.version });
    return true;
  }

  /** A topic's receipts as the server lists them (GET …/receipts, sync) replace the held ones;
   * a live event newer than the answer is kept. */
  function replaceReceipts(topicId, receipts) {
    const held = state.readers.get(topicId) || new Map();
    const next = new Map();
    for (const receipt of receipts) {
      const mine = held.get(receipt.user_id);
      next.set(receipt.user_id, mine && !isCurrent(receipt.version, mine.version)
        ? mine
        : { last_read_message_id: receipt.last_read_message_id, version: receipt.version });
    }
    state.readers.set(topicId, next);
  }

  /** "Seen by" for a topic as the server has it now; messages_read keeps it live after. Never
   * rejects: without receipts the page still works. */
  async function loadReceipts(topicId) {
    if (state.receiptsEnabled === false) return; // off (sync or the preference said so)
    const epoch = state.receiptsEpoch;
    try {
      const data = await api("GET", `/api/topics/${encodeURIComponent(topicId)}/receipts?limit=${RECEIPTS_LIMIT}`);
      if (epoch !== state.receiptsEpoch) return; // sharing was switched meanwhile
      state.receiptsEnabled = data.enabled !== false;
      if (!state.receiptsEnabled) {
        state.readers = new Map();
      } else {
        for (const row of data.receipts) state.names.set(row.user_id, displayName(row));
        replaceReceipts(topicId, data.receipts);
      }
      if (topicId === state.current) renderMessages({});
      renderSettings();
    } catch (err) {
      console.warn("could not load read receipts:", err.message);
    }
  }

  /** share_read_receipts switched (here, or on another device: preferences_updated). Off: the
   * server sends this user no receipts and hides theirs, so show none at once. On: ask again. */
  function onSharingChanged(sharing) {
    state.receiptsEpoch += 1;
    state.readers = new Map();
    state.receiptsEnabled = sharing ? null : false;
    renderMessages({});
    if (sharing && state.current) loadReceipts(state.current);
  }

  // ---------------------------------------------------------------- mark as unread

  /** "Mark unread" on someone else's message: it and everything after it count as unread again.
   * While the topic stays open the page must not read it straight back (a new message, the page
   * becoming active again, the unread_update this causes, a reconnection would all mark it read):
   * `readHold` stops that until the user opens a topic or sends a message, the two things that
   * say "I am reading this now". Scrolling and pointer moves do not: they happen while glancing. */
  async function markUnread(message) {
    const topic = state.topics.get(message.topic_id);
    if (!topic) return;
    state.readHold = topic.topic_id; // before sending: the unread_update may come before the ack
    clearTimeout(state.markTimer);
    try {
      const ack = await emit("mark_as_unread", { topic_id: topic.topic_id, room_id: topic.room_id, message_id: message.id });
      applyOwnState(ack);
      renderTopics();
      if (topic.topic_id === state.current) renderMessages({});
    } catch (err) {
      if (state.readHold === topic.topic_id) state.readHold = null;
      toast({ kind: "error", title: "Could not mark as unread", where: topic.topic_name, body: err.message });
    }
  }

  // ---------------------------------------------------------------- why (not) notified

  /** The open topic's decisions (GET /api/notifications/decisions?topic_id=), kept per topic
   * until the user asks again (Refresh) or opens one for a message newer than the answer. */
  function loadDecisions(topicId) {
    const held = state.decisions.get(topicId);
    if (held && held.loading) return held.loading;
    const entry = { byMessage: held ? held.byMessage : new Map(), upTo: held ? held.upTo : 0, loading: null, error: null };
    state.decisions.set(topicId, entry);
    // Messages up to the newest one shown now are covered by this answer, decided or not.
    const upTo = topicId === state.current ? Math.max(0, ...state.messages.map((m) => m.id)) : 0;
    entry.loading = (async () => {
      try {
        const byMessage = new Map();
        let before = null;
        for (let pages = 0; pages < DECISIONS_PAGES; pages += 1) {
          const query = new URLSearchParams({ topic_id: topicId, limit: String(DECISIONS_PAGE) });
          if (before) query.set("before", String(before));
          const page = await api("GET", `/api/notifications/decisions?${query}`);
          for (const decision of page.decisions) byMessage.set(decision.message_id, decision);
          before = page.next_before;
          if (!before) break;
        }
        entry.byMessage = byMessage;
        entry.upTo = upTo;
      } catch (err) {
        entry.error = err;
      } finally {
        entry.loading = null;
      }
      if (state.decisions.get(topicId) === entry && topicId === state.current) renderMessages({});
    })();
    return entry.loading;
  }

  function toggleWhy(message) {
    if (state.whyOpen.has(message.id)) {
      state.whyOpen.delete(message.id);
    } else {
      state.whyOpen.add(message.id);
      const entry = state.decisions.get(message.topic_id);
      // Not asked yet, failed, or the message came after the answer: ask (again).
      if (!entry || entry.error || (!entry.byMessage.has(message.id) && message.id > entry.upTo)) {
        loadDecisions(message.topic_id);
      }
    }
    renderMessages({});
  }

  /** The panel under a message: the decision in plain words, each device's outcome, and when. */
  function renderWhy(message) {
    const box = el("section", "why");
    box.id = `why-${message.id}`;
    box.setAttribute("aria-label", "Why (not) notified");
    const entry = state.decisions.get(message.topic_id);
    const decision = entry && entry.byMessage.get(message.id);
    if (entry && entry.loading && !decision) {
      box.dataset.state = "loading";
      box.append(el("p", "why-summary", "Looking it up…"));
    } else if (entry && entry.error) {
      box.dataset.state = "error";
      box.append(el("p", "why-summary error-text", `Could not load why: ${entry.error.message}`));
    } else if (!decision) {
      box.dataset.state = "none";
      box.append(el("p", "why-summary", "No decision is recorded for this message."), el("p", "why-hint",
        "Beacon keeps them for your latest messages only (the last 200, for up to a week), from when you were a member of the topic. A message that has just arrived may not have one yet: refresh in a moment."));
    } else {
      box.dataset.state = "done";
      box.dataset.decision = decision.decision;
      const words = describeDecision(decision);
      box.append(el("p", "why-summary", words.summary));
      if (decision.deliveries && decision.deliveries.length) box.append(renderDeliveries(decision.deliveries));
      if (words.hint) box.append(el("p", "why-hint", words.hint));
    }
    const footer = el("div", "why-footer");
    if (decision && decision.created_at) {
      const time = el("time", null, `Decided ${clock(decision.created_at)}`);
      time.dateTime = decision.created_at;
      time.title = new Date(decision.created_at).toLocaleString();
      footer.append(time);
    }
    if (entry && entry.loading) box.setAttribute("aria-busy", "true");
    // Not disabled while loading (a disabled button loses the keyboard focus): asking again
    // meanwhile joins the request under way.
    const refresh = el("button", "btn ghost small", entry && entry.loading ? "Refreshing…" : "Refresh");
    refresh.type = "button";
    refresh.dataset.focusKey = `why-refresh:${message.id}`;
    refresh.setAttribute("aria-label", "Refresh why (not) notified");
    refresh.addEventListener("click", () => {
      loadDecisions(message.topic_id);
      renderMessages({});
    });
    const hide = el("button", "btn ghost small", "Hide");
    hide.type = "button";
    hide.setAttribute("aria-label", "Hide why (not) notified");
    hide.addEventListener("click", () => {
      toggleWhy(message);
      const why = document.querySelector(`[data-focus-key="why:${message.id}"]`);
      if (why) why.focus({ preventScroll: true }); // the panel and its button are gone
    });
    footer.append(refresh, hide);
    box.append(footer);
    return box;
  }

  /** "“Numbers are in…” from Bob" for a message of the open topic, else "message #57". */
  function messageRef(messageId) {
    const found = state.messages.find((m) => m.id === messageId);
    if (!found) return `message #${messageId}`;
    const text = found.body.length > 40 ? `${found.body.slice(0, 39)}…` : found.body;
    return `“${text}” from ${found.sender.name}`;
  }

  /** One decision of GET /api/notifications/decisions in plain words: {summary, hint}. */
  function describeDecision(d) {
    const pending = !d.deliveries || d.deliveries.length === 0;
    switch (d.decision) {
      case "pushed":
        return pending
          ? { summary: "Pushed to your devices; the push services have not answered yet.", hint: "Refresh in a moment to see how it went on each device." }
          : { summary: d.detail === "carries_held" ? "Pushed to your devices at once (it mentioned you), with the messages held before it:" : "Pushed to your devices:" };
      case "online":
        return d.detail === "idle"
          ? { summary: "Not pushed: you were online but idle, and pushes while idle are off.", hint: "Turn on “Push to my devices while I'm idle” in Settings to get them." }
          : { summary: "Not pushed: you were using Beacon when it arrived (a page or app in use), so it showed up there." };
      case "sender":
        return { summary: "Not pushed: you sent it." };
      case "level": {
        const topic = state.topics.get(d.topic_id);
        const summary = {
          topic: "Not pushed: muted by this topic's notification setting.",
          room: `Not pushed: muted by the notification setting of the room${topic ? ` #${topic.room_name}` : ""}.`,
          user: "Not pushed: muted by your own notification setting (your default for all topics).",
        }[d.rule] || "Not pushed: muted by your notification settings.";
        const hint = d.rule === "topic" ? "“Notify” above the messages changes it: “Mentions” lets only @mentions through, “Nothing” none." : "“Mentions” lets only @mentions through, “Nothing” none.";
        return { summary, hint };
      }
      case "dnd":
        return {
          summary: { snooze: "Not pushed: your notifications were snoozed.", quiet_hours: "Not pushed: it arrived during your quiet hours." }[d.detail]
            || "Not pushed: do not disturb was on.",
        };
      case "coalesced":
        if (!d.carried_by) return { summary: "Held: this busy topic gets one push per window, and that push has not gone out yet.", hint: "Refresh later to see the push that carries it." };
        return {
          summary: `Held, then carried by a later push (for ${messageRef(d.carried_by)}), which stood for several messages of this busy topic${pending ? "; the push services have not answered yet." : ":"}`,
        };
      case "read_first":
        return { summary: "Not pushed: it was held to go out with later messages, and you read the topic before that push was due." };
      case "no_device":
        return {
          summary: "Not pushed: no device to notify.",
          hint: state.ownDeviceId ? "This browser gets pushes now: it was added after this message." : "Enable notifications: choose “Enable push” in the top bar (phones are added by the mobile app).",
        };
      case "failed":
        return { summary: "The push failed on every one of your devices:" };
      default:
        return { summary: `Decision: ${d.decision}.` };
    }
  }

  /** How a push ended on each device (a decision's or a test notification's `deliveries`). */
  function renderDeliveries(deliveries) {
    const list = el("ul", "delivery-list");
    for (const delivery of deliveries) {
      const item = el("li", "delivery");
      item.dataset.outcome = delivery.outcome;
      item.dataset.channel = delivery.channel;
      if (delivery.device_id) item.dataset.deviceId = delivery.device_id;
      const own = Boolean(state.ownDeviceId) && delivery.device_id === state.ownDeviceId;
      const name = own ? "This browser" : CHANNEL_NAMES[delivery.channel] || delivery.channel || "Device";
      const details = (delivery.channel === "webpush"
        ? [describeAgent(delivery.device_label), hostOf(delivery.push_service)]
        : [delivery.device_label]).filter(Boolean);
      const device = el("span", "delivery-device", name);
      if (details.length) device.append(el("span", "delivery-detail", ` (${details.join(" · ")})`));
      if (delivery.device_label) device.title = delivery.device_label;
      item.append(device, ": ", el("span", "delivery-outcome", outcomeWords(delivery)));
      list.append(item);
    }
    return list;
  }

  function outcomeWords(delivery) {
    if (delivery.outcome === "delivered") return "delivered";
    if (delivery.outcome === "expired") {
      return "expired: the push service says this subscription is gone, so Beacon removed the device (enable push on it again)";
    }
    const why = delivery.reason || (delivery.status ? `HTTP ${delivery.status}` : "refused");
    return `failed (${why})`;
  }

  // ---------------------------------------------------------------- typing

  /** The user types in the composer: tell the topic, at most every TYPING_SEND_MS. Others show
   * "… is typing" for `expires_in` seconds after the last one, so that is often enough. */
  function sendTyping() {
    const topic = state.topics.get(state.current);
    if (!topic || state.typingUnsupported || !state.socket || !state.socket.connected) return;
    if (!$("#composer-input").value.trim()) return; // cleared: not writing anything
    const last = state.typingSent;
    if (last && last.topicId === topic.topic_id && Date.now() - last.at < TYPING_SEND_MS) return;
    state.typingSent = { topicId: topic.topic_id, at: Date.now() };
    emit("typing", { topic_id: topic.topic_id, room_id: topic.room_id }).catch((err) => {
      if (err.code === "unknown_event") state.typingUnsupported = true; // an older server
    });
  }

  /** Someone types in the open topic: shown until `expires_in` seconds pass without a repeat,
   * or their message arrives (onNewMessage). */
  function onUserTyping(event) {
    if (state.me && event.user_id === state.me.user_id) return; // this user, on another tab or device
    if (event.topic_id !== state.current) return;
    const held = state.typing.get(event.user_id);
    if (held) clearTimeout(held.timer);
    const person = state.people.get(event.user_id);
    const name = event.display_name || (person ? displayName(person) : "Someone");
    const timer = setTimeout(() => stopTyping(event.user_id), (event.expires_in || TYPING_EXPIRES_S) * 1000);
    state.typing.set(event.user_id, { name, timer });
    renderTyping();
  }

  function stopTyping(userId) {
    const held = state.typing.get(userId);
    if (!held) return;
    clearTimeout(held.timer);
    state.typing.delete(userId);
    renderTyping();
  }

  function clearTyping() {
    for (const { timer } of state.typing.values()) clearTimeout(timer);
    state.typing.clear();
    renderTyping();
  }

  function renderTyping() {
    const names = [...state.typing.values()].map((t) => t.name);
    const node = $("#typing");
    node.hidden = names.length === 0;
    if (names.length === 0) node.textContent = "";
    else if (names.length === 1) node.textContent = `${names[0]} is typing…`;
    else if (names.length <= 3) node.textContent = `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]} are typing…`;
    else node.textContent = "Several people are typing…";
  }

  // ---------------------------------------------------------------- topics and messages

  /** join_topic on this connection: new_message and typing from then on, and the user counts
   * as active in the topic. Returns whether it worked. */
  async function joinTopic(topicId, quiet = true) {
    const topic = state.topics.get(topicId);
    if (!topic) return false;
    try {
      await emit("join_topic", { topic_id: topic.topic_id, room_id: topic.room_id });
      return true;
    } catch (err) {
      if (!quiet) showComposerError(`Could not join the topic: ${err.message}`);
      return false;
    }
  }

  async function joinCurrent(quiet) {
    if (!(await joinTopic(state.current, quiet))) return;
    await loadMessages();
    // Not fatal: if the connection drops meanwhile, the next "connect" marks the topic read.
    if (mayAutoRead()) await markRead().catch((err) => console.warn("mark_as_read failed:", err.message));
  }

  /** Show a topic; called from clicks, toasts and the service worker, so it never rejects. */
  function openTopic(topicId, highlightId) {
    return showTopic(topicId, highlightId).catch((err) => {
      if (topicId === state.current) showComposerError(`Could not load the topic: ${err.message}`);
    });
  }

  async function showTopic(topicId, highlightId) {
    const topic = state.topics.get(topicId);
    if (!topic) return;
    const previous = state.current;
    if (previous && previous !== topicId && state.socket && state.socket.connected) {
      const old = state.topics.get(previous);
      emit("leave_topic", { topic_id: previous, room_id: old && old.room_id }).catch(() => {});
    }
    if (previous !== topicId) state.whyOpen = new Set();
    state.current = topicId;
    state.messages = [];
    state.nextBefore = null;
    state.readHold = null; // opening a topic is reading it (see markUnread)
    if (previous !== topicId) clearTyping();
    const url = new URL(location.href);
    url.searchParams.set("room", topic.room_id);
    url.searchParams.set("topic", topic.topic_id);
    history.replaceState(null, "", url);
    $("#topic-title").textContent = topic.topic_name;
    $("#topic-subtitle").textContent = `in #${topic.room_name}`;
    $("#composer").hidden = false;
    $("#composer-input").placeholder = `Message ${topic.topic_name}`;
    showComposerError("");
    renderTopics();
    renderTopicLevel();
    renderMessages({});
    const receipts = loadReceipts(topicId); // beside the messages; it never rejects
    if (state.socket && state.socket.connected) {
      await joinCurrent(false);
    } else {
      await loadMessages(); // the connect handler joins once the socket is up
    }
    await receipts;
    if (highlightId) {
      const node = document.querySelector(`.message[data-message-id="${CSS.escape(String(highlightId))}"]`);
      if (node) {
        node.classList.add("highlight");
        node.scrollIntoView({ block: "center" });
      }
    }
    $("#composer-input").focus();
  }

  async function loadMessages(older) {
    const topicId = state.current;
    let path = `/api/topics/${encodeURIComponent(topicId)}/messages?limit=${MESSAGES_PAGE}`;
    if (older && state.nextBefore) path += `&before=${state.nextBefore}`;
    const page = await api("GET", path);
    if (topicId !== state.current) return;
    const known = new Set(state.messages.map((m) => m.id));
    const fresh = page.messages.filter((m) => !known.has(m.id)).reverse();
    state.messages = [...fresh, ...state.messages].sort((a, b) => a.id - b.id);
    if (older || !state.nextBefore) state.nextBefore = page.next_before;
    renderMessages({ scroll: !older });
  }

  /** Visible and in use: the user sees the open topic. Idle, the server counts them away (unread
   * goes up, pushes and emails go out), so the page must not read for them until they are back. */
  function looking() {
    return document.visibilityState === "visible" && state.attention === "active";
  }

  /** Read the open topic for the user: looking at it, and not a topic they marked unread. */
  function mayAutoRead() {
    return looking() && state.readHold !== state.current;
  }

  function scheduleMarkRead() {
    if (!mayAutoRead()) return; // read when the user is back (see setAttention)
    clearTimeout(state.markTimer);
    // Checked again when it fires: a "mark unread" (here or on another device) may come between.
    state.markTimer = setTimeout(() => { if (mayAutoRead()) markRead().catch(() => {}); }, 150);
  }

  async function markRead() {
    const topic = state.topics.get(state.current);
    if (!topic || !state.socket || !state.socket.connected) return;
    const after = topic.last_read_message_id || 0;
    const ids = state.messages.filter((m) => m.id > after).map((m) => m.id).slice(-1000);
    const ack = await emit("mark_as_read", { topic_id: topic.topic_id, room_id: topic.room_id, message_ids: ids });
    if (!applyOwnState({ unread_count: 0, ...ack })) return; // a newer change (mark unread) won
    renderTopics();
    if (topic.topic_id === state.current) renderMessages({});
  }

  function renderBody(text) {
    const body = el("div", "body");
    const mine = state.me ? `@${state.me.username}` : null;
    for (const part of text.split(/(@[\w.-]+)/g)) {
      if (!part) continue;
      if (part.startsWith("@") && state.me && part.replace(/[.-]+$/, "") === mine) body.append(el("span", "mention", part));
      else body.append(part);
    }
    return body;
  }

  function renderMessages({ scroll }) {
    const box = $("#messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    // The list is rebuilt: a button that had the focus (the user just clicked it) gets it back.
    const focused = box.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
    box.replaceChildren();
    if (!state.current) {
      const placeholder = el("div", "placeholder");
      placeholder.append(el("p", null, "Pick a topic on the left to read and send messages."));
      box.append(placeholder);
      return;
    }
    if (state.nextBefore) {
      const older = el("button", "btn ghost small load-older", "Load earlier messages");
      older.type = "button";
      older.addEventListener("click", () => loadMessages(true));
      box.append(older);
    }
    if (state.messages.length === 0) {
      const placeholder = el("div", "placeholder");
      placeholder.append(el("p", null, "No messages yet. Say hello!"));
      box.append(placeholder);
    }
    // Who has read how far: "Seen by" goes under the newest message each reader has read. None
    // at all when receipts are off for this user (they do not share theirs, or the server).
    const readers = state.receiptsEnabled === false ? new Map() : state.readers.get(state.current) || new Map();
    const seenAt = new Map();
    for (const [userId, { last_read_message_id: lastRead }] of readers) {
      if (lastRead === null || lastRead === undefined) continue;
      const upTo = [...state.messages].reverse().find((m) => m.id <= lastRead && m.sender.id !== userId);
      if (!upTo) continue;
      if (!seenAt.has(upTo.id)) seenAt.set(upTo.id, []);
      const person = state.people.get(userId);
      seenAt.get(upTo.id).push(person ? displayName(person) : state.names.get(userId) || "Someone");
    }
    // Marked unread and still open: a line above the first unread message.
    const topic = state.topics.get(state.current);
    const held = state.readHold === state.current && topic && topic.unread_count > 0;
    const firstUnread = held
      ? state.messages.find((m) => m.id > (topic.last_read_message_id || 0) && !(state.me && m.sender.id === state.me.user_id))
      : null;
    let previous = null;
    for (const message of state.messages) {
      const created = new Date(message.created_at);
      const day = dayFormat.format(created);
      if (!previous || dayFormat.format(new Date(previous.created_at)) !== day) {
        box.append(el("div", "day-divider", day));
        previous = null;
      }
      if (firstUnread && message.id === firstUnread.id) {
        box.append(el("div", "unread-divider", "Unread"));
        previous = null;
      }
      const continued = previous && previous.sender.id === message.sender.id && created - new Date(previous.created_at) < 5 * 60 * 1000;
      const item = el("article", "message");
      if (continued) item.classList.add("continued");
      if (state.me && message.sender.id === state.me.user_id) item.classList.add("mine");
      item.dataset.messageId = String(message.id);
      const content = el("div", "content");
      const meta = el("div", "meta");
      const time = el("time", null, timeFormat.format(created));
      time.dateTime = message.created_at;
      time.title = created.toLocaleString();
      meta.append(el("span", "sender", message.sender.name), time);
      content.append(meta, renderBody(message.body));
      item.append(avatar(message.sender.id, message.sender.name), content);
      const received = state.me && message.sender.id !== state.me.user_id;
      if (received) {
        // Someone else's message: "Mark unread" and "Why (not) notified?" from here (shown on
        // hover and keyboard focus).
        const actions = el("div", "message-actions");
        const unread = el("button", "btn small", "Mark unread");
        unread.type = "button";
        unread.title = "Mark this message and the ones after it as unread";
        unread.dataset.focusKey = `unread:${message.id}`;
        unread.addEventListener("click", () => markUnread(message));
        const why = el("button", "btn small why-button", "Why (not) notified?");
        why.type = "button";
        why.title = "Whether this message notified you on your devices, and why (not)";
        why.dataset.focusKey = `why:${message.id}`;
        why.setAttribute("aria-expanded", String(state.whyOpen.has(message.id)));
        why.setAttribute("aria-controls", `why-${message.id}`);
        why.addEventListener("click", () => toggleWhy(message));
        actions.append(unread, why);
        item.append(actions);
      }
      if (seenAt.has(message.id)) {
        const receipt = el("div", "receipt");
        receipt.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="m9 16.2-3.5-3.5L4 14.2l5 5 11-11-1.4-1.4z"/></svg>';
        receipt.append(`Seen by ${seenAt.get(message.id).join(", ")}`);
        item.append(receipt);
      }
      if (received && state.whyOpen.has(message.id)) item.append(renderWhy(message));
      box.append(item);
      previous = message;
    }
    if (scroll || atBottom) box.scrollTop = box.scrollHeight;
    const again = focused && box.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`);
    if (again) {
      state.quietFocus = true; // not the user's input: the page does not become active by it
      try {
        again.focus({ preventScroll: true });
      } finally {
        state.quietFocus = false;
      }
    }
  }

  function showComposerError(message) {
    const node = $("#composer-error");
    node.textContent = message;
    node.hidden = !message;
  }

  async function sendMessage(event) {
    event.preventDefault();
    const input = $("#composer-input");
    const text = input.value;
    const topic = state.topics.get(state.current);
    if (!topic || !text.trim()) return;
    const button = $("#send-button");
    button.disabled = true;
    showComposerError("");
    try {
      const ack = await emit("send_message", { topic_id: topic.topic_id, room_id: topic.room_id, message: text });
      if (state.readHold === topic.topic_id) state.readHold = null; // answering is reading (see markUnread)
      input.value = "";
      autoGrow();
      onNewMessage(ack.message); // new_message usually arrives first; duplicates are dropped
    } catch (err) {
      showComposerError(err.code === "message_too_long" ? err.message : `Not sent: ${err.message}`);
    } finally {
      button.disabled = false;
      input.focus();
    }
  }

  function autoGrow() {
    const input = $("#composer-input");
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  }

  // ---------------------------------------------------------------- notification preferences

  /** The push level (field "level") or email level ("email_level") a topic inherits: its
   * room's, else the user's default. An override may set one of the two (the other is null). */
  function inheritedLevel(topic, field = "level") {
    const room = state.prefs.rooms.find((r) => r.room_id === topic.room_id);
    return (room && room[field]) || state.prefs[field];
  }

  function topicOverride(topic, field = "level") {
    const own = state.prefs.topics.find((t) => t.topic_id === topic.topic_id);
    return (own && own[field]) || null;
  }

  /** The level that decides pushes for a topic: its own override, else the inherited one. */
  function effectiveLevel(topic) {
    if (!state.prefs) return "all";
    return topicOverride(topic) || inheritedLevel(topic);
  }

  /** Email about missed messages can be sent: the server has it set up (older servers: no). */
  function emailEnabled() {
    return Boolean(state.prefs && state.prefs.email && state.prefs.email.enabled);
  }

  async function loadPreferences() {
    onPreferences(await api("GET", "/api/notifications/preferences"));
  }

  /** Not needed to chat: a failure is shown, and the rest of the page goes on. */
  function refreshPreferences() {
    return loadPreferences().catch((err) => {
      toast({ kind: "error", title: "Could not load notification settings", body: err.message });
    });
  }

  /** The whole preferences (GET, PATCH or preferences_updated from any device): show them. */
  function onPreferences(prefs) {
    const wasSharing = state.prefs ? state.prefs.share_read_receipts !== false : null;
    state.prefs = prefs;
    const sharing = prefs.share_read_receipts !== false;
    if (wasSharing === null ? !sharing : sharing !== wasSharing) onSharingChanged(sharing);
    clearTimeout(state.snoozeTimer);
    if (prefs.snooze_until) {
      // Nothing is sent when a snooze runs out: ask again then. At least 5 s (this clock may be
      // ahead of the server's), at most what setTimeout holds (~24 days).
      const wait = Math.min(Math.max(new Date(prefs.snooze_until) - Date.now() + 1000, 5000), 2 ** 31 - 1);
      state.snoozeTimer = setTimeout(() => loadPreferences().catch(() => {}), wait);
    }
    renderTopics();
    renderTopicLevel();
    renderSnooze();
    renderSettings();
  }

  /** The open topic's push level, and its email level when the server sends email. */
  function renderTopicLevel() {
    const topic = state.topics.get(state.current);
    const box = $("#topic-notify");
    box.hidden = !topic || !state.prefs;
    $("#topic-email").hidden = box.hidden || !emailEnabled();
    if (box.hidden) return;
    const select = $("#notify-level");
    select.options[0].textContent = `Default (${LEVEL_LABELS[inheritedLevel(topic)]})`;
    select.value = topicOverride(topic) || "";
    const email = $("#topic-email-level");
    email.options[0].textContent = `Default (${EMAIL_LEVEL_LABELS[inheritedLevel(topic, "email_level")] || "Default"})`;
    email.value = topicOverride(topic, "email_level") || "";
  }

  function renderSnooze() {
    const prefs = state.prefs;
    const button = $("#snooze-button");
    const status = $("#dnd-status");
    button.hidden = !prefs;
    status.hidden = !prefs || !prefs.dnd_active;
    if (!prefs) return;
    const snoozed = Boolean(prefs.snooze_until);
    button.querySelector(".label").textContent = snoozed ? "Resume notifications" : `Snooze ${SNOOZE_MINUTES / 60} h`;
    button.setAttribute("aria-pressed", String(snoozed));
    button.title = snoozed ? "Push notifications again from now on." : "No push notifications for an hour, on any device.";
    if (snoozed) status.textContent = `Notifications paused until ${clock(prefs.snooze_until)}`;
    else if (prefs.quiet_hours) status.textContent = `Quiet hours until ${prefs.quiet_hours.end} (${prefs.time_zone})`;
    else status.textContent = "Notifications paused";
  }

  async function toggleSnooze() {
    const snoozed = Boolean(state.prefs && state.prefs.snooze_until);
    const button = $("#snooze-button");
    button.disabled = true;
    try {
      onPreferences(await api("PATCH", "/api/notifications/preferences", { snooze_minutes: snoozed ? 0 : SNOOZE_MINUTES }));
    } catch (err) {
      toast({ kind: "error", title: snoozed ? "Could not resume notifications" : "Could not snooze", body: err.message });
    } finally {
      button.disabled = false;
    }
  }

  /** The open topic's selects (field "level": push, "email_level": email): a level sets it (PUT),
   * Default clears it (PUT null), or removes the override (DELETE) when nothing else is set. */
  async function setTopicLevel(field = "level") {
    const topic = state.topics.get(state.current);
    const level = $(field === "level" ? "#notify-level" : "#topic-email-level").value || null;
    if (!topic || !state.prefs) return;
    const other = field === "level" ? "email_level" : "level";
    const path = `/api/notifications/preferences/topics/${encodeURIComponent(topic.topic_id)}`;
    try {
      const override = level || topicOverride(topic, other)
        ? await api("PUT", path, { [field]: level })
        : await api("DELETE", path);
      // PUT answers the override, DELETE nothing; preferences_updated brings the same news.
      const others = state.prefs.topics.filter((t) => t.topic_id !== topic.topic_id);
      onPreferences({ ...state.prefs, topics: override ? [...others, override] : others });
    } catch (err) {
      const title = field === "level" ? "Could not change notifications" : "Could not change email notifications";
      toast({ kind: "error", title, where: topic.topic_name, body: err.message });
      renderTopicLevel(); // back to the stored level
    }
  }

  // ---------------------------------------------------------------- settings: email and idle

  function closeDialog(selector) {
    const dialog = $(selector);
    if (dialog.open) dialog.close();
  }

  function showSettingsMessage(text, { error = false } = {}) {
    $("#settings-status").textContent = error ? "" : text;
    const alert = $("#settings-error");
    alert.textContent = error ? text : "";
    alert.hidden = !error || !text;
  }

  function openSettings() {
    const dialog = $("#settings-dialog");
    if (!dialog.open) dialog.showModal();
    showSettingsMessage("");
    renderSettings();
    loadPreferences().catch((err) => showSettingsMessage(`Could not load your settings: ${err.message}`, { error: true }));
  }

  /** The dialog from state.prefs (GET, PATCH or preferences_updated): the whole, current state. */
  function renderSettings() {
    const prefs = state.prefs;
    $("#settings-button").hidden = !prefs;
    if (!prefs) return;
    const email = prefs.email || {};
    const enabled = emailEnabled();
    $("#email-disabled").hidden = enabled;
    $("#email-address").textContent = email.address ? `Emails go to ${email.address}.` : "No email address on your account.";
    const failing = $("#email-failing");
    failing.hidden = !email.failing;
    failing.textContent = email.failing
      ? `Emails to ${email.address || "your address"} are being refused${email.failing_since ? ` since ${clock(email.failing_since)}` : ""}, so Beacon has stopped sending them. Check the address with your administrator.`
      : "";

    const level = $("#email-level");
    if (prefs.email_level) level.value = prefs.email_level;
    level.disabled = !enabled;

    const delay = $("#email-delay");
    const value = prefs.email_delay === null || prefs.email_delay === undefined ? "" : String(prefs.email_delay);
    const fallback = delay.querySelector('option[value=""]');
    fallback.textContent = email.delay_default !== undefined ? `Server default (${duration(email.delay_default)})` : "Server default";
    delay.querySelectorAll("option.custom").forEach((option) => option.remove());
    if (![...delay.options].some((option) => option.value === value)) {
      const custom = el("option", "custom", duration(Number(value))); // set elsewhere (API, another client)
      custom.value = value;
      delay.insertBefore(custom, fallback);
    }
    delay.value = value;
    delay.disabled = !enabled || prefs.email_level === "none";

    const push = $("#push-when-idle");
    push.checked = prefs.push_when_idle !== false;
    push.disabled = prefs.push_when_idle === undefined; // an older server

    // Sharing, and still no receipts: READ_RECEIPTS is off on the server, for everyone.
    const share = $("#share-read-receipts");
    const serverOff = state.receiptsEnabled === false && prefs.share_read_receipts !== false;
    share.checked = prefs.share_read_receipts !== false;
    share.disabled = prefs.share_read_receipts === undefined || serverOff; // undefined: an older server
    $("#receipts-disabled").hidden = !serverOff;
  }

  /** PATCH one field as it changes; the answer is the whole state. On a refusal, show the stored one. */
  async function saveSetting(fields) {
    showSettingsMessage("Saving…");
    try {
      onPreferences(await api("PATCH", "/api/notifications/preferences", fields));
      showSettingsMessage("Saved.");
    } catch (err) {
      showSettingsMessage(`Not saved: ${err.message}`, { error: true });
      renderSettings();
    }
  }

  // ---------------------------------------------------------------- settings: test notification

  function resetTestPush() {
    clearTimeout(state.testPush.timer);
    state.testPush = { pending: null, results: new Map(), timer: null };
    showTestPush("");
    $("#test-push-button").disabled = false;
  }

  /** The status line under the button, and the devices' outcomes (null: none to show). */
  function showTestPush(text, { error = false, deliveries = null } = {}) {
    const status = $("#test-push-status");
    status.textContent = text;
    status.classList.toggle("error-text", error);
    status.hidden = !text;
    const results = $("#test-push-results");
    results.replaceChildren(...(deliveries && deliveries.length ? renderDeliveries(deliveries).childNodes : []));
    results.hidden = !(deliveries && deliveries.length);
    if (text) $("#test-push-result").scrollIntoView({ block: "nearest" }); // the dialog scrolls
  }

  /** POST /api/notifications/test: 200 has each device's outcome; 202 says it is still
   * sending, and test_push_result (to all of this user's connections) brings them. */
  async function sendTestPush() {
    const test = state.testPush;
    const button = $("#test-push-button");
    button.disabled = true;
    test.pending = null;
    clearTimeout(test.timer);
    showTestPush("Sending a test notification…");
    let answer;
    try {
      answer = await api("POST", "/api/notifications/test");
    } catch (err) {
      if (state.testPush !== test) return; // signed out meanwhile
      button.disabled = false;
      showTestPush(testPushRefusal(err), { error: true });
      return;
    }
    if (state.testPush !== test) return;
    if (answer.done) {
      showTestResult(answer);
      return;
    }
    const early = test.results.get(answer.job_id); // the event can overtake the answer
    if (early) {
      showTestResult(early);
      return;
    }
    test.pending = answer.job_id;
    showTestPush("Still sending… each device's outcome shows here as soon as its push service answers.");
    test.timer = setTimeout(() => {
      if (test.pending !== answer.job_id) return;
      test.pending = null;
      button.disabled = false;
      showTestPush("No answer yet from your devices' push services. The Devices panel shows when each last got a push.", { error: true });
    }, TEST_PUSH_GIVE_UP_MS);
  }

  function testPushRefusal(err) {
    if (!(err instanceof ApiError)) return `Could not send a test notification: ${err.message}`;
    if (err.status === 429) {
      const seconds = Math.max(1, Math.ceil(Number(err.body.retry_after) || 60));
      return `Too many test notifications: try again in ${seconds} second${seconds === 1 ? "" : "s"}.`;
    }
    if (err.code === "push_disabled") return "Push notifications are not set up on this server, so there is nothing to test.";
    return `Could not send a test notification: ${err.message}`;
  }

  function onTestPushResult(result) {
    const test = state.testPush;
    test.results.set(result.job_id, result);
    while (test.results.size > 10) test.results.delete(test.results.keys().next().value);
    if (result.job_id === test.pending) showTestResult(result);
  }

  function showTestResult(result) {
    const test = state.testPush;
    test.pending = null;
    clearTimeout(test.timer);
    $("#test-push-button").disabled = false;
    const deliveries = result.deliveries || [];
    if (!deliveries.length) {
      showTestPush("You have no devices to notify: choose “Enable push” in the top bar to add this browser.");
      return;
    }
    const parts = ["delivered", "expired", "failed"]
      .map((outcome) => [outcome, deliveries.filter((d) => d.outcome === outcome).length])
      .filter(([, count]) => count > 0)
      .map(([outcome, count]) => `${count} ${outcome}`);
    const devices = deliveries.length === 1 ? "1 device" : `${deliveries.length} devices`;
    showTestPush(`Test notification sent to ${devices}: ${parts.join(", ")}.`, { deliveries });
  }

  // ---------------------------------------------------------------- emails (development mailbox)

  /** The Emails button exists only when the server has a development mailbox; asked only when
   * development login and email are on, so other servers see no 404 from this page. */
  async function probeEmails() {
    state.emailsAvailable = false;
    if (state.devLogin && emailEnabled()) {
      try {
        await api("GET", "/api/demo/emails");
        state.emailsAvailable = true;
      } catch (_) { /* 404: no mailbox */ }
    }
    $("#emails-button").hidden = !state.emailsAvailable || !state.me;
  }

  function openEmails() {
    const dialog = $("#emails-dialog");
    if (!dialog.open) dialog.showModal();
    loadEmails();
  }

  function showEmailsMessage(text, { error = false } = {}) {
    const status = $("#emails-status");
    const alert = $("#emails-error");
    status.textContent = error ? "" : text;
    status.hidden = error || !text;
    alert.textContent = error ? text : "";
    alert.hidden = !error || !text;
  }

  async function loadEmails() {
    const load = (state.emailsLoads += 1);
    const list = $("#emails-list");
    list.setAttribute("aria-busy", "true");
    showEmailsMessage("Loading emails…");
    try {
      const data = await api("GET", "/api/demo/emails");
      if (load !== state.emailsLoads) return;
      renderEmails(data);
      showEmailsMessage(data.emails.length === 1 ? "1 email." : `${data.emails.length} emails.`);
    } catch (err) {
      if (load !== state.emailsLoads) return;
      showEmailsMessage(`Could not load the emails: ${err.message}`, { error: true });
    } finally {
      if (load === state.emailsLoads) list.removeAttribute("aria-busy");
    }
  }

  /** The http(s) URLs of a List-Unsubscribe header ("<https://…>, <mailto:…>"). */
  function unsubscribeLinks(header) {
    if (!header) return [];
    const found = [...String(header).matchAll(/<([^>]+)>/g)].map((m) => m[1]);
    return (found.length ? found : String(header).split(",")).map((url) => url.trim()).filter((url) => {
      try {
        return ["http:", "https:"].includes(new URL(url).protocol);
      } catch (_) {
        return false;
      }
    });
  }

  /** Subject, who and when, the text part and the unsubscribe link; the HTML part is never shown. */
  function renderEmails(data) {
    $("#emails-address").textContent = data.address || "you";
    const list = $("#emails-list");
    list.replaceChildren();
    data.emails.forEach((email, index) => {
      const item = el("li", "email");
      const subject = el("h3", "email-subject", email.subject || "(no subject)");
      subject.id = `email-subject-${index}`;
      item.setAttribute("aria-labelledby", subject.id);
      const meta = el("p", "email-meta", `From ${email.from || "?"} to ${email.to || "?"} · `);
      if (email.date) {
        const time = el("time", null, clock(email.date));
        time.dateTime = email.date;
        time.title = new Date(email.date).toLocaleString();
        meta.append(time);
      }
      item.append(subject, meta, el("pre", "email-text", email.text || ""));
      for (const url of unsubscribeLinks(email.list_unsubscribe)) {
        const line = el("p", "email-unsubscribe", "Unsubscribe link: ");
        const link = el("a", null, url);
        link.href = url;
        link.target = "_blank";
        link.rel = "noopener noreferrer";
        line.append(link);
        item.append(line);
      }
      list.append(item);
    });
    $("#emails-empty").hidden = data.emails.length > 0;
  }

  // ---------------------------------------------------------------- attention: active or idle

  /** What this page reports: hidden, or no input for IDLE_AFTER_MS, is idle. */
  function currentAttention() {
    if (document.visibilityState !== "visible") return "idle";
    return Date.now() - state.lastInput >= IDLE_AFTER_MS ? "idle" : "active";
  }

  /** Pointer, keys, wheel, touch, focus, or the page shown: runs on every pointer move, so cheap. */
  function onActivity() {
    if (document.visibilityState !== "visible" || state.quietFocus) return;
    state.lastInput = Date.now();
    setAttention("active");
  }

  /** Only a pointer that really moved: a layout change under a still mouse can fire moves. */
  function onPointerMove(event) {
    const at = `${event.screenX},${event.screenY}`;
    if (at === state.pointerAt) return;
    state.pointerAt = at;
    onActivity();
  }

  function onVisibilityChange() {
    if (document.visibilityState !== "visible") {
      if (state.hiddenAt === null) state.hiddenAt = Date.now();
      setAttention("idle");
      return;
    }
    const away = state.hiddenAt === null ? 0 : Date.now() - state.hiddenAt;
    state.hiddenAt = null;
    onActivity();
    // Hidden for long, a tab may have been frozen or throttled by the browser, or its connection
    // replaced without this page noticing everything: catch up as after a reconnection.
    if (away > SYNC_AFTER_HIDDEN_MS && state.socket && state.socket.connected) {
      catchUp().then(() => { if (state.current) scheduleMarkRead(); }).catch(() => {});
    }
  }

  function onIdleTimer() {
    state.idleTimer = null;
    setAttention(currentAttention()); // input meanwhile: still active, the timer is set again
  }

  function setAttention(next) {
    const was = state.attention;
    state.attention = next;
    if (next === "idle") {
      clearTimeout(state.idleTimer);
      state.idleTimer = null;
    } else if (!state.idleTimer) {
      state.idleTimer = setTimeout(onIdleTimer, state.lastInput + IDLE_AFTER_MS - Date.now() + 50);
    }
    sendPresence();
    // Back: the server counted the open topic's new messages as unread meanwhile.
    if (next === "active" && was !== "active" && state.current) scheduleMarkRead();
  }

  /** set_presence on a change of state, and while active a "still active" every
   * PRESENCE_REFRESH_MS at most (the server counts a silent connection idle after a while). */
  function sendPresence() {
    const socket = state.socket;
    if (!socket || !socket.connected || state.presenceUnsupported) return;
    const presence = state.attention;
    const sent = state.presenceSent;
    const elapsed = sent ? Date.now() - sent.at : Infinity;
    const due = !sent || sent.state !== presence
      || (sent.failed ? elapsed >= PRESENCE_RETRY_MS : presence === "active" && elapsed >= PRESENCE_REFRESH_MS);
    if (!due) return;
    const record = { state: presence, at: Date.now(), failed: false };
    state.presenceSent = record;
    emit("set_presence", { state: presence }).then((ack) => {
      if (state.socket === socket) updateOwnStatus(ack.status);
    }).catch((err) => {
      if (err.code === "unknown_event") state.presenceUnsupported = true;
      record.failed = true; // tried again on the next input, PRESENCE_RETRY_MS later
    });
  }

  /** The ack's `status` is this user's overall one (another tab or device may still be active). */
  function updateOwnStatus(status) {
    const me = state.me && state.people.get(state.me.user_id);
    if (!me || !status || me.status === status) return;
    me.status = status;
    renderPeople();
  }

  // ---------------------------------------------------------------- toasts

  function toast({ kind = "info", title, where, body, avatarOf, action, data }) {
    const node = el("div", `toast ${kind}`);
    node.setAttribute("role", kind === "error" ? "alert" : "status");
    if (data) Object.assign(node.dataset, data);
    node.append(avatarOf ? avatar(avatarOf.id, avatarOf.name, true) : el("span"));
    const text = el("div", "toast-text");
    const heading = el("div", "toast-title", title);
    if (where) heading.append(" ", el("span", "toast-where", `in ${where}`));
    text.append(heading, el("div", "toast-body", body));
    if (action) {
      const actions = el("div", "toast-actions");
      const button = el("button", "btn small", action.label);
      button.type = "button";
      button.addEventListener("click", () => { action.run(); dismiss(); });
      actions.append(button);
      text.append(actions);
    }
    const close = el("button", "close", "×");
    close.type = "button";
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", () => dismiss());
    node.append(text, close);
    $("#toasts").append(node); // shown lowest (column-reverse)
    let timer = setTimeout(dismiss, TOAST_MS);
    node.addEventListener("mouseenter", () => clearTimeout(timer));
    node.addEventListener("mouseleave", () => { timer = setTimeout(dismiss, TOAST_MS / 2); });
    function dismiss() {
      clearTimeout(timer);
      node.classList.add("leaving");
      setTimeout(() => node.remove(), 200);
    }
    const all = $("#toasts").children;
    while (all.length > 4) all[0].remove();
  }

  // ---------------------------------------------------------------- Web Push

  function urlBase64ToBytes(value) {
    const padded = (value + "===".slice((value.length + 3) % 4)).replace(/-/g, "+").replace(/_/g, "/");
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  }

  function setPushButton(label, { pressed = false, disabled = false, title = "" } = {}) {
    const button = $("#push-button");
    button.hidden = false;
    button.querySelector(".label").textContent = label;
    button.setAttribute("aria-pressed", String(pressed));
    button.disabled = disabled;
    button.title = title;
  }

  async function registerServiceWorker() {
    if (!("serviceWorker" in navigator)) return null;
    try {
      await navigator.serviceWorker.register("/sw.js", { scope: "/" });
      state.registration = await navigator.serviceWorker.ready;
      return state.registration;
    } catch (err) {
      console.warn("service worker registration failed", err);
      return null;
    }
  }

  async function setupPush() {
    if (!state.pushSupported) {
      setPushButton("Push unsupported", { disabled: true, title: "This browser has no service workers or Push API (a secure context is required: https or localhost)." });
      return;
    }
    const registration = state.registration || (await registerServiceWorker());
    if (!registration) {
      setPushButton("Push unavailable", { disabled: true, title: "The service worker could not be registered." });
      return;
    }
    const existing = await registration.pushManager.getSubscription();
    if (existing && Notification.permission === "granted") {
      // Re-announce on every load: the endpoint follows whoever is signed in on this browser.
      try {
        state.ownDeviceId = (await api("POST", "/api/notifications/subscribe", existing.toJSON())).id;
        setPushButton("Push on", { pressed: true, title: "This browser gets a notification for messages while you are offline. Click to turn off." });
        return;
      } catch (err) {
        console.warn("could not re-register the push subscription", err);
      }
    }
    if (Notification.permission === "denied") {
      setPushButton("Push blocked", { disabled: true, title: "Notifications are blocked for this site in the browser settings." });
      return;
    }
    setPushButton("Enable push", { title: "Get a notification for new messages while you are offline." });
  }

  async function togglePush() {
    const button = $("#push-button");
    if (button.getAttribute("aria-pressed") === "true") {
      await disablePush();
    } else {
      await enablePush();
    }
  }

  async function enablePush() {
    setPushButton("Enabling…", { disabled: true });
    try {
      const { public_key: publicKey } = await api("GET", "/api/notifications/vapid-public-key", undefined, { auth: false });
      const permission = await Notification.requestPermission();
      if (permission !== "granted") {
        setPushButton(permission === "denied" ? "Push blocked" : "Enable push", { disabled: permission === "denied" });
        toast({ kind: "error", title: "Notifications not allowed", body: "Allow notifications for this site to receive pushes." });
        return;
      }
      const registration = state.registration || (await registerServiceWorker());
      // The browser asks its vendor's push service for an endpoint; without internet access
      // that request can hang, so give up after a while with a clear message.
      const subscription = await Promise.race([
        registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: urlBase64ToBytes(publicKey) }),
        new Promise((_, reject) => setTimeout(() => reject(Object.assign(
          new Error(`the browser's push service did not answer within ${SUBSCRIBE_TIMEOUT_MS / 1000} s`),
          { name: "TimeoutError" })), SUBSCRIBE_TIMEOUT_MS)),
      ]);
      state.ownDeviceId = (await api("POST", "/api/notifications/subscribe", subscription.toJSON())).id;
      setPushButton("Push on", { pressed: true, title: "Click to turn push notifications off for this browser." });
      toast({ title: "Push notifications on", body: "Messages sent while you are offline will show up as notifications." });
    } catch (err) {
      setPushButton("Enable push", { title: "Try again" });
      const hint = err instanceof ApiError
        ? (err.code === "push_disabled" ? "The server has no VAPID keys configured." : err.message)
        : `${err.message}. Push needs the browser vendor's push service (internet access) and does not work in private windows.`;
      toast({ kind: "error", title: "Could not enable push", body: hint });
    }
  }

  async function disablePush() {
    try {
      await turnPushOff();
    } catch (err) {
      toast({ kind: "error", title: "Could not turn push off", body: err.message });
    }
  }

  /** Forget this browser's subscription on the server (by endpoint, or by its id from the
   * devices panel), then in the browser; the push button follows. Rejects on failure. */
  async function turnPushOff(deviceId) {
    setPushButton("Turning off…", { disabled: true });
    try {
      const subscription = state.registration ? await state.registration.pushManager.getSubscription() : null;
      if (deviceId || subscription) {
        const forget = deviceId
          ? api("DELETE", `/api/notifications/devices/${encodeURIComponent(deviceId)}`)
          : api("DELETE", "/api/notifications/unsubscribe-by-endpoint", { endpoint: subscription.endpoint });
        await forget.catch((err) => {
          if (!(err instanceof ApiError && err.status === 404)) throw err; // already gone
        });
      }
      if (subscription) await subscription.unsubscribe();
      state.ownDeviceId = null;
      setPushButton("Enable push");
    } catch (err) {
      setPushButton("Push on", { pressed: true });
      throw err;
    }
  }

  // ---------------------------------------------------------------- your devices

  /** This browser's push endpoint, if it has a subscription; null otherwise. */
  async function currentEndpoint() {
    if (!state.pushSupported || !state.registration) return null;
    try {
      const subscription = await state.registration.pushManager.getSubscription();
      return subscription ? subscription.endpoint : null;
    } catch (_) {
      return null;
    }
  }

  /** "Chrome on Linux" from a User-Agent; the raw string when nothing is recognised. */
  function describeAgent(ua) {
    if (!ua) return null;
    const browsers = [[/Edg\//, "Edge"], [/OPR\//, "Opera"], [/Firefox\//, "Firefox"], [/Chromium\//, "Chromium"],
      [/Chrome\//, "Chrome"], [/Safari\//, "Safari"]];
    const systems = [[/Android/, "Android"], [/iPhone|iPad/, "iOS"], [/CrOS/, "ChromeOS"], [/Windows/, "Windows"],
      [/Mac OS X|Macintosh/, "macOS"], [/Linux/, "Linux"]];
    const browser = (browsers.find(([re]) => re.test(ua)) || [])[1];
    const system = (systems.find(([re]) => re.test(ua)) || [])[1];
    if (browser && system) return `${browser} on ${system}`;
    return browser || system || (ua.length > 60 ? `${ua.slice(0, 59)}…` : ua);
  }

  function hostOf(url) {
    try {
      return new URL(url).host;
    } catch (_) {
      return url || null;
    }
  }

  /** What the panel shows of one row of GET /api/notifications/subscriptions. */
  function describeDevice(device, ownEndpoint) {
    if (device.type === "webpush") {
      const own = Boolean(ownEndpoint) && device.endpoint === ownEndpoint;
      return {
        own,
        name: own ? "This browser" : "Browser",
        icon: DEVICE_ICONS.browser,
        details: [describeAgent(device.user_agent), hostOf(device.push_service)],
        title: device.user_agent || "",
      };
    }
    return {
      own: false,
      name: DEVICE_KINDS[device.type] || device.type,
      icon: DEVICE_ICONS.phone,
      details: [device.label, device.app_id, device.token_hint && `token ${device.token_hint}`],
      title: "",
    };
  }

  function showDevicesMessage(text, { error = false } = {}) {
    const status = $("#devices-status");
    const alert = $("#devices-error");
    status.textContent = error ? "" : text;
    status.hidden = error || !text;
    alert.textContent = error ? text : "";
    alert.hidden = !error || !text;
  }

  function openDevices() {
    const dialog = $("#devices-dialog");
    if (!dialog.open) dialog.showModal();
    $("#devices-list").replaceChildren();
    $("#devices-empty").hidden = true;
    loadDevices();
  }

  function closeDevices() {
    const dialog = $("#devices-dialog");
    if (dialog.open) dialog.close();
  }

  /** Fetch the list and show it; ``done`` (e.g. "Removed …") is said while it loads and after. */
  async function loadDevices(done = "") {
    const load = (state.devicesLoads += 1);
    const list = $("#devices-list");
    list.setAttribute("aria-busy", "true");
    showDevicesMessage(done || "Loading your devices…");
    try {
      const [data, ownEndpoint] = await Promise.all([api("GET", "/api/notifications/subscriptions"), currentEndpoint()]);
      if (load !== state.devicesLoads) return;
      renderDevices(data.subscriptions, ownEndpoint);
      showDevicesMessage(done);
    } catch (err) {
      if (load !== state.devicesLoads) return;
      showDevicesMessage(`Could not load your devices: ${err.message}`, { error: true });
    } finally {
      if (load === state.devicesLoads) list.removeAttribute("aria-busy");
    }
  }

  function renderDevices(devices, ownEndpoint) {
    const list = $("#devices-list");
    list.replaceChildren();
    for (const device of devices) {
      const shown = describeDevice(device, ownEndpoint);
      const item = el("li", "device");
      item.dataset.deviceId = device.id;
      item.dataset.type = device.type;
      if (shown.own) item.dataset.own = "true";
      const icon = el("span", "device-icon");
      icon.innerHTML = shown.icon;
      const text = el("div", "device-text");
      const name = el("div", "device-name", shown.name);
      const details = shown.details.filter(Boolean);
      const detail = el("div", "device-detail");
      for (const part of details) {
        if (detail.childNodes.length) detail.append(" · ");
        detail.append(el("span", null, part));
      }
      if (shown.title) detail.title = shown.title;
      const status = el("div", "device-status");
      status.append("Last push: ");
      if (device.last_success_at) {
        const time = el("time", null, ago(device.last_success_at));
        time.dateTime = device.last_success_at;
        time.title = new Date(device.last_success_at).toLocaleString();
        status.append(time);
      } else {
        status.append("never");
      }
      if (device.failure_count > 0) {
        const failures = device.failure_count === 1 ? "1 failed attempt" : `${device.failure_count} failed attempts`;
        status.append(" · ", el("span", "device-failures", failures));
      }
      text.append(name);
      if (details.length) text.append(detail);
      text.append(status);
      const remove = el("button", "btn small device-remove", "Remove");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove ${[shown.name, device.label].filter(Boolean).join(", ")}`);
      remove.addEventListener("click", () => removeDevice(device, shown, remove));
      item.append(icon, text, remove);
      list.append(item);
    }
    $("#devices-empty").hidden = devices.length > 0;
  }

  async function removeDevice(device, shown, button) {
    button.disabled = true;
    button.textContent = "Removing…";
    showDevicesMessage("");
    try {
      if (shown.own) {
        await turnPushOff(device.id); // also unsubscribes this browser, as the push button does
      } else {
        await api("DELETE", `/api/notifications/devices/${encodeURIComponent(device.id)}`).catch((err) => {
          if (!(err instanceof ApiError && err.status === 404)) throw err; // removed meanwhile
        });
      }
    } catch (err) {
      button.disabled = false;
      button.textContent = "Remove";
      showDevicesMessage(`Could not remove ${shown.name}: ${err.message}`, { error: true });
      return;
    }
    $("#devices-close").focus(); // the row and its button go away
    const removed = shown.own ? "this browser; push notifications are off here" : [shown.name, device.label].filter(Boolean).join(", ");
    await loadDevices(`Removed ${removed}.`);
  }

  function onServiceWorkerMessage(event) {
    const message = event.data || {};
    if (message.type === "beacon:open-topic" && message.topic_id) {
      const open = () => openTopic(message.topic_id, message.message_id);
      if (state.topics.has(message.topic_id)) open();
      else loadTopics().then(open).catch(() => {});
    } else if (message.type === "beacon:subscription-changed" && state.token) {
      setupPush().catch(() => {});
    }
  }

  // ---------------------------------------------------------------- start

  async function boot() {
    $("#user-filter").addEventListener("input", onFilterInput);
    $("#token-form").addEventListener("submit", loginWithToken);
    $("#switch-user").addEventListener("click", () => { clearSession(); showLogin(); });
    $("#composer").addEventListener("submit", sendMessage);
    $("#push-button").addEventListener("click", () => togglePush());
    $("#snooze-button").addEventListener("click", () => toggleSnooze());
    $("#devices-button").addEventListener("click", () => openDevices());
    $("#devices-close").addEventListener("click", () => closeDevices());
    $("#devices-dialog").addEventListener("click", (event) => {
      if (event.target === event.currentTarget) closeDevices(); // a click on the backdrop
    });
    $("#notify-level").addEventListener("change", () => setTopicLevel("level"));
    $("#topic-email-level").addEventListener("change", () => setTopicLevel("email_level"));
    $("#settings-button").addEventListener("click", () => openSettings());
    $("#settings-close").addEventListener("click", () => closeDialog("#settings-dialog"));
    $("#settings-form").addEventListener("submit", (event) => event.preventDefault());
    $("#email-level").addEventListener("change", (event) => saveSetting({ email_level: event.target.value }));
    $("#email-delay").addEventListener("change", (event) => {
      saveSetting({ email_delay: event.target.value === "" ? null : Number(event.target.value) });
    });
    $("#push-when-idle").addEventListener("change", (event) => saveSetting({ push_when_idle: event.target.checked }));
    $("#share-read-receipts").addEventListener("change", (event) => saveSetting({ share_read_receipts: event.target.checked }));
    $("#test-push-button").addEventListener("click", () => sendTestPush());
    $("#emails-button").addEventListener("click", () => openEmails());
    $("#emails-refresh").addEventListener("click", () => loadEmails());
    $("#emails-close").addEventListener("click", () => closeDialog("#emails-dialog"));
    for (const selector of ["#settings-dialog", "#emails-dialog"]) {
      $(selector).addEventListener("click", (event) => {
        if (event.target === event.currentTarget) closeDialog(selector); // a click on the backdrop
      });
    }
    $("#people-more").addEventListener("click", () => { state.showAllPeople = !state.showAllPeople; renderPeople(); });
    const input = $("#composer-input");
    input.addEventListener("input", autoGrow);
    input.addEventListener("input", sendTyping);
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("#composer").requestSubmit();
      }
    });
    // Attention: input keeps the page active, hiding it makes it idle (see setAttention). Not
    // "scroll": the page scrolls by itself when a message arrives (wheel, touch and keys cover
    // the user's scrolling).
    document.addEventListener("visibilitychange", onVisibilityChange);
    for (const type of ["pointerdown", "keydown", "wheel", "touchstart", "focusin"]) {
      document.addEventListener(type, onActivity, { capture: true, passive: true });
    }
    document.addEventListener("pointermove", onPointerMove, { capture: true, passive: true });
    window.addEventListener("focus", onActivity);
    setAttention(currentAttention());
    setInterval(() => { if (state.me) renderPeople(); }, 30000); // keep "last seen" fresh
    if ("serviceWorker" in navigator) {
      navigator.serviceWorker.addEventListener("message", onServiceWorkerMessage);
      registerServiceWorker();
    }

    await loadDevUsers("");
    const saved = loadSession();
    if (saved) {
      state.token = saved.token;
      state.username = saved.username;
      try {
        await startApp();
        return;
      } catch (err) {
        clearSession();
      }
    }
    showLogin();
  }

  boot().catch((err) => {
    console.error(err);
    toast({ kind: "error", title: "Beacon could not start", body: err.message });
  });
})();
