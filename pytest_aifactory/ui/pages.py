"""The HTML of the interface's pages: static skeletons that their scripts fill from the JSON
endpoints, so every figure the page shows is one the API answered.

No inline script: the content security policy allows scripts from the interface's own files only.
The access token reaches the scripts through a <meta> element, which only authenticated pages
carry; they send it back in a header with every change they ask for (see `ui.auth`).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from pytest_aifactory.ui.auth import CSRF_HEADER

COUNTER_CHARTS = (
    ("completed", "completed requests"),
    ("failed", "failed requests"),
    ("output_tokens", "output tokens"),
    ("in_flight", "requests in flight"),
    ("rps", "requests/s"),
)
"""The per-process counters drawn on the live page: (field, title)."""


def _head(title: str, token: str, script: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="aifactory-token" content="{escape(token)}">
<meta name="aifactory-csrf-header" content="{escape(CSRF_HEADER)}">
<title>{escape(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/ui.css">
<script src="/static/common.js" defer></script>
<script src="/static/{script}" defer></script>
</head>
"""


def _nav() -> str:
    return '<nav><a href="/">aifactory</a> <a href="/reports/index.html">dashboard</a></nav>\n'


def home_page(
    *,
    token: str,
    recipes: Sequence[str],
    dashboard_url: str | None,
    dashboard_note: str | None,
    reports_dir: str,
) -> str:
    options = "".join(f'<option value="{escape(path)}">{escape(path)}</option>' for path in recipes)
    if dashboard_url is not None:
        dashboard = (
            f'<p><a id="dashboard-link" href="{escape(dashboard_url)}">Open the experiments '
            f"dashboard</a> of {escape(reports_dir)}: every run with its verdict and headline "
            "figures, and each recipe's history.</p>"
        )
    else:
        dashboard = f'<p id="dashboard-note">{escape(dashboard_note or "no dashboard yet")}</p>'
    return (
        _head("aifactory", token, "home.js")
        + "<body>\n"
        + _nav()
        + f"""<main>
<h1>Benchmark runs</h1>
<section><h2>Running</h2>
<table id="running" hidden><thead><tr><th>run</th><th>recipe</th><th>status</th><th>started</th>
<th>jobs</th></tr></thead><tbody></tbody></table>
<p id="running-none" class="muted">No run is going on.</p></section>

<section><h2>Start a session</h2>
<form id="start-form">
<label>Recipe <select id="recipe-choice">{options}<option value="">another file…</option>
</select></label>
<label>or a path <input id="recipe-path" type="text" size="50"
 placeholder="path/to/recipe.yaml"></label>
<label>Executor <select id="executor"><option value="local">local</option>
<option value="slurm">slurm</option></select></label>
<label>Tests matching (-k) <input id="keyword" type="text" size="20"></label>
<label>Extra pytest options <input id="pytest-args" type="text" size="30"
 placeholder="-x --maxfail 1"></label>
<div class="buttons"><button type="button" id="validate">Validate</button>
<button type="submit" id="start">Start</button></div>
</form>
<div id="check-result" role="status"></div></section>

<section><h2>Experiments dashboard</h2>{dashboard}</section>

<section><h2>Recent runs</h2>
<table id="recent"><thead><tr><th>run</th><th>recipe</th><th>status</th><th>started</th>
<th>report</th></tr></thead><tbody></tbody></table></section>
</main></body></html>
"""
    )


def _chart(field: str, title: str) -> str:
    return (
        f"<figure><figcaption>{escape(title)}</figcaption>"
        f'<div class="chart" id="chart-{field}" data-field="{field}" data-points="0"></div>'
        "</figure>"
    )


def live_page(*, token: str, run_id: str) -> str:
    charts = "".join(_chart(field, title) for field, title in COUNTER_CHARTS)
    headers = "".join(f"<th>{escape(title)}</th>" for _, title in COUNTER_CHARTS)
    return (
        _head(f"aifactory: {run_id}", token, "live.js")
        + f'<body data-run-id="{escape(run_id)}">\n'
        + _nav()
        + f"""<main>
<h1>Run <span id="run-id">{escape(run_id)}</span></h1>
<p>Status: <strong id="run-status">…</strong> <span id="run-recipe"></span></p>
<p id="run-ended" hidden></p>
<p><a id="report-link" hidden>Open its report</a></p>
<div class="buttons"><button type="button" id="stop-session">Stop session</button>
<button type="button" id="stop-jobs">Stop kept services</button></div>
<div id="action-result" role="status"></div>

<section><h2>Jobs</h2>
<table id="jobs"><thead><tr><th>job</th><th>role</th><th>id</th><th>state</th><th>health</th>
<th>nodes</th><th>endpoint</th><th>age</th></tr></thead><tbody></tbody></table></section>

<section><h2>Clients</h2>
<p class="muted">Counters from <span id="counters-source">…</span>
<span id="counters-note"></span></p>
<table id="counters"><thead><tr><th>process</th>{headers}</tr></thead><tbody></tbody></table>
<div class="charts">{charts}</div></section>

<section><h2>Servers</h2>
<p class="muted" id="series-note"></p>
<div class="charts" id="server-charts"></div></section>

<section><h2>Logs</h2>
<label>Log <select id="log-file"></select></label>
<pre id="log"></pre></section>
</main></body></html>
"""
    )


def error_page(message: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>aifactory</title>'
        '<link rel="stylesheet" href="/static/ui.css"></head><body>'
        + _nav()
        + f'<main><p class="error">{escape(message)}</p></main></body></html>\n'
    )
