// The pages' only script: live updates, progress for long operations, waiting timers.
// Served from /static (the Content-Security-Policy allows no inline script).
"use strict";

(() => {
  // -- live updates ---------------------------------------------------------------------------
  // The server only says "something changed" (never what: events may concern personal data);
  // each [data-fragment] element is then re-fetched, authorised like the page itself.
  let pending = null;
  let busy = false;

  function restoreInputs(el, saved) {
    for (const [name, value] of saved.radios) {
      for (const input of el.querySelectorAll("input[type=radio]")) {
        if (input.name === name && input.value === value && !input.disabled) input.checked = true;
      }
    }
  }

  // Unchanged content is left alone (an image being looked at, a radio being chosen); the waiting
  // timers' text is the script's own and does not count.
  function sameContent(el, html) {
    const fresh = el.cloneNode(false);
    fresh.innerHTML = html;
    const current = el.cloneNode(true);
    for (const node of [fresh, current]) node.querySelectorAll(".elapsed").forEach((n) => { n.textContent = ""; });
    return fresh.isEqualNode(current);
  }

  function swap(el, html) {
    if (el.tagName === "SELECT") {
      const value = el.value;
      el.innerHTML = html;
      if (value && [...el.options].some((o) => o.value === value)) el.value = value;
      return;
    }
    const saved = {
      radios: [...el.querySelectorAll("input[type=radio]:checked")].map((i) => [i.name, i.value]),
    };
    el.innerHTML = html;
    restoreInputs(el, saved);
  }

  async function refresh() {
    if (busy) { schedule(); return; }
    busy = true;
    try {
      for (const el of document.querySelectorAll("[data-fragment]")) {
        if (el.closest("form.submitting")) continue;  // never swap a form that is being sent
        try {
          const response = await fetch(el.dataset.fragment, { credentials: "same-origin", cache: "no-store" });
          if (response.status === 401) { window.location.reload(); return; }
          if (!response.ok) continue;
          const html = await response.text();
          if (!sameContent(el, html)) swap(el, html);
        } catch (e) { /* the next event retries */ }
      }
      document.body.dataset.refreshed = String(Date.now());
    } finally {
      busy = false;
    }
  }

  function schedule() {
    clearTimeout(pending);
    pending = setTimeout(refresh, 150);
  }

  function connect() {
    const url = document.body.dataset.live;
    const state = document.getElementById("live-state");
    if (!url || !window.EventSource) return;
    const source = new EventSource(url);
    source.onopen = () => { if (state) { state.textContent = "live"; state.className = "live-state on"; } };
    source.onerror = () => { if (state) { state.textContent = "reconnecting…"; state.className = "live-state off"; } };
    // every message, the "hello" of each (re)connection included: whatever changed between the page
    // being rendered and the stream being open is fetched then (unchanged fragments stay as they are)
    source.onmessage = () => schedule();
  }

  // -- long operations --------------------------------------------------------------------------
  // A form with data-progress says what is happening while the server works (the chain and the
  // agents take seconds), and cannot be sent twice.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.classList.contains("submitting")) { event.preventDefault(); return; }
    if (!form.dataset.progress) return;
    form.classList.add("submitting");
    setTimeout(() => form.querySelectorAll("button").forEach((b) => { b.disabled = true; }), 0);
    const note = document.createElement("p");
    note.className = "status waiting progress";
    note.setAttribute("role", "status");
    note.dataset.since = String(Date.now() / 1000);
    note.innerHTML = '<span class="spinner" aria-hidden="true"></span><span class="text"></span> <span class="elapsed"></span>';
    note.querySelector(".text").textContent = form.dataset.progress;
    form.append(note);
  });
  // back/forward cache: a restored page must not keep its forms locked
  window.addEventListener("pageshow", (event) => {
    if (!event.persisted) return;
    document.querySelectorAll("form.submitting").forEach((form) => {
      form.classList.remove("submitting");
      form.querySelectorAll("button").forEach((b) => { b.disabled = false; });
      form.querySelectorAll(".progress").forEach((n) => n.remove());
    });
  });

  // -- waiting timers ---------------------------------------------------------------------------------
  const started = Date.now() / 1000;
  setInterval(() => {
    for (const el of document.querySelectorAll(".waiting")) {
      const since = Number(el.dataset.since || started);
      const out = el.querySelector(".elapsed");
      if (out) out.textContent = `${Math.max(0, Math.round(Date.now() / 1000 - since))} s`;
    }
  }, 1000);

  connect();
})();
