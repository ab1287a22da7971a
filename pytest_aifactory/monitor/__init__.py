"""Server-side view of a run: Prometheus (or direct scraping), node exporters, live client
counters, per-test series in `metrics.parquet`, and a Grafana dashboard for the run."""
