// The home page: the runs going on, the recent ones, and the form that checks a recipe and
// starts a benchmark session with it.
"use strict";

(() => {
  const { call, post, el, when } = aif;
  const RECENT = 15;

  function runLink(run) {
    return el("a", { href: `/runs/${encodeURIComponent(run.run_id)}` }, run.run_id);
  }

  async function refreshRunning() {
    try {
      const running = await call("/api/runs?live=1");
      const body = document.querySelector("#running tbody");
      body.replaceChildren(
        ...running.map((run) =>
          el("tr", { "data-run": run.run_id },
            el("td", {}, runLink(run)),
            el("td", {}, run.recipe),
            el("td", { class: "status" }, run.status),
            el("td", {}, when(run.started_at)),
            el("td", {}, run.live_jobs.map((job) => `${job.name}: ${job.state}`).join(", ")))
        )
      );
      document.getElementById("running-none").hidden = running.length > 0;
      document.getElementById("running").hidden = running.length === 0;
    } catch (err) {
      document.getElementById("running-none").textContent = `Cannot list the runs: ${err.message}`;
    }
  }

  async function refreshRecent() {
    try {
      const runs = (await call("/api/runs")).slice(0, RECENT);
      const body = document.querySelector("#recent tbody");
      body.replaceChildren(
        ...runs.map((run) =>
          el("tr", { "data-run": run.run_id },
            el("td", {}, runLink(run)),
            el("td", {}, run.recipe),
            el("td", { class: "status" }, run.status),
            el("td", {}, when(run.started_at)),
            el("td", {}, run.report_url ? el("a", { href: run.report_url }, "report") : ""))
        )
      );
    } catch (err) {
      // the running list says why already
    }
  }

  function chosenRecipe() {
    const typed = document.getElementById("recipe-path").value.trim();
    return typed || document.getElementById("recipe-choice").value;
  }

  function show(...children) {
    document.getElementById("check-result").replaceChildren(...children);
  }

  function showError(err) {
    const items = (err.problems || []).map((problem) => el("li", {}, problem));
    // the message lists the problems too: its first line heads the list instead
    const headline = items.length ? err.message.split("\n")[0] : err.message;
    show(el("p", { class: "error", id: "check-error" }, headline), ...(items.length ? [el("ul", { class: "problems" }, ...items)] : []));
  }

  async function validate() {
    show(el("p", {}, "checking…"));
    try {
      const check = await post("/api/recipes/validate", { recipe: chosenRecipe() });
      show(el("p", { class: "ok", id: "check-ok" },
        `${check.path}: ${check.name}, ${check.services} service(s), ${check.clients} client(s), ` +
        `${check.test_cases} test case(s)`));
    } catch (err) {
      showError(err);
    }
  }

  async function start(event) {
    event.preventDefault();
    const button = document.getElementById("start");
    button.disabled = true;
    show(el("p", {}, "starting…"));
    try {
      const started = await post("/api/sessions", {
        recipe: chosenRecipe(),
        executor: document.getElementById("executor").value,
        keyword: document.getElementById("keyword").value,
        pytest_args: document.getElementById("pytest-args").value,
      });
      window.location.assign(`/runs/${encodeURIComponent(started.run_id)}`);
    } catch (err) {
      showError(err);
      button.disabled = false;
    }
  }

  document.getElementById("validate").addEventListener("click", validate);
  document.getElementById("start-form").addEventListener("submit", start);
  refreshRunning();
  refreshRecent();
  setInterval(refreshRunning, 2000);
  setInterval(refreshRecent, 10000);
})();
