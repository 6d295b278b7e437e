// Agent Vault admin UI: the little JavaScript the pages use. Everything works
// without it; it adds confirmation prompts and the live audit view. Loaded
// from 'self' only (the CSP allows no inline script); it never builds HTML
// from strings, only text nodes.
"use strict";

document.addEventListener("submit", function (ev) {
  var form = ev.target;
  var msg = form.getAttribute && form.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) {
    ev.preventDefault();
  }
});

// A page restored from the back/forward cache must not keep typed secrets.
window.addEventListener("pageshow", function () {
  var inputs = document.querySelectorAll("input[type=password]");
  for (var i = 0; i < inputs.length; i++) {
    inputs[i].value = "";
  }
});

(function () {
  var box = document.getElementById("audit-live");
  var body = document.getElementById("audit-rows");
  var state = document.getElementById("audit-live-state");
  if (!box || !body) {
    return;
  }
  var source = null;
  var maxRows = 500;

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) {
      td.className = cls;
    }
    td.textContent = text == null ? "" : String(text);
    tr.appendChild(td);
    return td;
  }

  function fmtTime(s) {
    var d = new Date(s);
    if (isNaN(d.getTime())) {
      return s || "";
    }
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function row(ev) {
    var tr = document.createElement("tr");
    tr.className = "fresh";
    var actor = ev.actor || {};
    var target = ev.target || "";
    if (ev.service) {
      target += " service " + ev.service;
    }
    if (ev.credential) {
      target += " credential " + ev.credential;
    }
    cell(tr, ev.seq, "num");
    cell(tr, fmtTime(ev.time));
    cell(tr, (actor.kind || "") + " " + (actor.name || ""));
    cell(tr, ev.vault);
    cell(tr, ev.action);
    cell(tr, target.trim());
    var td = cell(tr, "");
    if (ev.decision) {
      var span = document.createElement("span");
      span.className = "state " + (ev.decision === "allow" ? "allow" : "deny");
      span.textContent = ev.decision;
      td.appendChild(span);
    }
    cell(tr, ev.reason);
    cell(tr, (ev.method ? ev.method + " " : "") + (ev.host || "") + (ev.path || ""));
    cell(tr, ev.status || "", "num");
    return tr;
  }

  function start() {
    source = new EventSource(box.getAttribute("data-stream"));
    state.textContent = "connecting…";
    source.onopen = function () {
      state.textContent = "following";
    };
    source.onerror = function () {
      state.textContent = "reconnecting…";
    };
    source.addEventListener("audit", function (msg) {
      var ev;
      try {
        ev = JSON.parse(msg.data);
      } catch (e) {
        return;
      }
      body.insertBefore(row(ev), body.firstChild);
      while (body.rows.length > maxRows) {
        body.deleteRow(body.rows.length - 1);
      }
    });
  }

  function stop() {
    if (source) {
      source.close();
      source = null;
    }
    state.textContent = "";
  }

  box.addEventListener("change", function () {
    if (box.checked) {
      start();
    } else {
      stop();
    }
  });
})();
