// inversionview's page: forms -> JSON API -> tables. No framework, nothing fetched from
// outside this server. The view's state lives in the URL, so a link reproduces it.
"use strict";

// record: the result shown; request: the query that gave it (what Verify patches).
const state = { models: {}, job: null, cancelRequested: false, record: null, request: null };
const SAVED_KEY = "inversionview.saved";
const QUERY_FIELDS = ["model", "input", "site", "position", "metric", "epsilon", "shown",
                      "candidates", "temperature", "seed", "fixed", "noise_cosine", "ban_rare"];

// ----- small helpers ---------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

function formatValue(value) {  // as the terminal view: a dict of counts reads "c5 v8 z3"
  if (value === null || value === undefined) return "-";
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k}${v}`).join(" ");
  return String(value);
}

function same(a, b) { return JSON.stringify(a) === JSON.stringify(b); }

function deltaPColour(change) {  // white-to-blue for a rise, white-to-red for a fall
  if (change === null || change === undefined || Math.abs(change) < 0.02) return null;
  const fade = Math.round(255 * (1 - 0.75 * Math.min(Math.abs(change), 1)));
  return change > 0 ? `rgb(${fade},${fade},255)` : `rgb(255,${fade},${fade})`;
}

function deltaPLegend(id) {  // the HTML export's legend (views/html.py), in the same colours
  return el("p", { class: "legend", id }, "token colour = ΔP: ",
    el("span", { style: `background:${deltaPColour(1)}` }, "raised"),
    el("span", { style: `background:${deltaPColour(-1)}` }, "lowered"),
    " by the query activation (against z", el("sub", {}, "BOS"), ")");
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method, headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const payload = isJson ? await response.json() : await response.text();
  if (!response.ok) throw new Error(isJson && payload.detail ? payload.detail : `HTTP ${response.status}`);
  return payload;
}

// ----- the form and the URL ----------------------------------------------------------------

function formValues() {
  return {
    model: $("model").value, input: $("input").value, site: $("site").value,
    position: $("position").value, metric: $("metric").value, epsilon: $("epsilon").value,
    shown: $("shown").value, candidates: $("candidates").value,
    temperature: $("temperature").value, seed: $("seed").value, fixed: $("fixed").checked ? "1" : "",
    noise_cosine: $("noise_cosine").value.trim(), ban_rare: $("ban_rare").value,
  };
}

function queryRequest(values) {
  const request = {
    model: values.model, input: values.input, site: values.site, position: values.position,
    metric: values.metric, epsilon: Number(values.epsilon), shown: Number(values.shown),
    candidates: Number(values.candidates), seed: Number(values.seed), fixed_position: !!values.fixed,
  };
  if (values.temperature) request.temperature = Number(values.temperature);
  if (values.noise_cosine) {  // LOW or LOW:HIGH; the server checks the numbers
    const [low, high] = values.noise_cosine.split(":");
    request.noise_cosine = [Number(low), Number(high === undefined ? low : high)];
  }
  if (values.ban_rare) request.ban_rare = Number(values.ban_rare);
  return request;
}

function writeUrl(view, values) {
  const params = new URLSearchParams({ view });
  for (const [key, value] of Object.entries(values || {})) if (value !== "" && value !== null) params.set(key, value);
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

function fillModelSelect(select) {
  select.replaceChildren(...Object.values(state.models).map(
    (m) => el("option", { value: m.name }, `${m.name} (${m.task})`)));
}

function fillSiteAndPosition(values = {}) {
  const model = state.models[$("model").value];
  if (!model) return;
  $("site").replaceChildren(...model.sites.map((s) => el("option", { value: s }, s)));
  $("site").value = values.site || model.default_site;
  fillPositions(values.position || model.default_position);
}

function visible(token) {  // a token as the page shows it: spaces and line breaks made visible
  return token.replace(/ /g, "␣").replace(/\n/g, "⏎").replace(/\t/g, "⇥");
}

function fillPositions(selected) {
  // Named positions first, then every token of the current input (0 = BOS), as the model
  // cuts it (the server's tokenizer: a character for the toy tasks, a BPE piece for an LM).
  const model = state.models[$("model").value];
  setPositionOptions(model, null, selected);  // at once, so a position from a link holds
  refreshTokens(model, selected);
}

function setPositionOptions(model, cut, selected) {
  const named = model.position_names.map((p) => el("option", { value: p },
    cut && p in cut.positions ? `${p} (${cut.positions[p]})` : p));
  const indices = cut ? cut.tokens.map((token, i) => el("option", { value: String(i) }, `${i} (${visible(token)})`)) : [];
  const known = [...named, ...indices].some((option) => option.value === String(selected));
  const extra = selected && !known ? [el("option", { value: String(selected) }, String(selected))] : [];
  $("position").replaceChildren(...named, ...extra, el("option", { disabled: true }, "── token ──"), ...indices);
  $("position").value = selected;
  if ($("position").value !== String(selected)) $("position").value = model.default_position;
  renderInputTokens(cut);
}

async function refreshTokens(model, selected) {
  const ticket = (state.tokensTicket = (state.tokensTicket || 0) + 1);
  const input = $("input").value;
  let cut = null;
  try {
    cut = await api("POST", "/api/tokens", { model: model.name, input: input || null });
  } catch (error) {
    if (ticket === state.tokensTicket) { renderInputTokens(null, error.message); }
    return;
  }
  if (ticket !== state.tokensTicket) return;  // the input changed meanwhile
  const current = $("position").value;
  setPositionOptions(model, cut, current && current !== "── token ──" ? current : selected);
}

function renderInputTokens(cut, problem) {
  // The input as the model reads it; a click on a token queries that position.
  const box = $("input-tokens");
  if (problem) { box.replaceChildren(el("span", { class: "problem" }, problem)); return; }
  if (!cut) return;
  const chosen = $("position").value;
  const chosenIndex = chosen in cut.positions ? cut.positions[chosen] : Number(chosen);
  box.replaceChildren(el("span", { class: "meta" }, `${cut.tokens.length} tokens: `),
    ...cut.tokens.map((token, i) => el("span", {
      class: i === chosenIndex ? "token chosen" : "token", "data-index": i, title: `position ${i}: pick it`,
      onclick: () => { $("position").value = String(i); renderInputTokens(cut); },
    }, visible(token))));
  state.cut = cut;
}

function setForm(values) {
  if (values.model && state.models[values.model]) $("model").value = values.model;
  const model = state.models[$("model").value];
  $("input").value = values.input || model.example;
  fillSiteAndPosition(values);
  for (const key of ["metric", "epsilon", "shown", "candidates", "temperature", "seed", "noise_cosine", "ban_rare"]) {
    if (values[key] !== undefined && values[key] !== null) $(key).value = values[key];
  }
  $("fixed").checked = !!values.fixed;
}

// ----- running a query (a background job with progress and cancel) -------------------------

async function runQuery(event) {
  if (event) event.preventDefault();
  showError("");
  const values = formValues();
  writeUrl("query", values);
  $("run").disabled = true;
  $("cancel").disabled = false;
  state.cancelRequested = false;
  $("progress-box").hidden = false;
  setProgress(0, "queued");
  try {
    const request = queryRequest(values);
    const job = await startJob("/api/jobs/query", request);
    const done = await pollJob(job);
    if (done.state === "done") {
      state.record = done.result;
      state.request = request;
      $("verify-button").disabled = false;
      renderQuery($("result"), done.result, { colour: $("colour").checked });
      $("actions").hidden = false;
      $("grid").hidden = true;
      $("verify").hidden = true;
    } else if (done.state === "cancelled") {
      showError("The query was cancelled.");
    } else {
      showError(done.error || "the query failed");
    }
  } catch (error) {
    showError(error.message);
  } finally {
    state.job = null;
    $("run").disabled = false;
    $("cancel").disabled = true;
    $("progress-box").hidden = true;
  }
}

async function startJob(path, request) {
  // Cancel may be pressed before the server has answered with the job's id: send it then.
  $("progress-box").dataset.state = "submitting";
  const job = await api("POST", path, request);
  state.job = job.id;
  if (state.cancelRequested) await cancelQuery();
  return job;
}

async function pollJob(job) {
  // The job's state is also on the progress box (data-state), for tests to wait on.
  $("progress-box").dataset.state = job.state;
  while (!["done", "failed", "cancelled"].includes(job.state)) {
    await new Promise((resolve) => setTimeout(resolve, 120));
    job = await api("GET", `/api/jobs/${job.id}`);
    setProgress(job.progress, job.stage);
    $("progress-box").dataset.state = job.state;
  }
  return job;
}

function setProgress(fraction, stage) {
  $("progress-bar").style.width = `${Math.round(fraction * 100)}%`;
  $("progress-text").textContent = `${stage} ${Math.round(fraction * 100)} %`;
}

async function cancelQuery() {
  state.cancelRequested = true;
  if (state.job) await api("DELETE", `/api/jobs/${state.job}`).catch((e) => showError(e.message));
}

// ----- rendering a query record ------------------------------------------------------------

function tokenSpans(tokens, changes, distances, colour, queryPosition) {
  return tokens.map((token, i) => {
    const change = changes ? changes[i] : null;
    const background = colour ? deltaPColour(change) : null;
    const tips = [];
    if (distances && distances[i] !== null && distances[i] !== undefined) tips.push(`D ${fmt(distances[i])}`);
    if (change !== null && change !== undefined) tips.push(`ΔP ${change >= 0 ? "+" : ""}${fmt(change)}`);
    return el("span", { style: background ? `background:${background}` : null, title: tips.join(" · ") || null,
                        class: i === queryPosition ? "query-pos" : null }, token);
  });
}

function renderQuery(container, record, options = {}) {
  const colour = options.colour !== false;
  const stats = record.stats;
  const attributes = record.attribute_agreement.map((row) => row.attribute).slice(0, options.compact ? 3 : 8);
  const scale = Math.max(2 * record.epsilon, ...record.samples.map((s) => s.distance ?? 0));
  const query = record.query;
  const header = el("tr", {}, el("th", {}, "D"), el("th", {}, ""), el("th", { class: "input" }, "input"), el("th", {}, "best"),
                    attributes.map((a) => el("th", {}, a)), el("th", { title: "times drawn" }, "×"));
  const rows = [header,
    el("tr", { class: "query" }, el("td", {}, "query"), el("td"),
       el("td", { class: "input" }, tokenSpans(query.tokens, null, null, false, record.position)),
       el("td", {}, `(${record.position_label})`),
       attributes.map((a) => el("td", {}, formatValue(query.attributes[a]))), el("td"))];
  if (record.attention) {
    const spans = query.tokens.map((token, i) => {
      const weight = i < record.attention.length ? record.attention[i] : 0;
      const shade = Math.round(255 * (1 - 0.8 * weight));
      return el("span", { style: `background:rgb(${shade},255,${shade})`, title: `attention ${fmt(weight)}` }, token);
    });
    rows.push(el("tr", { class: "attention" }, el("td", {}, "attention"), el("td"),
                 el("td", { class: "input" }, spans), el("td", { colspan: attributes.length + 2, style: "text-align:left" },
                 `head ${record.site} from ${record.position_label}`)));
  }
  let ruleDrawn = false;
  for (const sample of record.samples) {
    const distance = sample.distance;
    if (!ruleDrawn && (distance === null || distance > record.epsilon)) {
      rows.push(el("tr", { class: "rule" }, el("td", { colspan: attributes.length + 5 }, `ε = ${record.epsilon}`)));
      ruleDrawn = true;
    }
    const width = distance === null ? 0 : Math.min(distance / scale, 1) * 120;
    rows.push(el("tr", { class: ["sample", sample.in_epsilon ? "inside" : "outside", sample.valid ? null : "invalid"].filter(Boolean).join(" "),
                         title: sample.valid ? null : sample.reason },
      el("td", { class: "distance" }, distance === null ? "inf" : fmt(distance)),
      el("td", {}, el("span", { class: "bar", style: `width:${width.toFixed(0)}px` })),
      el("td", { class: "input" }, tokenSpans(sample.best_position >= 0 ? sample.tokens.slice(0, sample.best_position + 1) : sample.tokens, sample.delta_p, sample.position_distances, colour, -1),
         continuation(sample)),
      el("td", {}, `(${sample.best_position_label})`),
      attributes.map((a) => el("td", { class: same(sample.attributes[a], query.attributes[a]) ? "same" : null },
                               formatValue(sample.attributes[a]))),
      el("td", { title: sample.found_by === "decoder" ? null : `found by the local search (${sample.found_by})` },
         sample.found_by && sample.found_by !== "decoder" ? "search" : (sample.multiplicity > 1 ? sample.multiplicity : ""))));
  }
  const meta = [
    el("p", { class: "meta" }, `${record.model} · decoder ${record.decoder} · site ${record.site} (${record.hook}) · `
       + `position ${record.position_label} (index ${record.position}) · ${record.metric} distance`
       + `${record.fixed_position ? " at the query position" : ", min over positions"} · ε ${record.epsilon} · seed ${record.seed}`
       + `${record.noise_cosine ? ` · noise at cosine ${record.noise_cosine.join("-")}` : ""}`
       + `${record.banned_tokens ? ` · ${record.banned_tokens} rare tokens never drawn` : ""}`),
    el("p", { class: "meta", id: options.compact ? null : "stats" },
       `${stats.candidates} candidates, ${stats.distinct} distinct, ${stats.in_epsilon} in ε `
       + `(${(100 * stats.in_epsilon_rate).toFixed(1)} %), ${stats.in_epsilon_distinct} distinct in ε, `
       + `${Math.round(100 * stats.valid_rate)} % valid${record.constrained ? " (drawn within the task's grammar)" : ""}; ${stats.seconds.toFixed(2)} s. `
       + `Showing ${stats.shown} (${stats.shown_in_epsilon} in ε).`),
    record.completeness
      ? el("p", { class: "meta", id: options.compact ? null : "completeness" },
           `Completeness: ${record.completeness.description}.`)
      : null,
    record.query_context && record.query_context.continuations
      ? el("p", { class: "meta", id: options.compact ? null : "query-context" },
           `Left out: the query's own prefix, with other continuations: ${record.query_context.continuations} `
           + `distinct (${record.query_context.draws} draws), left out of every reading and rate.`)
      : null,
    record.epsilon_profile && !options.compact
      ? el("p", { class: "meta", id: "epsilon-profile" }, profileText(record))
      : null,
    colour ? deltaPLegend(options.compact ? null : "legend") : null,
  ].filter(Boolean);
  const samples = el("table", { class: "samples" }, rows);
  const agreement = record.attribute_agreement.length
    ? [el("h3", {}, "Attribute agreement with the query"), agreementTable(record)]
    : (record.token_reading && record.token_reading.length
      ? [el("h3", {}, "Token reading"), readingLine(record), tokenReadingTable(record)] : []);
  const panels = options.compact ? [samples] : [samples, el("div", {}, ...agreement,
                                                             el("h3", {}, "Distances (all candidates)"),
                                                             histogram(record))];
  container.replaceChildren(...meta, el("div", { class: "panels" }, panels));
}

function continuation(sample) {
  // What follows the best position is no evidence (a causal model): dimmed and cut short.
  if (sample.best_position < 0) return null;
  const rest = sample.tokens.slice(sample.best_position + 1);
  if (!rest.length) return null;
  const text = rest.slice(0, 12).join("") + (rest.length > 12 ? "…" : "");
  return el("span", { class: "continuation", title: "after the best position: not evidence" }, text);
}

function profileText(record) {
  const profile = record.epsilon_profile;
  const counts = profile.radii.map((r, i) => `${r}: ${profile.members[i]}`).join(", ");
  let text = `ε profile (distinct members within each distance, everything scored): ${counts}`;
  const inside = profile.radii.indexOf(record.epsilon) >= 0 ? profile.members[profile.radii.indexOf(record.epsilon)] : 0;
  if (!inside && profile.nearest.length) {
    text += ". Nothing in ε; the nearest: " + profile.nearest.map((n) => `${fmt(n.distance)} "${n.tokens.join("")}"`).join("; ");
  }
  return text;
}

// The query as read: green where members keep a token more often than inputs outside ε do,
// struck through where its substitutions mostly stay inside ε (preimage/reading.py, token_shade).
function readingLine(record) {
  const spans = record.token_reading.map((row) => {
    const kept = row.anywhere_inside === null || row.anywhere_outside === null
      ? 0 : Math.max(0, row.anywhere_inside - row.anywhere_outside);
    const ignored = row.stays !== null && row.stays >= 0.5;
    const fade = Math.round(255 * (1 - 0.7 * Math.min(kept, 1)));
    return el("span", {
      class: ignored ? "ignored" : null,
      style: kept >= 0.05 ? `background: rgb(${fade}, 255, ${fade})` : null,
      title: `kept by ${fmt(row.anywhere_inside, 2)} of members, ${fmt(row.anywhere_outside, 2)} of inputs outside; `
        + `substitutions staying inside: ${fmt(row.stays, 2)}`,
    }, row.token);
  });
  return el("p", { class: "input reading", id: "query-reading" }, spans);
}

function tokenReadingTable(record) {
  const rows = [el("tr", {}, ["token", "kept inside ε", "outside", "anywhere inside", "outside", "substitutions staying inside"]
    .map((h) => el("th", {}, h)))];
  for (const row of record.token_reading) {
    rows.push(el("tr", {}, el("td", { class: "input" }, row.token), el("td", {}, fmt(row.kept_inside, 2)),
      el("td", {}, fmt(row.kept_outside, 2)), el("td", {}, fmt(row.anywhere_inside, 2)),
      el("td", {}, fmt(row.anywhere_outside, 2)),
      el("td", {}, `${fmt(row.stays, 2)} (${row.substitutions})`)));
  }
  return el("table", { class: "token-reading" }, rows);
}

function agreementTable(record) {
  const rows = [el("tr", {}, ["attribute", "query", "inside ε", "outside ε", "contrast", "n in", "n out"].map((h) => el("th", {}, h)))];
  for (const row of record.attribute_agreement) {
    rows.push(el("tr", {}, el("td", {}, row.attribute), el("td", {}, formatValue(row.query_value)),
      el("td", {}, fmt(row.inside, 2)), el("td", {}, fmt(row.outside, 2)),
      el("td", {}, row.contrast === null ? "-" : (row.contrast >= 0 ? "+" : "") + fmt(row.contrast, 2)),
      el("td", {}, row.n_inside), el("td", {}, row.n_outside)));
  }
  return el("table", { class: "agreement", id: "agreement" }, rows);
}

function histogram(record) {
  const { counts, edges } = record.histogram;
  const peak = Math.max(1, ...counts);
  const rows = counts.map((count, i) => {
    const label = edges[i + 1] === null ? `≥ ${edges[i]}` : `${edges[i]}–${edges[i + 1]}`;
    const inside = edges[i + 1] !== null && edges[i + 1] <= record.epsilon + 1e-9;
    return el("tr", {}, el("td", {}, label),
      el("td", { style: "text-align:left" }, el("span", { class: "rate", style: `width:${(count / peak * 120).toFixed(0)}px;background:${inside ? "#57a" : "#aaa"}` })),
      el("td", {}, count));
  });
  return el("table", { class: "histogram" }, rows);
}

// ----- the all-sites grid ------------------------------------------------------------------

async function runGrid() {
  showError("");
  const values = formValues();
  const grid = $("grid");
  grid.hidden = false;
  grid.replaceChildren(el("p", { class: "meta" }, "querying every site…"));
  $("progress-box").hidden = false;
  state.cancelRequested = false;
  $("cancel").disabled = false;
  try {
    let job = await startJob("/api/jobs/grid", { model: values.model, input: values.input, position: values.position,
                                                 metric: values.metric, epsilon: Number(values.epsilon), seed: Number(values.seed) });
    job = await pollJob(job);
    if (job.state !== "done") throw new Error(job.error || "the grid was cancelled");
    renderGrid(grid, job.result);
  } catch (error) {
    grid.hidden = true;
    showError(error.message);
  } finally {
    state.job = null;
    $("cancel").disabled = true;
    $("progress-box").hidden = true;
  }
}

function renderGrid(container, grid) {
  const rows = [el("tr", {}, ["site", "in-ε rate", "", "distinct in ε", "valid", "most agreeing attribute", "inside", "outside"].map((h) => el("th", {}, h)))];
  for (const row of grid.rows) {
    rows.push(el("tr", { class: "site-row", "data-site": row.site, title: `open ${row.site}`,
                         onclick: () => { $("site").value = row.site; runQuery(); } },
      el("td", {}, row.site), el("td", {}, fmt(row.in_epsilon_rate, 3)),
      el("td", { style: "text-align:left" }, el("span", { class: "rate", style: `width:${(row.in_epsilon_rate * 120).toFixed(0)}px` })),
      el("td", {}, row.in_epsilon_distinct), el("td", {}, fmt(row.valid_rate, 2)),
      el("td", { style: "text-align:left" }, row.top_attribute || "-"), el("td", {}, fmt(row.inside, 2)), el("td", {}, fmt(row.outside, 2))));
  }
  container.replaceChildren(
    el("h3", {}, `Every site at ${grid.position_label} of ${grid.input} (${grid.candidates} candidates each, ${grid.seconds.toFixed(1)} s)`),
    el("table", { id: "grid-table" }, rows));
}

// ----- causal check of the readout ----------------------------------------------------------

async function runVerify() {
  // Patches the query shown, never a new one: nothing to patch before a query has run.
  if (!state.request) return;
  showError("");
  const box = $("verify");
  box.hidden = false;
  box.replaceChildren(el("p", { class: "meta" }, "patching…"));
  try {
    const report = await api("POST", "/api/verify", state.request);
    const rows = [el("tr", {}, ["side", "sample", "D", "KL max", "KL mean", "top prediction changed"].map((h) => el("th", {}, h)))];
    for (const side of ["inside", "outside"]) {
      for (const row of report[side]) {
        rows.push(el("tr", { class: `verify-${side}` }, el("td", {}, side === "inside" ? "in ε" : "outside ε"),
          el("td", { class: "input" }, row.text), el("td", {}, fmt(row.distance)), el("td", {}, fmt(row.kl_max, 4)),
          el("td", {}, fmt(row.kl_mean, 4)), el("td", {}, `${Math.round(100 * row.top_prediction_changed)} %`)));
      }
    }
    const mean = (m) => (m ? `KL max ${fmt(m.kl_max, 4)}, top prediction changed ${Math.round(100 * m.top_prediction_changed)} %` : "none");
    box.replaceChildren(
      el("h3", {}, "The query's activation replaced by a sample's (at its best position)"),
      el("p", { class: "meta", id: "verify-summary" }, `mean inside ε: ${mean(report.inside_mean)} · mean outside ε: ${mean(report.outside_mean)}`),
      el("table", { id: "verify-table" }, rows));
  } catch (error) {
    box.hidden = true;
    showError(error.message);
  }
}

// ----- saved views and comparison ----------------------------------------------------------

function savedViews() {
  try { return JSON.parse(localStorage.getItem(SAVED_KEY) || "[]"); } catch { return []; }
}

function storeSaved(views) {
  localStorage.setItem(SAVED_KEY, JSON.stringify(views));
  $("saved-count").textContent = views.length ? `(${views.length})` : "";
}

function saveView() {
  if (!state.record) return;
  const r = state.record;
  const views = savedViews();
  views.push({ title: `${r.model} ${r.site} @ ${r.position_label}: ${r.query.text}`, values: formValues(), record: r });
  storeSaved(views);
}

function renderSaved() {
  const views = savedViews();
  $("saved-list").replaceChildren(...(views.length ? views.map((view, i) => el("div", { class: "saved-item" },
    el("label", {}, el("input", { type: "checkbox", class: "compare-tick", "data-index": i }), ` ${view.title} `),
    el("button", { type: "button", onclick: () => { setForm(view.values); switchView("query"); runQuery(); } }, "open"),
    el("button", { type: "button", onclick: () => { views.splice(i, 1); storeSaved(views); renderSaved(); } }, "remove")))
    : [el("p", { class: "meta" }, "No saved views yet: run a query and press “Save view”.")]));
}

function compareSaved() {
  const views = savedViews();
  const ticked = [...document.querySelectorAll(".compare-tick:checked")].map((box) => views[Number(box.dataset.index)]);
  if (ticked.length < 2) { showError("Tick at least two saved views to compare."); return; }
  showError("");
  $("compare").replaceChildren(...ticked.map((view) => {
    const panel = el("div", { class: "compare-panel" });
    const body = el("div");
    renderQuery(body, view.record, { compact: true });
    panel.append(el("h3", {}, view.title), body);
    return panel;
  }));
}

// ----- the attention page ------------------------------------------------------------------

function fillLayers() {
  const model = state.models[$("att-model").value];
  $("att-layer").replaceChildren(...[...Array(model.n_layers).keys()].map((l) => el("option", { value: l }, l)));
}

async function runAttention(event) {
  if (event) event.preventDefault();
  showError("");
  const values = { model: $("att-model").value, input: $("att-input").value, layer: $("att-layer").value };
  writeUrl("attention", values);
  try {
    const result = await api("POST", "/api/attention", { model: values.model, input: values.input, layer: Number(values.layer) });
    const heads = result.patterns.map((pattern, head) => {
      const rows = [el("tr", {}, el("th"), result.tokens.map((t) => el("th", {}, t)))];
      pattern.forEach((row, q) => rows.push(el("tr", {}, el("th", {}, result.tokens[q]), row.map((w, k) => {
        const shade = Math.round(255 * (1 - w));
        return el("td", { style: `background:rgb(${shade},${shade},255)`, title: `${result.tokens[q]}@${q} → ${result.tokens[k]}@${k}: ${fmt(w)}` });
      }))));
      return el("div", {}, el("h3", {}, `a${result.layer}.${head}`), el("table", { class: "pattern" }, rows));
    });
    $("attention-result").replaceChildren(el("p", { class: "meta" }, `rows: query position, columns: key position; ${result.input}`),
                                          el("div", { class: "heads" }, heads));
  } catch (error) {
    showError(error.message);
  }
}

// ----- views and start-up ------------------------------------------------------------------

function switchView(view) {
  for (const name of ["query", "attention", "saved"]) {
    $(`view-${name}`).hidden = name !== view;
    $(`nav-${name}`).classList.toggle("active", name === view);
  }
  if (view === "saved") { renderSaved(); writeUrl("saved", {}); }
  if (view === "attention") {
    if (!$("att-input").value) $("att-input").value = $("input").value;
    writeUrl("attention", { model: $("att-model").value, input: $("att-input").value, layer: $("att-layer").value });
  }
  if (view === "query") writeUrl("query", formValues());
}

async function exportHtml() {
  try {
    const response = await fetch("/api/query/html", { method: "POST", headers: { "Content-Type": "application/json" },
                                                      body: JSON.stringify(queryRequest(formValues())) });
    if (!response.ok) throw new Error((await response.json()).detail);
    const link = el("a", { href: URL.createObjectURL(await response.blob()),
                           download: `inversionview-${$("site").value}.html` });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (error) {
    showError(error.message);
  }
}

async function start() {
  try {
    for (const model of await api("GET", "/api/models")) state.models[model.name] = model;
  } catch (error) {
    showError(`cannot reach the server: ${error.message}`);
    return;
  }
  fillModelSelect($("model"));
  fillModelSelect($("att-model"));
  storeSaved(savedViews());
  const params = Object.fromEntries(new URLSearchParams(location.search));
  setForm(params);
  $("att-model").value = $("model").value;
  fillLayers();

  $("query-form").addEventListener("submit", runQuery);
  $("cancel").addEventListener("click", cancelQuery);
  $("model").addEventListener("change", () => { $("input").value = state.models[$("model").value].example; fillSiteAndPosition(); });
  $("input").addEventListener("input", () => {
    clearTimeout(state.inputTimer);
    state.inputTimer = setTimeout(() => refreshTokens(state.models[$("model").value], $("position").value), 250);
  });
  $("position").addEventListener("change", () => { if (state.cut) renderInputTokens(state.cut); });
  $("random").addEventListener("click", async () => {
    try {
      const seed = Math.floor(Math.random() * 1e9);
      const example = await api("GET", `/api/models/${encodeURIComponent($("model").value)}/example?seed=${seed}`);
      $("input").value = example.input;
      fillPositions($("position").value);
    } catch (error) { showError(error.message); }
  });
  $("colour").addEventListener("change", () => { if (state.record) renderQuery($("result"), state.record, { colour: $("colour").checked }); });
  $("save").addEventListener("click", saveView);
  $("export").addEventListener("click", exportHtml);
  $("copy-link").addEventListener("click", () => navigator.clipboard?.writeText(location.href));
  $("grid-button").addEventListener("click", runGrid);
  $("verify-button").addEventListener("click", runVerify);
  $("compare-button").addEventListener("click", compareSaved);
  $("attention-form").addEventListener("submit", runAttention);
  $("att-model").addEventListener("change", fillLayers);
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    link.addEventListener("click", (event) => { event.preventDefault(); switchView(link.dataset.view); });
  }

  const view = params.view || "query";
  if (view === "attention") {
    if (params.model) $("att-model").value = params.model;
    fillLayers();
    $("att-input").value = params.input || $("input").value;
    if (params.layer) $("att-layer").value = params.layer;
  }
  switchView(view);
  if (view === "query" && params.model) runQuery();  // a link with a query reproduces it
  if (view === "attention" && params.model) runAttention();
}

start();
