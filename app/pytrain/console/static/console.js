// PyTrain console: live status, progress and version of the tasks on the page (server-sent events
// from /events). Values are set with textContent only, so nothing from a task becomes markup.
(function () {
  "use strict";
  var nodes = document.querySelectorAll("[data-task-id]");
  var ids = [];
  var ended = {};  // tasks that had ended when the page was rendered
  nodes.forEach(function (node) {
    var id = node.getAttribute("data-task-id");
    if (ids.indexOf(id) < 0) { ids.push(id); }
    var status = node.querySelector('[data-field="status"]');
    if (status && ["succeeded", "failed", "cancelled"].indexOf(status.textContent.trim()) >= 0) { ended[id] = true; }
  });
  if (!ids.length || !window.EventSource) { return; }

  function set(node, field, text) {
    node.querySelectorAll('[data-field="' + field + '"]').forEach(function (el) { el.textContent = text; });
  }

  function update(state) {
    document.querySelectorAll('[data-task-id="' + state.id + '"]').forEach(function (node) {
      node.querySelectorAll('[data-field="status"]').forEach(function (el) {
        el.textContent = state.status;
        el.className = "status status-" + state.status;
      });
      node.querySelectorAll('progress[data-field="percent"]').forEach(function (el) {
        el.value = state.percent;
        el.textContent = state.percent + " %";
      });
      set(node, "progress", state.progress);
      set(node, "version", state.version === null ? "" : String(state.version));
      set(node, "error", state.error);
      node.querySelectorAll('[data-show="active"]').forEach(function (el) {
        el.hidden = state.status !== "queued" && state.status !== "running";
      });
      node.querySelectorAll('[data-show="retryable"]').forEach(function (el) {
        el.hidden = state.status !== "failed" && state.status !== "cancelled";
      });
      if (state.final && !ended[state.id]) {  // rendered before the end: offer the final figures
        node.querySelectorAll('[data-show="ended"]').forEach(function (el) { el.hidden = false; });
      }
    });
  }

  var source = new EventSource("/events?ids=" + ids.join(","));
  source.onmessage = function (event) {
    JSON.parse(event.data).forEach(update);
  };
})();
