// rlhflab labelling / rating page. Plain JS, no build step.
// Every text from a model or a file goes into the page through textContent, never innerHTML,
// so a response containing <script> shows as text.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const RATER_KEY = "rlhflab.rater";
  const params = new URLSearchParams(location.search);
  const taskName = params.get("task");

  const state = {
    rater: (localStorage.getItem(RATER_KEY) || "").trim(),
    task: null, // public task info from the server
    item: null, // {id, prompt, text, text_b?}
    progress: null,
    shownAt: 0,
    busy: false, // a request is in flight: ignore keys and clicks (no double submits)
    selected: null, // label index / "a" | "b"
    values: {}, // rating: scale name -> 1..5
    active: 0, // rating: index of the scale that keys act on
  };

  // --- server ------------------------------------------------------------------------

  async function api(method, path, body) {
    const options = { method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new Error("The server did not answer. Is `rlhflab serve` still running? Your saved answers are safe.");
    }
    let data = null;
    try { data = await response.json(); } catch (err) { data = null; }
    if (!response.ok) {
      let detail = data && data.detail;
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
      const error = new Error(detail || `Request failed (${response.status}).`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function taskPath(suffix) {
    return `/api/tasks/${encodeURIComponent(taskName)}/${suffix}`;
  }

  // --- views -------------------------------------------------------------------------

  function show(view) {
    for (const id of ["view-name", "view-tasks", "view-item", "view-done"]) $(id).hidden = id !== view;
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = !message;
  }

  // A warning (what is missing before a submit) stands out, and goes once the answer is complete.
  function setStatus(message, warning = false) {
    $("status").textContent = message;
    $("status").classList.toggle("warning", warning);
  }

  function renderRater() {
    $("rater-button").hidden = !state.rater;
    $("rater-button").textContent = state.rater;
  }

  async function start() {
    renderRater();
    if (!state.rater) {
      show("view-name");
      $("name-input").focus();
      return;
    }
    if (!taskName) return listTasks();
    try {
      apply(await api("GET", taskPath(`next?rater=${encodeURIComponent(state.rater)}`)));
    } catch (err) {
      showError(err.message);
    }
  }

  async function listTasks() {
    show("view-tasks");
    $("task-title").textContent = "";
    try {
      const data = await api("GET", "/api/tasks");
      const list = $("task-list");
      list.replaceChildren();
      for (const task of data.tasks) {
        const li = document.createElement("li");
        const link = document.createElement("a");
        link.href = `?task=${encodeURIComponent(task.name)}`;
        link.textContent = task.name;
        const meta = document.createElement("span");
        meta.className = "muted";
        meta.textContent = ` ${task.kind} · ${task.items} items · ${task.question}`;
        li.append(link, meta);
        list.append(li);
      }
      $("no-tasks").hidden = data.tasks.length > 0;
    } catch (err) {
      showError(err.message);
    }
  }

  // Show the server's state: the task, the rater's progress and the next item (or done).
  function apply(data, previous) {
    showError("");
    state.task = data.task;
    state.progress = data.progress;
    state.item = data.item;
    $("task-title").textContent = data.task.name;
    document.title = `${data.task.name} · rlhflab`;
    const { answered, total } = data.progress;
    $("progress-text").textContent = `${answered} of ${total}`;
    $("progress-bar").style.width = total ? `${(100 * answered) / total}%` : "0";
    if (!data.item) {
      show("view-done");
      $("done-text").textContent = `You answered all ${total} items of ${data.task.name}. Thank you!`;
      return;
    }
    show("view-item");
    renderItem(data.item, previous);
    state.shownAt = performance.now();
  }

  // Responses continue the prompt and often start with a space; pre-wrap would indent them.
  const shown = (text) => (text || "").replace(/^\s+/, "");
  const EMPTY = "(empty response)";

  // An empty response is a real output to judge: show a placeholder, marked so it does not read
  // as the model's words (the stored text stays empty).
  function showText(element, text) {
    const value = shown(text);
    element.textContent = value || EMPTY;
    element.classList.toggle("empty", !value);
  }

  function renderItem(item, previous) {
    const kind = state.task.kind;
    $("question").textContent = state.task.question;
    $("single").hidden = kind === "pairs";
    $("pair").hidden = kind !== "pairs";
    if (kind === "pairs") {
      $("pair-prompt").textContent = item.prompt;
      $("pair-prompt").hidden = !item.prompt;
      showText($("text-a"), item.text);
      showText($("text-b"), item.text_b);
    } else {
      $("prompt").textContent = item.prompt;
      $("prompt").hidden = !item.prompt;
      showText($("text"), item.text);
    }
    state.selected = null;
    state.values = {};
    state.active = 0;
    if (previous) { // after undo: the earlier answer, ready to confirm or change
      if (kind === "label") state.selected = state.task.labels.indexOf(previous.label);
      if (kind === "pairs") state.selected = previous.choice;
      if (kind === "rating") state.values = { ...previous };
    }
    renderControls();
  }

  function renderControls() {
    const kind = state.task.kind;
    const box = $("controls");
    box.replaceChildren();
    if (kind === "label") {
      box.className = "controls labels";
      state.task.labels.forEach((label, index) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "option" + (state.selected === index ? " selected" : "");
        button.dataset.index = String(index);
        button.setAttribute("aria-pressed", String(state.selected === index));
        const key = document.createElement("kbd");
        key.textContent = String(index + 1);
        button.append(key, document.createTextNode(" " + label));
        button.addEventListener("click", () => submit({ label }));
        box.append(button);
      });
      $("hint").textContent = `Keys: 1–${state.task.labels.length} answer · ← → choose, Enter confirm · U undo`;
    } else if (kind === "pairs") {
      box.className = "controls";
      for (const choice of ["a", "b"]) {
        $(`choice-${choice}`).classList.toggle("selected", state.selected === choice);
        $(`choice-${choice}`).setAttribute("aria-pressed", String(state.selected === choice));
      }
      $("hint").textContent = "Keys: 1 or A for the first, 2 or B for the second · ← → choose, Enter confirm · U undo";
    } else {
      box.className = "controls scales";
      state.task.scales.forEach((scale, index) => {
        const row = document.createElement("fieldset");
        row.className = "scale" + (state.active === index ? " active" : "");
        row.dataset.scale = scale.name;
        const legend = document.createElement("legend");
        legend.textContent = capitalised(scale.name);
        const buttons = document.createElement("div");
        buttons.className = "scale-buttons";
        buttons.setAttribute("role", "radiogroup");
        buttons.setAttribute("aria-label", scale.name);
        for (let value = scale.min; value <= scale.max; value++) {
          const button = document.createElement("button");
          button.type = "button";
          button.className = "score" + (state.values[scale.name] === value ? " selected" : "");
          button.setAttribute("role", "radio");
          button.setAttribute("aria-checked", String(state.values[scale.name] === value));
          button.dataset.value = String(value);
          button.textContent = String(value);
          button.addEventListener("click", () => {
            state.values[scale.name] = value;
            state.active = Math.min(index + 1, state.task.scales.length - 1);
            renderControls();
          });
          buttons.append(button);
        }
        const ends = document.createElement("div");
        ends.className = "scale-ends";
        const low = document.createElement("span");
        low.textContent = `${scale.min} ${scale.low}`;
        const high = document.createElement("span");
        high.textContent = `${scale.high} ${scale.max}`;
        ends.append(low, high);
        row.append(legend, buttons, ends);
        row.addEventListener("click", (event) => {
          if (event.target.closest(".score")) return; // a score click already moved on
          state.active = index;
          renderControls();
        });
        box.append(row);
      });
      $("hint").textContent = "Keys: 1–5 score the highlighted scale · ← → change it · ↑ ↓ switch scale · Enter submit · U undo";
    }
    $("submit").hidden = kind !== "rating" && state.selected === null;
    // Not disabled when incomplete: a click (like Enter) then says what is missing.
    $("submit").setAttribute("aria-disabled", String(kind === "rating" && !ratingComplete()));
    if ($("status").classList.contains("warning") && (kind === "rating" ? ratingComplete() : state.selected !== null)) setStatus("");
  }

  function missingScales() {
    return state.task.scales.filter((s) => !Number.isInteger(state.values[s.name]));
  }

  function ratingComplete() {
    return missingScales().length === 0;
  }

  const capitalised = (name) => name.charAt(0).toUpperCase() + name.slice(1);

  // --- actions -----------------------------------------------------------------------

  async function submit(answer) {
    if (state.busy || !state.item) return;
    state.busy = true;
    setStatus("Saving…");
    const elapsed = Math.round(performance.now() - state.shownAt);
    try {
      const data = await api("POST", taskPath("answers"), {
        rater: state.rater, item_id: state.item.id, answer, elapsed_ms: elapsed,
      });
      apply(data); // the answer is committed before the server sends the next item
      setStatus("Saved.");
    } catch (err) {
      setStatus("");
      showError(err.message);
    } finally {
      state.busy = false;
    }
  }

  // Enter or Submit: send a complete answer, or say what is still missing (never nothing).
  function submitSelected() {
    const kind = state.task && state.task.kind;
    if (!kind || state.busy || !state.item) return;
    if (kind === "label") {
      if (state.selected !== null) submit({ label: state.task.labels[state.selected] });
      else setStatus(`Choose a label first: press 1–${state.task.labels.length}, or ← → then Enter.`, true);
    } else if (kind === "pairs") {
      if (state.selected) submit({ choice: state.selected });
      else setStatus("Choose a response first: press 1 or 2 (A or B), or ← → then Enter.", true);
    } else if (ratingComplete()) {
      const answer = {};
      for (const s of state.task.scales) answer[s.name] = state.values[s.name];
      submit(answer);
    } else {
      const missing = missingScales();
      state.active = state.task.scales.indexOf(missing[0]); // keys now act on the first missing scale
      renderControls();
      const names = missing.map((s) => capitalised(s.name)).join(" and ");
      setStatus(`Not sent: score ${names} (${missing[0].min}–${missing[0].max}), then press Enter.`, true);
    }
  }

  async function undo() {
    if (state.busy || !taskName) return;
    state.busy = true;
    try {
      const data = await api("POST", taskPath("undo"), { rater: state.rater });
      const previous = data.undone && data.item && data.undone.item_id === data.item.id ? data.undone.answer : null;
      apply(data, previous);
      setStatus(data.undone ? "Last answer undone: answer it again." : "Nothing to undo.");
    } catch (err) {
      showError(err.message);
    } finally {
      state.busy = false;
    }
  }

  function onKey(event) {
    if (event.target instanceof HTMLInputElement || event.altKey || event.metaKey) return;
    if (event.ctrlKey && event.key.toLowerCase() !== "z") return;
    const key = event.key;
    if (key === "u" || key === "U" || (event.ctrlKey && key.toLowerCase() === "z")) {
      event.preventDefault();
      undo();
      return;
    }
    if (!state.item || state.busy || $("view-item").hidden) return;
    const kind = state.task.kind;
    const digit = /^[1-9]$/.test(key) ? Number(key) : null;
    let handled = true;
    if (kind === "label") {
      const n = state.task.labels.length;
      if (digit !== null && digit <= n) submit({ label: state.task.labels[digit - 1] });
      else if (key === "ArrowRight" || key === "ArrowDown") { state.selected = state.selected === null ? 0 : (state.selected + 1) % n; renderControls(); }
      else if (key === "ArrowLeft" || key === "ArrowUp") { state.selected = state.selected === null ? n - 1 : (state.selected + n - 1) % n; renderControls(); }
      else if (key === "Enter") submitSelected();
      else handled = false;
    } else if (kind === "pairs") {
      if (digit === 1 || key === "a" || key === "A") submit({ choice: "a" });
      else if (digit === 2 || key === "b" || key === "B") submit({ choice: "b" });
      else if (key === "ArrowLeft") { state.selected = "a"; renderControls(); }
      else if (key === "ArrowRight") { state.selected = "b"; renderControls(); }
      else if (key === "Enter") submitSelected();
      else handled = false;
    } else {
      const scales = state.task.scales;
      const scale = scales[state.active];
      if (digit !== null && digit >= scale.min && digit <= scale.max) {
        state.values[scale.name] = digit;
        state.active = Math.min(state.active + 1, scales.length - 1);
        renderControls();
      } else if (key === "ArrowRight" || key === "ArrowLeft") {
        const now = state.values[scale.name];
        const step = key === "ArrowRight" ? 1 : -1;
        const next = now === undefined ? Math.round((scale.min + scale.max) / 2) : now + step;
        state.values[scale.name] = Math.max(scale.min, Math.min(scale.max, next));
        renderControls();
      } else if (key === "ArrowDown" || key === "ArrowUp") {
        // Stops at the first and last scale: wrapping round made "4, ↓, 2" overwrite the first score.
        state.active = Math.max(0, Math.min(scales.length - 1, state.active + (key === "ArrowDown" ? 1 : -1)));
        renderControls();
      } else if (key === "Enter") submitSelected();
      else handled = false;
    }
    if (handled) event.preventDefault();
  }

  // --- wiring ------------------------------------------------------------------------

  document.addEventListener("keydown", onKey);
  $("submit").addEventListener("click", submitSelected);
  $("undo").addEventListener("click", undo);
  $("done-undo").addEventListener("click", undo);
  for (const choice of ["a", "b"]) $(`choice-${choice}`).addEventListener("click", () => submit({ choice }));
  $("name-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("name-input").value.trim();
    if (!name) {
      showError("Type your name: it cannot be blank or only spaces.");
      $("name-input").focus();
      return;
    }
    showError("");
    state.rater = name;
    localStorage.setItem(RATER_KEY, name);
    start();
  });
  $("rater-button").addEventListener("click", () => {
    $("name-input").value = state.rater;
    state.rater = "";
    localStorage.removeItem(RATER_KEY);
    state.item = null;
    renderRater();
    show("view-name");
    $("name-input").focus();
  });
  start();
})();
