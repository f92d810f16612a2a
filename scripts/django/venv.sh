# Sourced by make-fixtures and migrate-url. Bash, set -euo pipefail.

# ensure_venv DIR PYTHON REQUIREMENTS
# Create DIR with `PYTHON -m venv` and install REQUIREMENTS, unless DIR already
# holds exactly that (same Python version, same requirements file): then it
# returns at once. A mismatch rebuilds the venv from scratch (--clear).
ensure_venv() {
    local dir=$1 python=$2 req=$3 want have=""
    want="$("$python" -c 'import sys; print(sys.version.split()[0])') $(sha256sum <"$req" | cut -d' ' -f1)"
    if [[ -x $dir/bin/python && -f $dir/.tether-stamp ]]; then
        have=$(<"$dir/.tether-stamp")
    fi
    if [[ $have == "$want" ]]; then
        return 0
    fi
    echo "make venv: $dir (Python ${want%% *}, $(basename "$req"))" >&2
    "$python" -m venv --clear "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input -r "$req"
    printf '%s\n' "$want" >"$dir/.tether-stamp"
}

# python_at_least PYTHON MAJOR MINOR -> status
python_at_least() {
    "$1" -c "import sys; sys.exit(0 if sys.version_info[:2] >= ($2, $3) else 1)" 2>/dev/null
}

# newest_python MAJOR MINOR: print the newest Python >= MAJOR.MINOR installed
# under ~/.pyenv/versions or as python3.N on PATH (outside pyenv's shims), or
# nothing. Versions are read from the names, so no interpreter is started.
newest_python() {
    local best="" best_v=0 c name v
    local candidates=("$HOME"/.pyenv/versions/[0-9]*/bin/python3)
    for name in $(compgen -c python3. | grep -E '^python3\.[0-9]+$' | sort -u); do
        c=$(type -P "$name") || continue
        [[ $c == */.pyenv/shims/* ]] || candidates+=("$c")
    done
    for c in "${candidates[@]}"; do
        [[ -x $c ]] || continue
        if [[ $c == */.pyenv/versions/* ]]; then
            name=${c#*/.pyenv/versions/}
            name=${name%%/*}
        else
            name=${c##*/python}
        fi
        [[ $name =~ ^([0-9]+)\.([0-9]+) ]] || continue
        v=$((BASH_REMATCH[1] * 1000 + BASH_REMATCH[2]))
        if ((v >= $1 * 1000 + $2 && v > best_v)); then
            best=$c best_v=$v
        fi
    done
    [[ -n $best ]] && printf '%s\n' "$best"
}
