// Hookline dashboard: refreshes the figures of an open page without a reload. Every
// element marked `data-live` (with an id) is replaced by its newer copy from the same URL
// every `data-refresh-ms` milliseconds, while the tab is visible. Forms are left alone.
"use strict";
(function () {
  const period = Number(document.body.dataset.refreshMs || 0);
  if (!period || !document.querySelector("[data-live][id]")) return;
  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const answer = await fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (!answer.ok || answer.redirected) return;
      const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
      for (const old of document.querySelectorAll("[data-live][id]")) {
        const replacement = fresh.getElementById(old.id);
        if (replacement) old.replaceWith(document.importNode(replacement, true));
      }
      document.body.dataset.refreshedAt = String(Date.now());
    } catch (e) {
      // Offline or restarting: try again at the next tick.
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, period);
})();
