# Sourced by .ci/run: the sweep and tracking tests again, against the lowest versions of optuna,
# wandb and albumentations that pyproject.toml allows, in a second environment (.venv-lowest).
# A failing test fails the CI run (set -e in .ci/run). Runs with the default command (`make test`)
# or when SEGSWEEP_CI_LOWEST=1; SEGSWEEP_CI_LOWEST=0 skips it.
LOWEST_VENV=.venv-lowest
LOWEST_PINS=(optuna==4.9.0 wandb==0.19.10 albumentations==2.0.0)  # the floors in pyproject.toml
LOWEST_TESTS=(tests/test_sweeps.py tests/test_tracking.py tests/test_tracking_run.py
              tests/test_network_guard.py tests/test_tensorboard_hparams.py tests/test_wandb_resume.py)

lowest_versions_venv() {
    local stamp="$LOWEST_VENV/.installed" pins
    pins="$(printf '%s\n' "${LOWEST_PINS[@]}")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ] && [ "$stamp" -nt pyproject.toml ]; then
        return 0
    fi
    test -x "$LOWEST_VENV/bin/python" || python3 -m venv "$LOWEST_VENV"
    printf '%s\n' "${LOWEST_PINS[@]}" >"$LOWEST_VENV/constraints.txt"
    # As `make venv` does (torch from the wheels on disk), with the floors as constraints; pip's
    # output goes to a log, shown if the install fails.
    echo "ci: installing the lowest supported versions into $LOWEST_VENV" >&2
    if ! "$LOWEST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            -c "$LOWEST_VENV/constraints.txt" -e '.[dev]' >"$LOWEST_VENV/pip.log" 2>&1; then
        cat "$LOWEST_VENV/pip.log" >&2
        return 1
    fi
    printf '%s\n' "$pins" >"$stamp"
}

lowest_versions_tests() {
    local started=$SECONDS
    lowest_versions_venv
    "$LOWEST_VENV/bin/python" - "${LOWEST_PINS[@]}" <<'PY'
import sys
from importlib.metadata import version
wrong = [p for p in sys.argv[1:] if version(p.split("==")[0]) != p.split("==")[1]]
sys.exit(f"ci: the lowest-versions environment does not hold {wrong}" if wrong else 0)
PY
    echo "ci: lowest versions (${LOWEST_PINS[*]}): ${LOWEST_TESTS[*]}" >&2
    "$LOWEST_VENV/bin/python" -m pytest -q -p no:cacheprovider "${LOWEST_TESTS[@]}"
    echo "ci: lowest-versions step passed in $((SECONDS - started)) s" >&2
}

case "${SEGSWEEP_CI_LOWEST:-}" in
    1) lowest_versions_tests ;;
    0) ;;
    *) if [ "$*" = "make test" ]; then lowest_versions_tests; fi ;;
esac
