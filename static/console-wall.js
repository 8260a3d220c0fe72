// Console Wall page behaviour. A static file on purpose: the CSP allows no inline script and no eval,
// so everything htmx would do with trigger filters or hx-on lives here.
(() => {
  "use strict";

  const MAX_BACKOFF_MS = 60_000;

  const clock = (date) => date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });

  function ago(seconds) {
    if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  // --- Times: ages tick every second; absolute times are shown in the viewer's own timezone. -------
  function renderLocalTimes(root) {
    for (const el of root.querySelectorAll("time.local[datetime]")) {
      const date = new Date(el.getAttribute("datetime"));
      if (!Number.isNaN(date.getTime())) {
        el.textContent = date.toLocaleString([], {
          year: "numeric", month: "2-digit", day: "2-digit",
          hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
        });
        el.title = el.getAttribute("datetime");
      }
    }
    for (const el of root.querySelectorAll("time.local-time[datetime]")) {
      const date = new Date(el.getAttribute("datetime"));
      if (!Number.isNaN(date.getTime())) el.textContent = date.toLocaleTimeString([], { hourCycle: "h23" });
    }
  }

  function tick() {
    const now = Date.now();
    const wallClock = document.getElementById("wall-clock");
    if (wallClock) wallClock.textContent = clock(new Date(now));
    for (const el of document.querySelectorAll("time.ago[datetime]")) {
      const then = Date.parse(el.getAttribute("datetime"));
      if (!Number.isNaN(then)) el.textContent = ago((now - then) / 1000);
    }
    // Stale is a state even when no poll brings news (workers down): decided here from the tile's own data.
    for (const tile of document.querySelectorAll(".tile[data-stale-after]")) {
      const staleAfter = Date.parse(tile.dataset.staleAfter);
      tile.classList.toggle("is-stale", !Number.isNaN(staleAfter) && now > staleAfter);
    }
    const meta = document.getElementById("grid-meta");
    const quiet = document.getElementById("quiet-banner");
    if (meta && quiet) {
      const newest = Date.parse(meta.dataset.newestSuccess || "");
      const limit = Number(meta.dataset.quietAfterSeconds || 120) * 1000;
      const silent = Number.isNaN(newest) ? false : now - newest > limit;
      quiet.hidden = !silent;
      if (silent) {
        quiet.textContent = `No capture has landed for ${ago((now - newest) / 1000).replace(" ago", "")}` +
          " — are the capture workers running?";
      }
    }
  }

  // --- Polling: one request per page per interval, paused while hidden, backing off when failing. ---
  function startPoller(el) {
    const base = (Number(el.dataset.pollSeconds) || 5) * 1000;
    const banner = document.getElementById("connection-banner");
    const heard = document.getElementById("last-heard");
    const isWall = el.dataset.mode === "wall";
    let delay = base;
    let timer = null;
    let inFlight = false;
    let lastOk = new Date();
    let offlineSince = null;

    const schedule = (ms) => {
      clearTimeout(timer);
      timer = setTimeout(poll, ms);
    };

    function poll() {
      timer = null;
      if (document.visibilityState !== "visible" || inFlight) return;
      inFlight = true;
      htmx.trigger(el, "cw:poll");
    }

    el.addEventListener("htmx:afterRequest", (event) => {
      inFlight = false;
      const xhr = event.detail.xhr;
      if (event.detail.successful && xhr && xhr.responseURL && new URL(xhr.responseURL).pathname.startsWith("/login")) {
        location.reload(); // the session ended: let the server send us to the login page
        return;
      }
      if (event.detail.successful) {
        // A new release: reload, but only now that the server has just answered.
        const version = xhr && xhr.getResponseHeader("X-Console-Wall-Version");
        if (version && el.dataset.version && version !== el.dataset.version) {
          location.reload();
          return;
        }
        lastOk = new Date();
        offlineSince = null;
        delay = base;
        if (banner) banner.hidden = true;
        if (heard) heard.textContent = lastOk.toLocaleTimeString([], { hourCycle: "h23" });
        document.body.classList.remove("is-offline");
      } else {
        offlineSince = offlineSince || new Date();
        delay = Math.min(delay * 2, MAX_BACKOFF_MS);
        if (banner) {
          banner.textContent = isWall
            ? `Offline since ${clock(offlineSince)} — showing the last pictures, as of ${clock(lastOk)}.`
            : `Connection lost — showing data as of ${clock(lastOk)}. Retrying in ${Math.round(delay / 1000)} s.`;
          banner.hidden = false;
        }
        document.body.classList.add("is-offline");
      }
      schedule(delay + Math.random() * 500);
    });

    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") {
        schedule(0); // catch up at once
      } else {
        clearTimeout(timer);
        timer = null;
      }
    });
    schedule(delay);

    // A playlist display moves to its next board, but never onto an error page: only once that page answers.
    const next = el.dataset.rotateUrl;
    const every = Number(el.dataset.rotateSeconds) * 1000;
    if (next && every > 0) {
      const rotate = () => {
        fetch(next, { credentials: "same-origin", cache: "no-store" })
          .then((response) => (response.ok ? location.assign(next) : setTimeout(rotate, base)))
          .catch(() => setTimeout(rotate, base));
      };
      setTimeout(rotate, every);
    }
  }

  // --- No flicker: a tile whose image changes is swapped only once the new image is decoded. ------
  const pending = new Map();

  document.addEventListener("htmx:oobBeforeSwap", (event) => {
    const { target, fragment } = event.detail;
    const incoming = fragment && fragment.firstElementChild;
    if (!incoming || !target.id) return;
    const newImg = incoming.querySelector("img");
    const oldImg = target.querySelector("img");
    if (!newImg || (oldImg && oldImg.getAttribute("src") === newImg.getAttribute("src"))) return;
    event.detail.shouldSwap = false;
    pending.set(target.id, incoming);
    const loader = new Image();
    loader.src = newImg.getAttribute("src");
    const swap = () => {
      if (pending.get(target.id) !== incoming) return; // a newer update for this tile came meanwhile
      pending.delete(target.id);
      const current = document.getElementById(target.id);
      if (!current) return;
      current.replaceWith(incoming);
      htmx.process(incoming);
      renderLocalTimes(incoming);
      tick();
    };
    loader.decode().then(swap, swap);
  });

  htmx.onLoad((root) => {
    renderLocalTimes(root);
  });

  document.addEventListener("DOMContentLoaded", () => {
    renderLocalTimes(document);
    tick();
    setInterval(tick, 1000);
    const poller = document.getElementById("poller");
    if (poller) startPoller(poller);
  });
})();
