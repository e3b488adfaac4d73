// hami web UI: refresh the #live region in place (no full page reload). Pages work without this
// file; it only fetches the same page with ?fragment=1 every data-refresh-ms milliseconds and swaps
// the region when it changed. Focus is kept on the same link or control when it still exists.
"use strict";
(function () {
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  var toggle = document.getElementById("live-toggle");
  if (!live || !window.fetch) { return; }
  var every = parseInt(live.getAttribute("data-refresh-ms"), 10) || 2000;
  var paused = false;
  var last = live.innerHTML;
  var failures = 0;

  function fragmentUrl() {
    var params = new URLSearchParams(window.location.search);
    params.set("fragment", "1");
    return window.location.pathname + "?" + params.toString();
  }

  function focusPath() {
    var el = document.activeElement;
    if (!el || !live.contains(el)) { return null; }
    var all = live.querySelectorAll("a, button, summary, input");
    for (var i = 0; i < all.length; i++) { if (all[i] === el) { return i; } }
    return null;
  }

  function say(text) { if (status) { status.textContent = text; } }

  function refresh() {
    if (paused || document.hidden) { return; }
    fetch(fragmentUrl(), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        failures = 0;
        if (html === last) { return; }
        var open = [];
        live.querySelectorAll("details").forEach(function (d, i) { if (d.open) { open.push(i); } });
        var focused = focusPath();
        live.innerHTML = html;
        last = live.innerHTML;
        var details = live.querySelectorAll("details");
        open.forEach(function (i) { if (details[i]) { details[i].open = true; } });
        if (focused !== null) {
          var all = live.querySelectorAll("a, button, summary, input");
          if (all[focused]) { all[focused].focus(); }
        }
        say("Updated " + new Date().toLocaleTimeString());
      })
      .catch(function () {
        failures += 1;
        say("Live updates failing (" + failures + "); showing the last data");
      });
  }

  if (toggle) {
    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.setAttribute("aria-pressed", paused ? "true" : "false");
      toggle.textContent = paused ? "Resume live updates" : "Pause live updates";
      say(paused ? "Live updates paused" : "Live updates on");
    });
  }
  window.setInterval(refresh, every);
})();
