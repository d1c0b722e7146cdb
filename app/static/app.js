// Upload page of the DeepLense anomaly service: plain JS, no framework, no build step.
// Talks to the API with relative URLs ("models", "score") so the page also works when the
// service is mounted under a path prefix behind a proxy.
"use strict";

(function () {
  const BROWSER_PREVIEWABLE = /\.(png|jpe?g)$/i;

  const form = document.getElementById("score-form");
  const filesInput = document.getElementById("files");
  const modelSelect = document.getElementById("model");
  const scoreSelect = document.getElementById("score");
  const scoreHelp = document.getElementById("score-help");
  const modelHelp = document.getElementById("model-help");
  const MODEL_HELP = modelHelp.textContent;
  const thresholdHelp = document.getElementById("threshold-help");
  const THRESHOLD_HELP = thresholdHelp.textContent;
  const thresholdInput = document.getElementById("threshold");
  const apiKeyInput = document.getElementById("api-key");
  const submitButton = document.getElementById("submit");
  const statusLine = document.getElementById("status");
  const banner = document.getElementById("banner");
  const resultsSection = document.getElementById("results-section");
  const resultsList = document.getElementById("results");
  const summary = document.getElementById("summary");
  const template = document.getElementById("result-template");

  let objectUrls = [];

  // ---- helpers ---------------------------------------------------------------------------

  function authHeaders() {
    const key = apiKeyInput.value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  function showBanner(message) {
    banner.textContent = message;
    banner.hidden = false;
  }

  function hideBanner() {
    banner.textContent = "";
    banner.hidden = true;
    delete banner.dataset.source;
  }

  /** A readable message from a FastAPI error body ({"detail": str | list | object}). */
  function describeDetail(body) {
    if (body === null || typeof body !== "object" || !("detail" in body)) return "";
    const detail = body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      // Validation errors [{loc: [...], msg: "..."}]; unreadable files also carry `filename`.
      return detail
        .map((d) => {
          if (d && typeof d === "object" && "msg" in d) {
            const msg = String(d.msg);
            if (typeof d.filename === "string") {
              return msg.includes(d.filename) ? msg : `${d.filename}: ${msg}`;
            }
            const loc = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
            return loc ? `${loc}: ${msg}` : msg;
          }
          return JSON.stringify(d);
        })
        .join("\n");
    }
    return JSON.stringify(detail);
  }

  /** Parse a response as JSON when it is JSON; otherwise null. */
  async function readJson(response) {
    const type = response.headers.get("content-type") || "";
    if (!type.includes("json")) return null;
    try {
      return await response.json();
    } catch (_) {
      return null;
    }
  }

  async function httpError(response) {
    const body = await readJson(response);
    const detail = describeDetail(body) || response.statusText || "request failed";
    return detail.includes("\n")
      ? `HTTP ${response.status}:\n${detail}`
      : `HTTP ${response.status}: ${detail}`;
  }

  /** Four significant figures, scientific notation for very small or large magnitudes. */
  function formatNumber(x) {
    if (typeof x !== "number" || !Number.isFinite(x)) return "—";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(3);
    return Number(x.toPrecision(4)).toString();
  }

  function formatShape(shape) {
    if (!Array.isArray(shape) || shape.length === 0) return "—";
    return shape.join(" × ") + " px";
  }

  function imageSource(b64) {
    if (typeof b64 !== "string" || b64 === "") return null;
    return b64.startsWith("data:") ? b64 : `data:image/png;base64,${b64}`;
  }

  function fillFrame(figure, src, alt, note) {
    const frame = figure.querySelector(".frame");
    frame.replaceChildren();
    if (src) {
      const img = document.createElement("img");
      img.src = src;
      img.alt = alt;
      img.decoding = "async";
      frame.appendChild(img);
    } else {
      const span = document.createElement("span");
      span.className = "placeholder";
      span.textContent = note || "not available";
      frame.appendChild(span);
    }
  }

  /** Fill one metric; a null value hides its row (e.g. the ensemble has no single loss). */
  function setMetric(card, cls, value, text) {
    const dd = card.querySelector(cls);
    if (value === null || value === undefined) {
      dd.parentElement.hidden = true;
      return;
    }
    dd.textContent = text;
    if (typeof value === "number") dd.dataset.value = String(value);
  }

  function formatPercentile(p) {
    return typeof p === "number" && Number.isFinite(p) ? `${p.toFixed(1)} %` : "—";
  }

  // ---- model list ------------------------------------------------------------------------

  let catalogue = { cards: {}, ensemble: null };

  /** Valid ?model= values from GET /models ({default, choices, models: [cards], ensemble}),
   *  tolerating a bare list of cards too. */
  function modelNames(body) {
    if (body && Array.isArray(body.choices)) {
      return body.choices.filter((n) => typeof n === "string");
    }
    const cards = Array.isArray(body) ? body : body && Array.isArray(body.models) ? body.models : [];
    return cards.map((c) => c && c.name).filter((n) => typeof n === "string" && n !== "");
  }

  function fillModels(names, preferred) {
    const previous = modelSelect.value;
    modelSelect.replaceChildren();
    for (const name of names) {
      const option = document.createElement("option");
      option.value = name;
      const auc = measuredAuc(catalogue.cards[name], "");
      option.textContent =
        name === ""
          ? "the service's default model"
          : name === "ensemble"
            ? "ensemble (all models)"
            : auc
              ? `${name} (AUC ${auc.value.toFixed(3)})`
              : name;
      modelSelect.appendChild(option);
    }
    const pick = [previous, preferred].find((n) => n && names.includes(n));
    if (pick) modelSelect.value = pick;
    modelSelect.dataset.loaded = "true";
    describeModel();
  }

  /** The score menu: "model's default" plus every score the loaded models compute, and
   *  its help line naming them (a score only some models' fits draw, said so). */
  function fillScores(cards) {
    const names = [];
    for (const card of cards) {
      for (const s of card.scores || []) if (!names.includes(s)) names.push(s);
    }
    const partial = names.filter((n) => !cards.every((c) => (c.scores || []).includes(n)));
    const noiseAware = names.filter((n) => n !== "mse" && !partial.includes(n));
    if (names.length > 0) {
      const parts = [];
      if (names.includes("mse")) parts.push("mse is the study's score (mean squared error)");
      if (noiseAware.length > 0) {
        parts.push(`${noiseAware.join(", ")} weigh the residual by the noise estimated from each image`);
      }
      if (partial.length > 0) {
        parts.push(`${partial.join(", ")}: drawn by the fit of the models that offer it`);
      }
      scoreHelp.textContent = `${parts.join("; ")}. The flag is judged by the chosen score.`;
    }
    const previous = scoreSelect.value;
    scoreSelect.replaceChildren();
    const byDefault = document.createElement("option");
    byDefault.value = "";
    byDefault.textContent = "model's default";
    scoreSelect.appendChild(byDefault);
    for (const name of names) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      scoreSelect.appendChild(option);
    }
    if (names.includes(previous)) scoreSelect.value = previous;
  }

  /** A card's measured test AUC (sub vs no_sub) for `score` ("" = its default score), as
   *  `evaluate --update-checkpoints` stores it: metrics.auc_<score>_sub, the default score's
   *  also as metrics.auc_sub. null when the card holds none. */
  function measuredAuc(card, score) {
    const metrics = card && card.metrics;
    if (!metrics) return null;
    const named = score || card.default_score;
    const value = metrics[`auc_${named}_sub`] ?? (score ? undefined : metrics.auc_sub);
    return typeof value === "number" ? { score: named, value } : null;
  }

  /** Enable in the score menu only the scores the chosen model (the ensemble: every member)
   *  can be scored by; a chosen score it cannot draw falls back to the model's default. */
  function offerScores(name) {
    const members = name === "ensemble" && catalogue.ensemble ? catalogue.ensemble.members : [name];
    const cards = members.map((m) => catalogue.cards[m]).filter(Boolean);
    for (const option of scoreSelect.options) {
      if (!option.value) continue;
      option.disabled =
        cards.length > 0 && !cards.every((c) => (c.scores || []).includes(option.value));
    }
    const chosen = scoreSelect.selectedOptions[0];
    if (chosen && chosen.disabled) scoreSelect.value = "";
  }

  /** One line under the model menu: input size, default score, its threshold and FPR, and
   *  the measured AUC of the chosen score, with a caveat when that AUC is near chance. */
  function describeModel() {
    const name = modelSelect.value;
    offerScores(name);
    const parts = [];
    if (name === "ensemble" && catalogue.ensemble) {
      const e = catalogue.ensemble;
      parts.push(`mean of the calibrated percentiles of ${e.members.join(", ")}`);
      if (e.default_score) parts.push(`default score ${e.default_score}`);
      if (typeof e.threshold_percentile === "number") {
        parts.push(`flagged above ${formatPercentile(e.threshold_percentile)}`);
      }
    } else if (catalogue.cards[name]) {
      const card = catalogue.cards[name];
      if (card.input) parts.push(`${card.input.height} × ${card.input.width} px input`);
      if (card.default_score) parts.push(`default score ${card.default_score}`);
      const cal = card.calibration;
      if (cal) {
        const fpr = formatNumber(100 * cal.fpr);
        parts.push(`threshold ${formatNumber(cal.threshold)} at ${fpr} % FPR on normals`);
      } else {
        parts.push("uncalibrated: no threshold or percentile");
      }
      const auc = measuredAuc(card, scoreSelect.value);
      if (auc) {
        const what = `${auc.score}, sub vs no_sub, simulated test set`;
        parts.push(`measured AUC ${auc.value.toFixed(3)} (${what})`);
      }
      modelHelp.textContent = parts.join(" · ");
      if (auc && auc.value < 0.6) {
        const caveat = document.createElement("span");
        caveat.className = "caveat";
        caveat.textContent =
          " · near chance on simulated test data: treat its flags as uninformative";
        modelHelp.appendChild(caveat);
      }
    }
    if (!(catalogue.cards[name] && name !== "ensemble")) {
      modelHelp.textContent = parts.length ? parts.join(" · ") : MODEL_HELP;
    }
    thresholdHelp.textContent =
      name === "ensemble"
        ? "Override the flag threshold, in percentile units (0–100)."
        : THRESHOLD_HELP;
  }

  async function loadModels() {
    try {
      const response = await fetch("models", { headers: authHeaders() });
      if (!response.ok) {
        const message = await httpError(response);
        throw new Error(response.status === 401 ? `${message}; enter the API key` : message);
      }
      const body = await response.json();
      const names = modelNames(body);
      if (names.length === 0) throw new Error("the service has no models loaded");
      catalogue = { cards: {}, ensemble: (body && body.ensemble) || null };
      for (const card of (body && body.models) || []) catalogue.cards[card.name] = card;
      fillScores((body && body.models) || []);
      fillModels(names, body && body.default);
      if (banner.dataset.source === "models") hideBanner();
    } catch (err) {
      catalogue = { cards: {}, ensemble: null };
      fillModels([""], "");
      showBanner(
        `Could not load the model list (${err.message}). Images are scored with the service's default model.`,
      );
      banner.dataset.source = "models";
    }
  }

  // ---- results ---------------------------------------------------------------------------

  function membersTable(members) {
    const table = document.createElement("table");
    table.className = "members";
    const caption = table.createCaption();
    caption.textContent = "Ensemble members";
    const head = table.createTHead().insertRow();
    for (const title of ["Model", "Score", "Loss (MSE)", "Percentile", "Flag"]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = title;
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const m of members) {
      const row = body.insertRow();
      row.insertCell().textContent = m.model;
      row.insertCell().textContent = formatNumber(m.anomaly_score);
      row.insertCell().textContent = formatNumber(m.reconstruction_loss);
      row.insertCell().textContent = formatPercentile(m.percentile);
      const flag = row.insertCell();
      flag.textContent = m.is_anomaly ? "anomalous" : "normal";
      flag.className = m.is_anomaly ? "flag-anomalous" : "flag-normal";
    }
    return table;
  }

  /** One sentence: whether the image is flagged, by which score, against which threshold. */
  // "0.05″/px (upload) · PSF FWHM 0.235″ (upload) · noise σ 0.0018 (ERR)": what the score used.
  function instrumentText(instrument) {
    if (!instrument) return "–";
    const { pixel_scale: scale, psf, noise } = instrument;
    const parts = [
      `${formatNumber(scale.value_arcsec)}″/px (${scale.source})`,
      `PSF FWHM ${formatNumber(psf.fwhm_arcsec)}″ (${psf.source})`,
      `noise σ ${formatNumber(noise.median)} (${noise.extension || noise.source})`,
    ];
    return parts.join(" · ");
  }

  // "tension 35.9 + best blob 145.7 · blob at (-1.40″, 0.60″), column 46.5, row 86.5 ·
  // θ_sub 0.08″": what LensFit 2's gravitational-imaging tests found (imaging_gain).
  function imagingText(found) {
    const parts = [
      `tension ${formatNumber(found.tension)} + best blob ${formatNumber(found.blob_gain)}`,
    ];
    if (found.blob_x_arcsec === null || found.blob_x_arcsec === undefined) {
      parts.push("no blob of positive mass improves the fit");
    } else {
      parts.push(
        `blob at (${formatNumber(found.blob_x_arcsec)}″, ${formatNumber(found.blob_y_arcsec)}″), ` +
          `column ${formatNumber(found.blob_column)}, row ${formatNumber(found.blob_row)}`,
      );
      parts.push(`θ_sub ${formatNumber(found.blob_theta_sub_arcsec)}″`);
    }
    return parts.join(" · ");
  }

  function verdictText(result, thresholdUnits) {
    const score = result.score || "the anomaly score";
    if (result.is_anomaly === null || result.is_anomaly === undefined) {
      return `No threshold for ${score}: not flagged either way (give a threshold, or calibrate the model).`;
    }
    const ensemble = thresholdUnits === "percentile";
    const value = ensemble ? formatPercentile(result.percentile) : formatNumber(result.anomaly_score);
    const limit = ensemble ? formatPercentile(result.threshold) : formatNumber(result.threshold);
    const what = ensemble ? `the members' mean percentile of ${score}` : score;
    return result.is_anomaly
      ? `Flagged: ${what} ${value} is above the threshold ${limit}, so the image is likely to hold substructure.`
      : `Not flagged: ${what} ${value} is not above the threshold ${limit}, as for a normal lens.`;
  }

  function renderResult(result, file, model, thresholdUnits) {
    const card = template.content.firstElementChild.cloneNode(true);
    const name = result.filename || (file && file.name) || "(unnamed)";
    card.querySelector(".filename").textContent = name;
    card.dataset.filename = name;
    const badge = card.querySelector(".badge");

    if (result.error) {
      card.classList.add("is-error");
      badge.textContent = "error";
      badge.classList.add("badge-error");
      const message = card.querySelector(".file-error");
      message.textContent = result.error;
      message.hidden = false;
      card.querySelector(".result-body").hidden = true;
      return card;
    }

    if (result.is_anomaly === null || result.is_anomaly === undefined) {
      card.classList.add("is-unflagged");
      badge.textContent = "no threshold";
      badge.classList.add("badge-unflagged");
    } else {
      const anomalous = Boolean(result.is_anomaly);
      card.classList.add(anomalous ? "is-anomalous" : "is-normal");
      badge.textContent = anomalous ? "anomalous" : "normal";
      badge.classList.add(anomalous ? "badge-anomalous" : "badge-normal");
    }

    // The model input as the server saw it (scaled, resized) when the API returns it;
    // otherwise the uploaded file itself where the browser can draw it (PNG, JPEG).
    let inputSrc = imageSource(result.input);
    let inputNote = "input preview not returned";
    if (!inputSrc && file && BROWSER_PREVIEWABLE.test(file.name)) {
      inputSrc = URL.createObjectURL(file);
      objectUrls.push(inputSrc);
      card.querySelector(".fig-input figcaption").textContent = "Input (as uploaded)";
    } else if (!inputSrc) {
      inputNote = "no browser preview for this format";
    }
    fillFrame(card.querySelector(".fig-input"), inputSrc, `Input image ${name}`, inputNote);
    fillFrame(
      card.querySelector(".fig-reconstruction"),
      imageSource(result.reconstruction),
      `Reconstruction of ${name} by ${model}`,
      "not requested",
    );
    fillFrame(
      card.querySelector(".fig-residual"),
      imageSource(result.residual),
      `Residual heat map of ${name}`,
      "not requested",
    );
    if (typeof result.residual_max === "number" && result.residual) {
      const scale = card.querySelector(".fig-residual .scale");
      if (result.residual_units === "sigma") {
        // Diverging: -residual_max sigma blue, 0 white, +residual_max sigma red.
        scale.classList.add("scale-sigma");
        scale.querySelector(".scale-min").textContent = `−${formatNumber(result.residual_max)} σ`;
        scale.querySelector(".scale-max").textContent = `+${formatNumber(result.residual_max)} σ`;
        card.querySelector(".residual-caption").textContent =
          result.score === "chi2"
            ? "Residual in noise σ"
            : "Residual in noise σ, PSF-matched";
      } else {
        // Heat map: black = 0, pale yellow = residual_max (pixel units).
        scale.querySelector(".scale-max").textContent = formatNumber(result.residual_max);
      }
      scale.hidden = false;
    }
    if (model === "ensemble") {
      card.querySelector(".fig-reconstruction figcaption").textContent = "Mean reconstruction";
    }

    const loss = result.reconstruction_loss;
    const threshold = result.threshold;
    if (result.score) {
      card.querySelector(".m-score-name").textContent = `Anomaly score (${result.score})`;
    }
    // The number the flag was judged by: the score for one model, the mean percentile for
    // the ensemble. It is the one coloured, and the verdict line says why.
    const decides = thresholdUnits === "percentile" ? ".m-percentile" : ".m-score";
    card.querySelector(decides).classList.add("decides");
    const verdict = card.querySelector(".verdict");
    verdict.textContent = verdictText(result, thresholdUnits);
    verdict.hidden = verdict.textContent === "";
    setMetric(card, ".m-score", result.anomaly_score, formatNumber(result.anomaly_score));
    setMetric(card, ".m-loss", loss, formatNumber(loss));
    setMetric(
      card,
      ".m-threshold",
      threshold,
      thresholdUnits === "percentile" ? formatPercentile(threshold) : formatNumber(threshold),
    );
    setMetric(card, ".m-percentile", result.percentile, formatPercentile(result.percentile));
    if (model === "ensemble") {
      card.querySelector(".m-percentile").previousElementSibling.textContent = "Mean percentile";
    }
    setMetric(card, ".m-w1", result.w1, formatNumber(result.w1));
    let shape = formatShape(result.input_shape);
    if (result.resized) shape += " · resized";
    card.querySelector(".m-shape").textContent = shape;
    card.querySelector(".m-instrument").textContent = instrumentText(result.instrument);
    if (result.gravitational_imaging) {
      const imaging = card.querySelector(".m-imaging");
      imaging.textContent = imagingText(result.gravitational_imaging);
      imaging.parentElement.hidden = false;
    }
    const warnings = card.querySelector(".warnings");
    for (const text of Array.isArray(result.warnings) ? result.warnings : []) {
      const item = document.createElement("li");
      item.textContent = text;
      warnings.appendChild(item);
    }
    warnings.hidden = warnings.children.length === 0;
    if (Array.isArray(result.members) && result.members.length > 0) {
      card.querySelector(".numbers").appendChild(membersTable(result.members));
    }
    return card;
  }

  function renderResults(body, files, seconds) {
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls = [];
    const results = Array.isArray(body.results) ? body.results : [];
    const model = body.model || modelSelect.value;
    const units = body.threshold_units || (model === "ensemble" ? "percentile" : "score");
    const cards = results.map((r, i) => renderResult(r, files[i], model, units));
    resultsList.replaceChildren(...cards);

    const failed = results.filter((r) => r.error).length;
    const anomalous = results.filter((r) => !r.error && r.is_anomaly === true).length;
    const normal = results.filter((r) => !r.error && r.is_anomaly === false).length;
    const parts = [`${results.length} file${results.length === 1 ? "" : "s"} scored with ${model}`];
    parts.push(`${anomalous} anomalous`, `${normal} normal`);
    if (failed) parts.push(`${failed} unreadable`);
    summary.textContent = `${parts.join(" · ")} · ${seconds.toFixed(2)} s`;
    resultsSection.hidden = false;
  }

  // ---- submit ----------------------------------------------------------------------------

  async function submit(event) {
    event.preventDefault();
    hideBanner();
    resultsSection.hidden = true;
    resultsList.replaceChildren();
    const files = Array.from(filesInput.files || []);
    if (files.length === 0) {
      showBanner("Choose at least one image file.");
      filesInput.focus();
      return;
    }
    const model = modelSelect.value; // "" = the service's default model
    const params = new URLSearchParams({ include_images: "true" });
    if (model) params.set("model", model);
    if (scoreSelect.value) params.set("score", scoreSelect.value);
    const threshold = thresholdInput.value.trim();
    if (threshold !== "") {
      if (!Number.isFinite(Number(threshold))) {
        showBanner("The threshold must be a number.");
        thresholdInput.focus();
        return;
      }
      params.set("threshold", threshold);
    }
    const data = new FormData();
    for (const file of files) data.append("files", file, file.name);

    submitButton.disabled = true;
    form.setAttribute("aria-busy", "true");
    statusLine.textContent = `Scoring ${files.length} file${files.length === 1 ? "" : "s"} with ${model || "the default model"}…`;
    const started = performance.now();
    try {
      const response = await fetch(`score?${params}`, {
        method: "POST",
        body: data,
        headers: authHeaders(),
      });
      if (!response.ok) {
        showBanner(await httpError(response));
        statusLine.textContent = "";
        return;
      }
      const body = await response.json();
      renderResults(body, files, (performance.now() - started) / 1000);
      statusLine.textContent = "Done.";
    } catch (err) {
      showBanner(`The request failed: ${err.message}`);
      statusLine.textContent = "";
    } finally {
      submitButton.disabled = false;
      form.removeAttribute("aria-busy");
    }
  }

  form.addEventListener("submit", submit);
  apiKeyInput.addEventListener("change", loadModels);
  modelSelect.addEventListener("change", describeModel);
  scoreSelect.addEventListener("change", describeModel);
  loadModels();
})();
