# Sourced by .ci/run: what tests/test_dashboard.py needs, optuna-dashboard (the `dashboard`
# extra) in .venv and a headless browser (Debian's `chromium`, installed when missing, as
# .ci/run does PostgreSQL). No service to stop: each test starts and stops its own.
if ! .venv/bin/python -c 'import optuna_dashboard' 2>/dev/null; then
    echo "ci: installing the dashboard extra (optuna-dashboard)" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dashboard]'
fi
if ! command -v chromium >/dev/null 2>&1; then
    apt_install Chromium ", or put a chromium on PATH" chromium
fi
export SEGSWEEP_TEST_CHROMIUM="$(command -v chromium)"
echo "ci: $("$SEGSWEEP_TEST_CHROMIUM" --version 2>/dev/null | head -n 1) at $SEGSWEEP_TEST_CHROMIUM" >&2
