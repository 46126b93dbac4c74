// The Conversations page's selection, checks, submission and progress, over the JSON API.
// Browsing works without this file: filters, sorting and paging are plain links and forms.
(function () {
  "use strict";

  var SELECTION_KEY = "brightrun.selection";
  var REQUEST_KEY = "brightrun.request";
  var NEW_FILE = "";
  var STEPS = ["pending", "queued", "running", "end"];

  function $(id) { return document.getElementById(id); }

  // Selects that change the listing reload it at once (the Apply button stays for keyboards);
  // fields left at "any" stay out of the URL, which is the view to share.
  document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
    function send() {
      Array.prototype.forEach.call(form.elements, function (field) {
        if (field.name && field.value === "") { field.disabled = true; }
      });
    }
    form.addEventListener("submit", send);
    // Back to this page from the history: the fields are usable again.
    window.addEventListener("pageshow", function () {
      Array.prototype.forEach.call(form.elements, function (field) { field.disabled = false; });
    });
    form.querySelectorAll("select").forEach(function (select) {
      select.addEventListener("change", function () { send(); form.submit(); });
    });
  });

  var bar = $("selection");
  if (!bar) { return; }
  var MAX = Number(bar.dataset.max);
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var panel = $("create-panel");
  var target = $("target");
  var boxes = Array.prototype.slice.call(
    document.querySelectorAll("table.conversations tbody input[type=checkbox]"));

  // --- The selection, kept for this browser tab across pages and filters ---

  function loadSelection() {
    try {
      var ids = JSON.parse(sessionStorage.getItem(SELECTION_KEY) || "[]");
      return Array.isArray(ids) ? ids.filter(function (id) { return typeof id === "string"; }) : [];
    } catch (e) {
      return [];
    }
  }

  var selection = loadSelection();

  function saveSelection() {
    sessionStorage.setItem(SELECTION_KEY, JSON.stringify(selection));
    showSelection();
  }

  function showSelection() {
    $("selection-count").textContent = selection.length + " selected (max " + MAX + ")";
    boxes.forEach(function (box) {
      var chosen = selection.indexOf(box.value) >= 0;
      var row = box.closest("tr");
      box.checked = chosen;
      // An ineligible row cannot be ticked; one selected before it became ineligible can be
      // unticked.
      box.disabled = row.hasAttribute("data-ineligible") && !chosen;
      row.classList.toggle("selected", chosen);
    });
  }

  function say(text, kind) {
    var message = $("selection-message");
    message.textContent = text;
    message.className = "message " + (kind || "");
    message.hidden = !text;
  }

  boxes.forEach(function (box) {
    box.addEventListener("change", function () {
      var at = selection.indexOf(box.value);
      if (box.checked && at < 0) {
        if (selection.length >= MAX) {
          box.checked = false;
          say("A request holds at most " + MAX + " conversations: " + selection.length +
              " are selected. Untick some, or clear the selection, first.", "error");
          return;
        }
        selection.push(box.value);
      } else if (!box.checked && at >= 0) {
        selection.splice(at, 1);
      }
      say("");
      saveSelection();
    });
  });

  $("clear-selection").addEventListener("click", function () {
    selection = [];
    say("");
    clearProblems();
    saveSelection();
  });

  var batchButton = $("select-batch");
  if (batchButton) {
    batchButton.addEventListener("click", function () {
      var url = "/api/batches/" + encodeURIComponent(batchButton.dataset.batch) + "/eligible";
      if (target.value !== NEW_FILE) { url += "?file=" + encodeURIComponent(target.value); }
      call("GET", url).then(function (answer) {
        if (!answer.ok) { say(errorText(answer), "error"); return; }
        var added = 0, full = 0;
        answer.data.conversation_ids.forEach(function (id) {
          if (selection.indexOf(id) >= 0) { return; }
          if (selection.length >= MAX) { full += 1; return; }
          selection.push(id);
          added += 1;
        });
        var leftOut = Object.keys(answer.data.left_out).length;
        var text = "Added " + added + " eligible conversation" + (added === 1 ? "" : "s") +
            " of this batch" + (target.value !== NEW_FILE ? " not yet in the chosen file" : "") + ".";
        if (leftOut) { text += " " + leftOut + " cannot be added (ineligible or already in the file)."; }
        if (full) { text += " " + full + " more did not fit: a request holds at most " + MAX + "."; }
        say(text, full ? "error" : "");
        saveSelection();
      });
    });
  }

  // --- The JSON API ---

  function call(method, url, body) {
    var options = { method: method, credentials: "same-origin",
                    headers: { "Accept": "application/json", "X-CSRF-Token": csrf } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (data) {
        return { ok: response.ok, status: response.status, data: data };
      });
    }, function () {
      return { ok: false, status: 0, data: null };
    });
  }

  function errorText(answer) {
    if (answer.status === 0) { return "The console did not answer; is it still running?"; }
    var error = answer.data && answer.data.error;
    return (error && error.message) || ("The console answered " + answer.status + ".");
  }

  // --- Reasons per conversation: in its table row, and all of them in the panel ---

  function clearProblems() {
    document.querySelectorAll("tr.problem-note, tr.warning-note").forEach(function (note) { note.remove(); });
    document.querySelectorAll("tr.problem, tr.warning").forEach(function (row) {
      row.classList.remove("problem", "warning");
    });
    var list = $("problems");
    list.innerHTML = "";
    list.hidden = true;
  }

  // Warnings (near-duplicates of a file that warns rather than blocks) are shown the same way,
  // styled as warnings: the selection can still be submitted.
  function showProblems(reasons, warnings) {
    clearProblems();
    var list = $("problems");
    function show(notes, kind, label) {
      Object.keys(notes || {}).forEach(function (id) {
        var item = document.createElement("li");
        var code = document.createElement("code");
        code.textContent = id;
        item.appendChild(code);
        item.appendChild(document.createTextNode(": " + notes[id]));
        item.dataset.id = id;
        item.className = kind;
        list.appendChild(item);
        var row = document.querySelector('table.conversations tr[data-id="' + CSS.escape(id) + '"]');
        if (row) {
          row.classList.add(kind);
          var note = document.createElement("tr");
          var cell = document.createElement("td");
          note.className = kind + "-note";
          note.dataset.for = id;
          cell.colSpan = row.cells.length;
          cell.textContent = label + notes[id];
          note.appendChild(cell);
          row.after(note);
        }
      });
    }
    show(reasons, "problem", "Cannot be added: ");
    show(warnings, "warning", "Warning: ");
    list.classList.toggle("warnings-only", !list.querySelector("li.problem"));
    list.hidden = list.children.length === 0;
  }

  function outcome(text, kind) {
    var line = $("outcome");
    line.textContent = text;
    line.className = "message " + (kind || "");
    line.hidden = !text;
  }

  // --- The panel: choose a file, check, submit, follow the request ---

  function choice() {
    if (selection.length === 0) {
      outcome("Select at least one conversation first.", "error");
      return null;
    }
    var body = { conversation_ids: selection.slice() };
    if (target.value === NEW_FILE) {
      body.new_file_name = $("new-name").value;
      var description = $("new-description").value.trim();
      if (description) { body.description = description; }
    } else {
      body.training_file = target.value;
    }
    return body;
  }

  function showTarget() { $("new-file").hidden = target.value !== NEW_FILE; }

  $("open-create").addEventListener("click", function () {
    var open = panel.hidden;
    panel.hidden = !open;
    this.setAttribute("aria-expanded", String(open));
  });
  target.addEventListener("change", function () { showTarget(); clearProblems(); outcome(""); });

  function refused(answer) {
    outcome(errorText(answer), "error");
    showProblems(answer.data && answer.data.error ? answer.data.error.conversations : {});
  }

  $("check").addEventListener("click", function () {
    var body = choice();
    if (!body) { return; }
    outcome("Checking " + body.conversation_ids.length + " conversations…");
    call("POST", "/api/selections/validate", body).then(function (answer) {
      if (!answer.ok) { refused(answer); return; }
      var warned = Object.keys(answer.data.warnings || {}).length > 0;
      outcome(answer.data.message, answer.data.ok ? (warned ? "warn" : "ok") : "error");
      showProblems(answer.data.conversations, answer.data.warnings);
    });
  });

  var submit = $("submit");
  var submitted = [];
  submit.addEventListener("click", function () {
    var body = choice();
    if (!body) { return; }
    submit.disabled = true;
    clearProblems();
    outcome("Submitting…");
    call("POST", "/api/requests", body).then(function (answer) {
      if (!answer.ok) { submit.disabled = false; refused(answer); return; }
      // Submitted without a Check first: the near-duplicates it was accepted with are shown as
      // Check shows them, and the request goes ahead.
      warned(answer.data.warnings, body.conversation_ids.length);
      submitted = body.conversation_ids;
      sessionStorage.setItem(REQUEST_KEY, answer.data.id);
      follow(answer.data);
    });
  });

  function warned(warnings, count) {
    var many = Object.keys(warnings || {}).length;
    if (!many) { outcome(""); return; }
    outcome("Submitted: " + many + " of " + count + " conversation" + (count === 1 ? "" : "s") +
            (many === 1 ? " is a near-duplicate" : " are near-duplicates") +
            "; the request goes ahead.", "warn");
    showProblems({}, warnings);
  }

  function showProgress(request) {
    $("progress").hidden = false;
    var at = request.finished ? STEPS.length - 1 : STEPS.indexOf(request.status);
    document.querySelectorAll("#progress .steps li").forEach(function (step, index) {
      var succeeded = request.status === "succeeded";
      step.classList.toggle("done", (index < at && (succeeded || !request.finished)) ||
                                    (succeeded && index === at));
      step.classList.toggle("current", index === at && !request.finished);
      step.classList.toggle("failed", request.finished && request.status !== "succeeded" && index === at);
      if (step.dataset.step === "end") { step.textContent = request.finished ? request.status : "finished"; }
    });
    var text = $("progress-text");
    var name = "Request " + request.id.slice(0, 8);
    text.textContent = name + ({
      pending: " is pending: waiting for the pipeline to pick it up.",
      queued: " is queued: the pipeline has it and will start it shortly.",
      running: " is running: the training file is being built.",
      succeeded: " succeeded.",
      rejected: " was rejected.",
      failed: " failed.",
    }[request.status] || " is " + request.status + ".");
    if (!request.finished) {
      var file = request.training_file_name || request.new_file_name;
      text.textContent += " (" + request.conversation_count + " conversation" +
          (request.conversation_count === 1 ? "" : "s") + (file ? " for " + file : "") + ")";
    }
    if (request.status === "succeeded" && request.training_file_id) {
      text.textContent = name + " succeeded: ";
      text.appendChild(fileLink(request, (request.training_file_name || "the training file") +
                                         ", version " + request.result_version));
    } else if (request.finished && request.error) {
      text.textContent = name + (request.status === "rejected" ? " was rejected: " : " failed: ") +
          request.error.message;
      showProblems(request.error.conversations);
    }
  }

  function fileLink(request, label) {
    var link = document.createElement("a");
    link.href = "/training-files/" + encodeURIComponent(request.training_file_id);
    link.textContent = label;
    return link;
  }

  // The rows of a request that succeeded now name its file (as a reload would show).
  function showFiled(ids, request) {
    ids.forEach(function (id) {
      var row = document.querySelector('table.conversations tr[data-id="' + CSS.escape(id) + '"]');
      var cell = row && row.querySelector("td.files");
      if (!cell || cell.querySelector('a[href="/training-files/' + request.training_file_id + '"]')) {
        return;
      }
      if (!cell.querySelector("a")) { cell.textContent = ""; } else { cell.appendChild(document.createTextNode(", ")); }
      cell.appendChild(fileLink(request, request.training_file_name));
    });
  }

  function follow(request) {
    panel.hidden = false;
    $("open-create").setAttribute("aria-expanded", "true");
    showProgress(request);
    if (request.finished) {
      sessionStorage.removeItem(REQUEST_KEY);
      submit.disabled = false;
      if (request.status === "succeeded") {
        showFiled(submitted, request);
        selection = [];
        saveSelection();
      }
      return;
    }
    submit.disabled = true;
    window.setTimeout(function () { poll(request); }, 1000);
  }

  function poll(request) {
    call("GET", "/api/requests/" + encodeURIComponent(request.id)).then(function (answer) {
      if (answer.ok) { follow(answer.data); return; }
      if (answer.status === 404) {
        sessionStorage.removeItem(REQUEST_KEY);
        submit.disabled = false;
        $("progress-text").textContent = errorText(answer);
        return;
      }
      $("progress-text").textContent = errorText(answer) + " Asking again…";
      window.setTimeout(function () { poll(request); }, 1000);
    });
  }

  bar.hidden = false;
  showTarget();
  showSelection();
  // A request submitted before this page was opened is followed here until it ends.
  var open = sessionStorage.getItem(REQUEST_KEY);
  if (open) {
    call("GET", "/api/requests/" + encodeURIComponent(open)).then(function (answer) {
      if (answer.ok) { follow(answer.data); } else { sessionStorage.removeItem(REQUEST_KEY); }
    });
  }
})();
