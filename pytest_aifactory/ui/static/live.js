// The live page of one run: its status and jobs, each client process's counters and the
// servers' key series as charts, and its logs followed as they grow; polled every second until
// the run ends, when one last round shows the final values.
"use strict";

(() => {
  const { call, post, el, when, age, number, lineChart } = aif;
  const runId = document.body.dataset.runId;
  const base = `/api/runs/${encodeURIComponent(runId)}`;
  const POLL_MS = 1000;
  const KEEP_POINTS = 900;
  const KEEP_LOG_CHARS = 400000;
  const FIELDS = ["completed", "failed", "output_tokens", "in_flight", "rps"];

  const history = new Map(); // process label -> {t: [], completed: [], ..., rps: []}
  let ended = false;
  let timer = null;
  let logPath = null;
  let logOffset = 0;
  let logFilesSeen = "";
  const busy = new Set();

  // one request of each kind at a time: a slow answer is skipped over, not queued
  async function once(name, job) {
    if (busy.has(name)) return;
    busy.add(name);
    try {
      await job();
    } finally {
      busy.delete(name);
    }
  }

  function showStatus(status) {
    const summary = status.summary;
    document.getElementById("run-status").textContent = summary.status;
    document.getElementById("run-recipe").textContent = `(${summary.recipe}, ${summary.executor}, started ${when(summary.started_at)})`;
    const link = document.getElementById("report-link");
    if (status.report_url) {
      link.href = status.report_url;
      link.hidden = false;
    }
    const body = document.querySelector("#jobs tbody");
    body.replaceChildren(
      ...status.jobs.map((job) =>
        el("tr", { "data-job": job.name },
          el("td", {}, job.name),
          el("td", {}, job.role),
          el("td", {}, job.job_id),
          el("td", { class: "state" }, job.state + (job.checked ? "" : " (as recorded)")),
          el("td", {}, job.health || ""),
          el("td", {}, job.nodes.join(", ")),
          el("td", {}, job.endpoint || ""),
          el("td", {}, age(job.age_s)))
      )
    );
    document.getElementById("stop-jobs").disabled = !status.jobs.some((job) => job.kept);
    if (status.ended && !ended) {
      ended = true;
      const note = document.getElementById("run-ended");
      note.textContent = `The run has ended (${summary.status}); the values below are its last.`;
      note.hidden = false;
      document.getElementById("stop-session").disabled = true;
    }
  }

  async function pollStatus() {
    const status = await call(base);
    showStatus(status);
  }

  // no node in the key: the progress files the page falls back on when the run's pushgateway
  // is gone do not know it, and process numbers are unique within a test already
  function label(row) {
    return `${row.client} ${row.level} #${row.process}`;
  }

  function record(at, rows) {
    for (const row of rows) {
      const key = label(row);
      let h = history.get(key);
      if (!h) {
        h = { t: [] };
        for (const field of FIELDS) h[field] = [];
        history.set(key, h);
      }
      const last = h.t.length - 1;
      if (last >= 0 && h.t[last] >= at) continue;
      const rps = last >= 0 ? Math.max(0, (row.completed - h.completed[last]) / (at - h.t[last])) : 0;
      h.t.push(at);
      for (const field of FIELDS) h[field].push(field === "rps" ? rps : row[field]);
      if (h.t.length > KEEP_POINTS) for (const series of Object.values(h)) series.shift();
    }
  }

  function showCounters(found) {
    document.getElementById("counters-source").textContent = found.source;
    document.getElementById("counters-note").textContent = found.note ? `(${found.note})` : "";
    record(found.at, found.rows);
    const body = document.querySelector("#counters tbody");
    body.replaceChildren(
      ...[...history.entries()].map(([key, h]) => {
        const last = h.t.length - 1;
        return el("tr", { "data-process": key },
          el("td", { class: "process" }, key),
          ...FIELDS.map((field) => el("td", { class: field, "data-process": key }, number(h[field][last]))));
      })
    );
    for (const field of FIELDS) {
      const lines = [...history.entries()].map(([key, h]) => ({
        name: key,
        points: h.t.map((t, i) => [t, h[field][i]]),
      }));
      lineChart(document.getElementById(`chart-${field}`), lines);
    }
  }

  async function pollCounters() {
    showCounters(await call(`${base}/counters`));
  }

  function slug(text) {
    return text.replace(/[^A-Za-z0-9_-]+/g, "-");
  }

  async function pollSeries() {
    const found = await call(`${base}/series`);
    document.getElementById("series-note").textContent =
      found.note ? found.note : `from ${found.source}`;
    const holder = document.getElementById("server-charts");
    for (const series of found.series) {
      const id = `series-${slug(series.service)}-${slug(series.name)}`;
      let chart = document.getElementById(id);
      if (!chart) {
        chart = el("div", { class: "chart", id, "data-points": "0" });
        const unit = series.unit ? ` (${series.unit})` : series.type === "counter" ? " (per second)" : "";
        holder.append(el("figure", {}, el("figcaption", {}, `${series.service}: ${series.name}${unit}`), chart));
      }
      lineChart(chart, [{ name: series.name, points: series.points }]);
    }
  }

  async function pollLogFiles() {
    const files = await call(`${base}/logs`);
    const signature = files.map((file) => file.path).join("\n");
    if (signature === logFilesSeen) return;
    logFilesSeen = signature;
    const select = document.getElementById("log-file");
    const chosen = select.value;
    select.replaceChildren(...files.map((file) => el("option", { value: file.path }, file.label)));
    if (files.some((file) => file.path === chosen)) select.value = chosen;
    if (logPath === null && files.length > 0) switchLog(select.value);
  }

  function switchLog(path) {
    logPath = path;
    logOffset = 0;
    document.getElementById("log").textContent = "";
  }

  async function pollLog() {
    if (logPath === null) return;
    const path = logPath;
    for (let reads = 0; reads < 8; reads++) {
      const chunk = await call(`${base}/logs?path=${encodeURIComponent(path)}&offset=${logOffset}`);
      if (path !== logPath) return;
      const pre = document.getElementById("log");
      if (chunk.text) {
        const follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        let text = pre.textContent + chunk.text;
        if (text.length > KEEP_LOG_CHARS) text = text.slice(text.length - KEEP_LOG_CHARS);
        pre.textContent = text;
        if (follow) pre.scrollTop = pre.scrollHeight;
      }
      logOffset = chunk.next_offset;
      if (chunk.next_offset >= chunk.size || !chunk.text) return;
    }
  }

  function report(err) {
    document.getElementById("action-result").textContent = err.message;
  }

  async function round() {
    const jobs = [
      once("status", pollStatus),
      once("counters", pollCounters),
      once("series", pollSeries),
      once("logfiles", pollLogFiles).then(() => once("log", pollLog)),
    ];
    const results = await Promise.allSettled(jobs);
    const failed = results.find((result) => result.status === "rejected");
    if (failed) report(failed.reason);
  }

  async function tick() {
    const wasEnded = ended;
    await round();
    if (wasEnded) return; // the round after the end shows the final values: polling stops
    timer = setTimeout(tick, POLL_MS);
  }

  function showResults(results) {
    const box = document.getElementById("action-result");
    if (results.length === 0) {
      box.textContent = "nothing was left to stop";
      return;
    }
    box.replaceChildren(el("ul", {}, ...results.map((r) =>
      el("li", { class: r.ok ? "ok" : "error" }, `${r.job}: ${r.detail}`))));
  }

  document.getElementById("stop-session").addEventListener("click", async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    document.getElementById("action-result").textContent =
      "stopping the session: it stops its jobs and saves what it measured…";
    try {
      showResults(await post(`${base}/stop-session`));
    } catch (err) {
      report(err);
      button.disabled = ended;
    }
  });

  document.getElementById("stop-jobs").addEventListener("click", async () => {
    if (!window.confirm("Stop every job of this run, kept services included?")) return;
    try {
      showResults(await post(`${base}/stop-jobs`));
    } catch (err) {
      report(err);
    }
  });

  document.getElementById("log-file").addEventListener("change", (event) => switchLog(event.target.value));
  tick();
})();
