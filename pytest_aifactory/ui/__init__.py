"""`aifactory ui`: a local web interface over `pytest_aifactory.api` that starts benchmark
sessions, follows them live (counters, server series, logs) and serves their reports."""
