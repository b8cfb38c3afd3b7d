# shellcheck shell=bash
# Helpers sourced by scripts/run and scripts/test; not meant to be run on its own.
#
#   find_python   print the path of a Python >= 3.12, or explain and exit 1
#   ensure_venv   create .venv at the repository root with that Python when it is missing or
#                 too old, and `pip install -e '.[test]'` when pyproject.toml changed since
#                 the last install

CHATPROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHATPROJECT_VENV="$CHATPROJECT_ROOT/.venv"

# True when "$1" runs and is Python 3.12 or newer.
_chatproject_python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

find_python() {
    local candidate name pyenv_root
    local -a candidates=() tried=()

    # An explicit choice is honoured or refused, never silently replaced by another Python.
    if [[ -n "${CHATPROJECT_PYTHON:-}" ]]; then
        if _chatproject_python_ok "$CHATPROJECT_PYTHON"; then
            "$CHATPROJECT_PYTHON" -c 'import sys; print(sys.executable)'
            return 0
        fi
        echo "CHATPROJECT_PYTHON=$CHATPROJECT_PYTHON is not a working Python 3.12 or newer;" \
            "point it at one (e.g. CHATPROJECT_PYTHON=/usr/bin/python3.12) or unset it." >&2
        exit 1
    fi

    for name in python3.14 python3.13 python3.12 python3; do
        if candidate="$(command -v "$name" 2>/dev/null)"; then
            candidates+=("$candidate")
        else
            tried+=("$name (not on PATH)")
        fi
    done
    # `~` rather than $HOME: bash falls back to the password database when HOME is unset.
    pyenv_root="$(pyenv root 2>/dev/null || echo ~/.pyenv)"
    local pyenv_found=0
    for candidate in "$pyenv_root"/versions/3.1[2-9]*/bin/python3; do
        [[ -e "$candidate" ]] || continue
        candidates+=("$candidate")
        pyenv_found=1
    done
    ((pyenv_found)) || tried+=("$pyenv_root/versions/3.1[2-9]*/bin/python3 (none installed)")

    for candidate in "${candidates[@]}"; do
        if _chatproject_python_ok "$candidate"; then
            # The real interpreter, not a pyenv shim that depends on the shell's pyenv state.
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
        tried+=("$candidate (too old or not runnable)")
    done

    {
        printf 'chatproject needs Python 3.12 or newer, none found; tried:\n'
        printf '  %s\n' "${tried[@]}"
        printf 'Install one (e.g. `pyenv install 3.12`) or set CHATPROJECT_PYTHON=/path/to/python3.12\n'
    } >&2
    exit 1
}

# sha256 of pyproject.toml, computed with the venv's own Python (no sha256sum/shasum needed).
_chatproject_pyproject_hash() {
    "$CHATPROJECT_VENV/bin/python" - "$CHATPROJECT_ROOT/pyproject.toml" <<'EOF'
import hashlib, sys
with open(sys.argv[1], "rb") as f:
    print(hashlib.sha256(f.read()).hexdigest())
EOF
}

ensure_venv() {
    local python stamp="$CHATPROJECT_VENV/.chatproject-pyproject.sha256" want have=""

    if [[ ! -x "$CHATPROJECT_VENV/bin/python" ]] ||
        ! _chatproject_python_ok "$CHATPROJECT_VENV/bin/python"; then
        python="$(find_python)" || exit 1
        echo "Creating .venv with $python ..." >&2
        rm -rf "$CHATPROJECT_VENV"
        if ! "$python" -m venv "$CHATPROJECT_VENV"; then
            echo "Could not create $CHATPROJECT_VENV with $python" \
                "(on Debian/Ubuntu: apt-get install python3-venv for that version)." >&2
            rm -rf "$CHATPROJECT_VENV"
            exit 1
        fi
    fi

    want="$(_chatproject_pyproject_hash)" || exit 1
    [[ -f "$stamp" ]] && have="$(<"$stamp")"
    if [[ "$want" != "$have" ]]; then
        echo "Installing chatproject and its dependencies into .venv ..." >&2
        if ! (cd "$CHATPROJECT_ROOT" &&
            "$CHATPROJECT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
                --no-input -e '.[test]'); then
            echo "pip install -e '.[test]' failed (see the errors above)." >&2
            exit 1
        fi
        echo "$want" >"$stamp"
    fi
}
