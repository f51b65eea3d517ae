// The RAG service's page: plain JavaScript on the public API only (chat completions, documents,
// index status, health). Every piece of server data goes into the page as text (textContent,
// never innerHTML), so chunk text from uploaded HTML or Office files shows as text, not markup.
"use strict";

const KEY_STORAGE = "rag-api-key"; // session storage: gone when the tab closes
const POLL_MS = 2000;

const $ = (id) => document.getElementById(id);
// `generation` changes with the key: a response that arrives for an earlier key is dropped.
const state = { key: sessionStorage.getItem(KEY_STORAGE) || "", messages: [], authorized: false, polling: null, generation: 0 };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function headers(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) message = `${response.status}: ${body.error}`;
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

// Relative URLs: the page works under any route prefix (served at <prefix>/).
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.textContent = error.status === 401 ? `${error.message}. Enter a valid API key above.` : error.message;
  box.hidden = false;
}

// -- keys and who the caller is -----------------------------------------------------------------
function clearData() {
  state.generation += 1;
  clearTimeout(state.polling);
  $("conversation").replaceChildren();
  $("documents-table").querySelector("tbody").replaceChildren();
  $("documents-table").hidden = true;
  $("index-status").replaceChildren();
  $("versions-table").querySelector("tbody").replaceChildren();
  $("model").replaceChildren(el("option", { value: "rag", text: "all documents (rag)" }));
  closePassage();
  state.messages = [];
}

async function identify() {
  try {
    const status = await api("v1/index");
    state.authorized = true;
    showError(null);
    if (status.scope === "all") {
      $("who").textContent = state.key ? "Admin key: you see every tenant." : "API keys are turned off here: everything is visible.";
    } else if (state.key) {
      $("who").textContent = `Signed in with an API key of tenant "${status.tenant}".`;
    } else {
      $("who").textContent = `No API keys are configured here: you are the anonymous caller of tenant "${status.tenant}".`;
    }
    await refreshActive();
  } catch (error) {
    state.authorized = false;
    clearData();
    $("who").textContent = error.status === 401 ? "This service needs an API key." : "";
    showError(error);
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  $("api-key").value = "";
  if (state.key) sessionStorage.setItem(KEY_STORAGE, state.key);
  else sessionStorage.removeItem(KEY_STORAGE);
  clearData();
  identify();
});

$("forget-key").addEventListener("click", () => {
  state.key = "";
  sessionStorage.removeItem(KEY_STORAGE);
  clearData();
  identify();
});

// -- tabs (WAI-ARIA tabs: arrows move between tabs) -------------------------------------------------
const tabs = Array.from(document.querySelectorAll("[role=tab]"));

function selectTab(tab) {
  for (const other of tabs) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
  tab.focus();
  if (state.authorized) refreshActive();
}

for (const tab of tabs) {
  tab.addEventListener("click", () => selectTab(tab));
  tab.addEventListener("keydown", (event) => {
    const at = tabs.indexOf(tab);
    const next = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    selectTab(tabs[(next + tabs.length) % tabs.length]);
  });
}

function activePanel() {
  return tabs.find((tab) => tab.getAttribute("aria-selected") === "true").getAttribute("aria-controls");
}

async function refreshActive() {
  const panel = activePanel();
  try {
    if (panel === "panel-ask") await loadModels(); // a source gains its first document, or loses its last
    if (panel === "panel-documents") await loadDocuments();
    if (panel === "panel-status") await loadStatus();
  } catch (error) {
    showError(error);
  }
}

// -- ask --------------------------------------------------------------------------------------
async function loadModels() {
  const models = await api("v1/models");
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(
    ...models.data.map((model) =>
      el("option", { value: model.id, text: model.id === "rag" ? "all documents (rag)" : `source ${model.id.slice(4)} (${model.id})` }),
    ),
  );
  if (models.data.some((model) => model.id === chosen)) select.value = chosen;
}

function describeLocation(source) {
  const location = source.location || {};
  const parts = [];
  if (location.kind === "slide") parts.push(`slide ${location.slide}`);
  else if (location.kind === "sheet") parts.push(`sheet ${location.sheet}${location.rows ? `, rows ${location.rows}` : ""}`);
  else if (location.kind === "section") parts.push(location.heading ? `section "${location.heading}"` : "section");
  else parts.push(`page ${location.page ?? source.page}`);
  if (location.heading && location.kind !== "section") parts.push(`"${location.heading}"`);
  if (location.ocr) parts.push(`read by OCR (confidence ${Math.round(location.ocr_confidence)})`);
  return parts.join(", ");
}

const SENTENCE = /[^.!?\n]+[.!?]*/g;
const words = (text) => new Set((text.toLowerCase().match(/[\p{L}\p{N}]{3,}/gu) || []));

// The passage's sentence closest to the answer sentence that cites it (most shared words).
function bestSentence(chunkText, answerSentence) {
  const wanted = words(answerSentence);
  let best = null;
  let bestScore = 0;
  for (const match of chunkText.matchAll(SENTENCE)) {
    const have = words(match[0]);
    let score = 0;
    for (const word of have) if (wanted.has(word)) score += 1;
    if (score > bestScore) {
      bestScore = score;
      best = { start: match.index, end: match.index + match[0].length };
    }
  }
  return best;
}

function openPassage(source, number, answerSentence) {
  $("passage-title").textContent = `[${number}] ${source.file}`;
  const where = [describeLocation(source)];
  if (source.source) where.push(`source ${source.source}`);
  $("passage-where").textContent = where.join(" · ");
  const text = source.text || "";
  const span = answerSentence ? bestSentence(text, answerSentence) : null;
  const body = $("passage-text");
  if (span) {
    body.replaceChildren(text.slice(0, span.start), el("mark", { text: text.slice(span.start, span.end) }), text.slice(span.end));
  } else {
    body.replaceChildren(text);
  }
  $("passage").hidden = false;
  $("passage").focus();
  const marked = body.querySelector("mark");
  if (marked) marked.scrollIntoView({ block: "nearest" });
}

function closePassage() {
  $("passage").hidden = true;
}
$("passage-close").addEventListener("click", closePassage);

// The answer's text, with each [n] a button that opens sources[n-1].
function renderAnswer(container, text, sources) {
  const pieces = [];
  const sentences = text.match(/[^.!?\n]*[.!?]*(\s*\[\d+\])*\s*/g) || [text];
  for (const sentence of sentences) {
    let last = 0;
    for (const match of sentence.matchAll(/\[(\d+)\]/g)) {
      pieces.push(sentence.slice(last, match.index));
      const number = Number(match[1]);
      const source = sources[number - 1];
      if (source) {
        const claim = sentence.replace(/\[\d+\]/g, "");
        pieces.push(
          el("button", {
            type: "button",
            class: "cite",
            "aria-label": `Open source ${number}: ${source.file}`,
            text: `[${number}]`,
            onclick: () => openPassage(source, number, claim),
          }),
        );
      } else {
        pieces.push(match[0]);
      }
      last = match.index + match[0].length;
    }
    pieces.push(sentence.slice(last));
  }
  container.replaceChildren(...pieces);
}

function renderMeta(rag) {
  const badges = [el("span", { class: `badge ${rag.mode === "degraded" ? "degraded" : ""}`, text: `${rag.mode} answer` })];
  badges.push(el("span", { class: "badge", text: rag.cached ? `from the cache (${rag.cache})` : "answered now" }));
  badges.push(el("span", { class: "badge", text: `index ${rag.index_version}` }));
  const meta = el("p", { class: "meta" }, ...badges);
  if (rag.rewrite !== "as-is") meta.append(el("span", { text: ` Searched for: "${rag.standalone_question}"` }));
  return meta;
}

function renderSources(sources, answerText) {
  const list = el("ol", { class: "sources", "aria-label": "Sources" });
  sources.forEach((source, index) => {
    const number = index + 1;
    const claim = (answerText.match(new RegExp(`[^.!?\\n]*[.!?]*\\s*\\[${number}\\]`)) || [""])[0].replace(/\[\d+\]/g, "");
    list.append(
      el(
        "li",
        {},
        el("button", {
          type: "button",
          text: `${source.file}, ${describeLocation(source)}`,
          onclick: () => openPassage(source, number, claim),
        }),
      ),
    );
  });
  return list;
}

// OpenAI's server-sent events: data lines of chat.completion.chunk objects, then [DONE].
async function* chatChunks(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

$("ask-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  showError(null);
  const button = $("ask-button");
  button.disabled = true;
  const answer = el("div", { class: "answer streaming" });
  const turn = el("li", { class: "turn" }, el("p", { class: "question", text: question }), answer);
  $("conversation").append(turn);
  const messages = [...state.messages, { role: "user", content: question }];
  const generation = state.generation;
  let text = "";
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ model: $("model").value, messages, stream: true }),
    });
    if (!response.ok) throw await failure(response);
    let sources = [];
    let rag = null;
    for await (const chunk of chatChunks(response)) {
      if (generation !== state.generation) return; // the key changed: this answer belongs to the old one
      if (chunk.error) throw new ApiError(500, chunk.error.message || "the answer failed");
      const choice = (chunk.choices || [])[0];
      if (choice && choice.delta && choice.delta.content) {
        text += choice.delta.content;
        answer.textContent = text;
        answer.dataset.deltas = String(Number(answer.dataset.deltas || 0) + 1); // how many pieces arrived
      }
      if (chunk.sources) sources = chunk.sources;
      if (chunk.rag) rag = chunk.rag;
    }
    answer.classList.remove("streaming");
    renderAnswer(answer, text, sources);
    if (rag) turn.append(renderMeta(rag));
    if (sources.length) turn.append(renderSources(sources, text));
    state.messages = [...messages, { role: "assistant", content: text }];
    $("question").value = "";
  } catch (error) {
    turn.remove();
    showError(error);
  } finally {
    button.disabled = false;
    $("question").focus();
  }
});

$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("ask-form").requestSubmit();
  }
});

$("new-conversation").addEventListener("click", () => {
  state.messages = [];
  $("conversation").replaceChildren();
  closePassage();
  $("question").focus();
});

// -- documents -----------------------------------------------------------------------------------
const when = (value) => (value ? new Date(value).toLocaleString() : "");

async function loadDocuments() {
  const generation = state.generation;
  const { documents } = await api("v1/documents");
  if (generation !== state.generation) return;
  const body = $("documents-table").querySelector("tbody");
  body.replaceChildren(
    ...documents.map((doc) => {
      const status = el("td", { class: `status-${doc.status}`, "data-label": "Status", text: doc.status });
      if (doc.reason) status.append(el("div", { class: "reason", text: doc.reason }));
      return el(
        "tr",
        { "data-document": doc.id },
        el("td", { "data-label": "Name", text: doc.name }),
        status,
        el("td", { "data-label": "Chunks", text: doc.chunks ?? "" }),
        el("td", { "data-label": "Index version", text: doc.index_version ?? "" }),
        el("td", { "data-label": "Uploaded", text: when(doc.uploaded_at) }),
        el(
          "td",
          { "data-label": "" },
          el("button", {
            type: "button",
            class: "secondary",
            text: "Delete",
            "aria-label": `Delete ${doc.name}`,
            onclick: () => deleteDocument(doc),
          }),
        ),
      );
    }),
  );
  $("documents-table").hidden = documents.length === 0;
  $("documents-empty").hidden = documents.length > 0;
  const busy = documents.some((doc) => doc.status === "pending" || doc.status === "deleting");
  clearTimeout(state.polling);
  if (busy && activePanel() === "panel-documents") state.polling = setTimeout(() => refreshActive(), POLL_MS);
}

async function deleteDocument(doc) {
  if (!window.confirm(`Delete ${doc.name}? It leaves the index with the next ingest run and no answer cites it after that.`)) return;
  try {
    const deletion = await api(`v1/documents/${encodeURIComponent(doc.id)}`, { method: "DELETE" });
    $("upload-status").textContent = `${doc.name}: ${deletion.effective}`;
    await loadDocuments();
  } catch (error) {
    showError(error);
  }
}

function chosenFiles(files) {
  $("chosen").textContent = files.length ? Array.from(files, (file) => file.name).join(", ") : "";
}

$("files").addEventListener("change", () => chosenFiles($("files").files));
const dropZone = $("drop-zone");
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("over");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("over");
  $("files").files = event.dataTransfer.files;
  chosenFiles($("files").files);
});

// XMLHttpRequest rather than fetch: only it reports upload progress.
function upload(files) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", "v1/documents");
    for (const [name, value] of Object.entries(headers())) request.setRequestHeader(name, value);
    const progress = $("upload-progress");
    progress.hidden = false;
    progress.value = 0;
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) progress.value = Math.round((100 * event.loaded) / event.total);
    });
    request.addEventListener("load", () => {
      progress.hidden = true;
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch (_) {
        // not JSON
      }
      if (request.status === 202) resolve(body);
      else reject(new ApiError(request.status, `${request.status}: ${(body && body.error) || request.statusText}`));
    });
    request.addEventListener("error", () => {
      progress.hidden = true;
      reject(new ApiError(0, "the upload did not reach the service"));
    });
    request.send(form);
  });
}

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const files = $("files").files;
  if (!files.length) {
    $("upload-status").textContent = "Choose or drop files first.";
    return;
  }
  showError(null);
  $("upload-button").disabled = true;
  $("upload-status").textContent = `Uploading ${files.length} file(s)...`;
  try {
    const accepted = await upload(files);
    const fresh = accepted.documents.length - accepted.duplicates.length;
    $("upload-status").textContent =
      `Uploaded ${fresh} file(s)${accepted.duplicates.length ? `, ${accepted.duplicates.length} unchanged` : ""}; ` +
      `indexing job ${accepted.job_id}.`;
    $("files").value = "";
    chosenFiles([]);
    await loadDocuments();
    await loadModels();
  } catch (error) {
    $("upload-status").textContent = "";
    showError(error);
  } finally {
    $("upload-button").disabled = false;
  }
});

// -- status --------------------------------------------------------------------------------------
function facts(list, entries) {
  list.replaceChildren(
    ...entries.filter(([, value]) => value !== undefined && value !== null && value !== "").flatMap(([name, value]) => [
      el("dt", { text: name }),
      el("dd", { text: String(value) }),
    ]),
  );
}

async function loadStatus() {
  const generation = state.generation;
  const [index, health] = await Promise.all([api("v1/index"), api("health").catch((error) => ({ status: error.message }))]);
  if (generation !== state.generation) return;
  const last = index.last_ingest;
  const lastResult = last && last.files ? Object.entries(last.files).map(([action, count]) => `${count} ${action}`).join(", ") : "";
  facts($("index-status"), [
    ["Served version", index.index_version || "none yet"],
    ["Built", when(index.created_at)],
    ["Embedding model", index.embedding_model],
    [index.scope === "all" ? "Chunks (all tenants)" : `Chunks you can read (tenant ${index.tenant})`, index.chunks],
    ["Documents", index.documents],
    ["Sources", Object.entries(index.sources).map(([name, count]) => `${name}: ${count}`).join(", ")],
    ["Last ingest", last ? when(last.finished_at) : "none recorded"],
    ["Last ingest result", lastResult ? `${lastResult}; ${last.chunks_added} chunks added` : ""],
  ]);
  facts($("health"), [
    ["Status", `${health.status}${health.reasons && health.reasons.length ? ` (${health.reasons.join("; ")})` : ""}`],
    ["Cache", health.cache ? `${health.cache}${health.cache === "redis" ? (health.cache_connected ? ", connected" : ", not connected") : ""}` : ""],
    ["Generator", health.generator],
    ["Reranker", health.reranker],
  ]);
  $("versions-table").querySelector("tbody").replaceChildren(
    ...index.versions
      .slice()
      .reverse()
      .map((version) =>
        el(
          "tr",
          {},
          el("td", { "data-label": "Version", text: version.version }),
          el("td", { "data-label": "Built", text: when(version.created_at) }),
          el("td", { "data-label": "Model", text: version.embedding_model }),
          el("td", { "data-label": "Chunks", text: version.chunks_total ?? "not shown to tenant keys" }),
          el("td", { "data-label": "Served", text: version.served ? "served now" : "" }),
        ),
      ),
  );
}

identify();
