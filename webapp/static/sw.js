/* Beacon service worker: shows Web Push notifications and opens the topic when one is clicked.
 *
 * Served at /sw.js (scope "/"). The server pushes JSON (docs/PROTOCOL.md, "Web Push payload"):
 *   {type: "message"|"mention", title, body, count, topic_id, room_id, message_id, url}
 * count is how many messages the push stands for (1, or more when the server coalesced a busy
 * topic: the title then says "N new messages in <topic>"); the tag below makes it replace the
 * topic's previous notification.
 * It only pushes to users with no live connection, so every push becomes a notification
 * (pushManager.subscribe was called with userVisibleOnly: true, which promises exactly that).
 */
"use strict";

const ICON = "/static/icon-192.png";
const BADGE = "/static/badge-72.png";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

/** The push payload as an object; a malformed one still becomes a readable notification. */
function readPayload(event) {
  if (!event.data) return {};
  try {
    const value = event.data.json();
    return value && typeof value === "object" ? value : { body: String(value) };
  } catch (_) {
    return { body: event.data.text() };
  }
}

function notificationFor(payload) {
  const topicId = typeof payload.topic_id === "string" ? payload.topic_id : "";
  return {
    title: payload.title || "Beacon",
    options: {
      body: payload.body || "",
      // One notification per topic: a newer message replaces the older one (and alerts again).
      tag: topicId || "beacon",
      renotify: true,
      requireInteraction: payload.type === "mention",
      icon: ICON,
      badge: BADGE,
      timestamp: Date.now(),
      data: {
        url: payload.url || "/",
        type: payload.type || "message",
        topic_id: topicId,
        room_id: payload.room_id || "",
        message_id: payload.message_id || null,
      },
    },
  };
}

self.addEventListener("push", (event) => {
  const { title, options } = notificationFor(readPayload(event));
  event.waitUntil(self.registration.showNotification(title, options));
});

/** Focus a Beacon tab (the one on this topic if there is one) and open the topic; else a new tab. */
async function openTopic(data) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const ours = windows.filter((client) => new URL(client.url).origin === self.location.origin);
  const onTopic = ours.find((client) => new URL(client.url).searchParams.get("topic") === data.topic_id);
  const client = onTopic || ours.find((c) => c.focused) || ours[0];
  if (client) {
    client.postMessage({
      type: "beacon:open-topic",
      topic_id: data.topic_id,
      room_id: data.room_id,
      message_id: data.message_id,
    });
    try {
      return await client.focus();
    } catch (_) {
      return client; // focus() is only allowed while handling a real click
    }
  }
  return self.clients.openWindow(data.url || "/");
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(openTopic(event.notification.data || {}));
});

/** The browser replaced the subscription: open tabs re-register it (they hold the token). */
self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((windows) => {
      for (const client of windows) client.postMessage({ type: "beacon:subscription-changed" });
    }),
  );
});
