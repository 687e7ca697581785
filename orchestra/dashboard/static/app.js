// orchestra dashboard: the only script. Every page works without it; it adds
// * the confirmation buttons' wait for their checkbox (the server checks too);
// * the live refresh of the overview, the jobs list and the charts: the
//   region marked data-live-url is fetched again as JSON ({"regions": {id:
//   html}}, rendered and escaped by the server's templates) every
//   data-live-interval ms, with a pause/resume button remembered by the browser;
// * ticking every job of the list at once, and the count on the bulk buttons.
"use strict";
(function () {
  var PAUSED_KEY = "orchestra.dashboard.live.paused";
  var BACKOFF_MAX = 8; // at most 8 intervals between tries after failures

  function readPaused() {
    try { return window.localStorage.getItem(PAUSED_KEY) === "1"; } catch (e) { return false; }
  }

  function writePaused(paused) {
    try {
      if (paused) { window.localStorage.setItem(PAUSED_KEY, "1"); }
      else { window.localStorage.removeItem(PAUSED_KEY); }
    } catch (e) { /* storage refused: the choice lasts for this page only */ }
  }

  function enableOnTick() {
    document.querySelectorAll("input[type=checkbox][data-enables]").forEach(function (box) {
      var button = document.getElementById(box.getAttribute("data-enables"));
      if (!button) { return; }
      var sync = function () { button.disabled = !box.checked; };
      box.addEventListener("change", sync);
      sync();
    });
  }

  // -- selection and bulk buttons -------------------------------------------------

  function picks() {
    return Array.prototype.slice.call(document.querySelectorAll("input[type=checkbox][name=id][form=bulk]"));
  }

  function syncSelection() {
    var boxes = picks();
    var ticked = boxes.filter(function (b) { return b.checked; }).length;
    document.querySelectorAll("button[data-bulk]").forEach(function (button) {
      button.disabled = ticked === 0;
      button.textContent = button.getAttribute("data-bulk") + " selected" + (ticked ? " (" + ticked + ")" : "");
    });
    var count = document.querySelector("[data-selected-count]");
    if (count) {
      count.textContent = ticked ? ticked + " selected" : "Tick jobs below to act on several at once.";
    }
    var all = document.querySelector("input[data-select-all]");
    if (all) {
      all.hidden = false;
      all.checked = boxes.length > 0 && ticked === boxes.length;
      all.indeterminate = ticked > 0 && ticked < boxes.length;
    }
  }

  function watchSelection() {
    document.addEventListener("change", function (event) {
      var target = event.target;
      if (!(target instanceof HTMLInputElement)) { return; }
      if (target.hasAttribute("data-select-all")) {
        picks().forEach(function (box) { box.checked = target.checked; });
      }
      if (target.hasAttribute("data-select-all") || target.getAttribute("form") === "bulk") {
        syncSelection();
      }
    });
    syncSelection();
  }

  // -- live refresh ---------------------------------------------------------------

  function utcTime(iso) {
    // "2024-05-01T12:34:56.789+00:00" -> "12:34:56"
    return typeof iso === "string" && iso.length >= 19 ? iso.substr(11, 8) : "";
  }

  function startLive(region) {
    var control = document.querySelector("[data-live-control]");
    if (!control) { return; }
    var url = region.getAttribute("data-live-url");
    var interval = parseInt(region.getAttribute("data-live-interval"), 10) || 5000;
    var state = control.querySelector("[data-live-state]");
    var toggle = control.querySelector("[data-live-toggle]");
    var paused = readPaused();
    var failures = 0;
    var timer = null;
    var inFlight = false;
    var updatedAt = "";

    function show() {
      control.classList.toggle("live-paused", paused);
      control.classList.toggle("live-failing", failures > 0);
      toggle.textContent = paused ? "Resume" : "Pause";
      toggle.setAttribute("aria-pressed", paused ? "true" : "false");
      if (paused) {
        state.textContent = "paused" + (updatedAt ? " · as of " + updatedAt + " UTC" : "");
      } else if (!failures) {
        state.textContent = "live" + (updatedAt ? " · updated " + updatedAt + " UTC" : "");
      }
    }

    function schedule() {
      window.clearTimeout(timer);
      timer = null;
      if (paused || document.hidden) { return; }
      timer = window.setTimeout(refresh, interval * Math.min(BACKOFF_MAX, Math.pow(2, failures)));
    }

    function apply(document_) {
      var kept = {};
      picks().forEach(function (box) { if (box.checked) { kept[box.value] = true; } });
      Object.keys(document_.regions || {}).forEach(function (id) {
        var element = document.getElementById(id);
        if (element) { element.innerHTML = document_.regions[id]; }
      });
      picks().forEach(function (box) { if (kept[box.value]) { box.checked = true; } });
      syncSelection();
      updatedAt = utcTime(document_.now);
    }

    function refresh() {
      if (inFlight || paused) { return; }
      inFlight = true;
      window.fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
        .then(function (response) {
          return response.json().catch(function () { return {}; }).then(function (body) {
            if (!response.ok) {
              throw new Error(body.error || "HTTP " + response.status);
            }
            return body;
          });
        })
        .then(function (body) {
          apply(body);
          failures = 0;
        })
        .catch(function (error) {
          failures += 1;
          state.textContent = "refresh failed: " + error.message + " (trying again)";
        })
        .then(function () {
          inFlight = false;
          show();
          schedule();
        });
    }

    toggle.addEventListener("click", function () {
      paused = !paused;
      writePaused(paused);
      show();
      if (paused) { schedule(); } else { failures = 0; refresh(); }
    });
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { schedule(); } else if (!paused) { refresh(); }
    });
    control.hidden = false;
    show();
    schedule();
  }

  document.addEventListener("DOMContentLoaded", function () {
    enableOnTick();
    watchSelection();
    var region = document.querySelector("[data-live-url]");
    if (region) { startLive(region); }
  });
})();
