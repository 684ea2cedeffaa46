#!/usr/bin/env bash
# Run every cellpix Galaxy tool test and the workflow test in a real Galaxy (26.1.1 from PyPI), offline.
#
#   bash galaxy_tools/run-galaxy-tests.sh            # uses .venv for cellpix, caches Galaxy in .cache/
#
# Galaxy resolves the tools' `cellpix` package requirement through a galaxy_packages env.sh that puts the
# project's venv first on PATH, so jobs run the cellpix under test. Prints "N passed, N failed" and stops
# the server on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CELLPIX_GALAXY_CACHE:-$ROOT/.cache/galaxy}
GXV=${CELLPIX_GALAXY_VENV:-$ROOT/.cache/galaxy-venv}
PROJECT_VENV=${CELLPIX_VENV:-$ROOT/.venv}
PORT=${CELLPIX_GALAXY_PORT:-8089}
URL="http://127.0.0.1:$PORT"
KEY=cellpix-admin-bootstrap-key
TOOLS="$ROOT/galaxy_tools/cellpix"
DATA_MANAGER="$ROOT/galaxy_tools/data_managers/data_manager_cellpix_models"
VERSION=$("$PROJECT_VENV/bin/cellpix" --version | sed 's/.* version //')

if [ ! -x "$GXV/bin/galaxy-web" ]; then
    python3 -m venv "$GXV"
    "$GXV/bin/pip" install -q "galaxy==26.1.1" planemo
fi

rm -rf "$CACHE/data" && mkdir -p "$CACHE/data/tool-data" "$CACHE/deps/cellpix/$VERSION"
printf 'export PATH="%s/bin:$PATH"\n' "$PROJECT_VENV" > "$CACHE/deps/cellpix/$VERSION/env.sh"

{
    echo '<toolbox><section id="cellpix" name="cellpix">'
    for tool in "$TOOLS"/cellpix_*.xml; do echo "  <tool file=\"$tool\"/>"; done
    echo '</section></toolbox>'
} > "$CACHE/tool_conf.xml"

# The cellpix_models table starts empty; the data manager's test fills it, then the annotate tool's
# installed-model test reads it.
: > "$CACHE/data/tool-data/cellpix_models.loc"
sed "s#tool-data/cellpix_models.loc#$CACHE/data/tool-data/cellpix_models.loc#" \
    "$DATA_MANAGER/tool_data_table_conf.xml.sample" > "$CACHE/tool_data_table_conf.xml"

cat > "$CACHE/galaxy.yml" <<YAML
galaxy:
  data_dir: $CACHE/data
  database_connection: sqlite:///$CACHE/data/universe.sqlite?isolation_level=IMMEDIATE
  database_auto_migrate: true
  tool_config_file: $CACHE/tool_conf.xml
  tool_dependency_dir: $CACHE/deps
  admin_users: admin@cellpix.test
  bootstrap_admin_api_key: $KEY
  id_secret: cellpix-galaxy-test-secret
  conda_auto_init: false
  conda_auto_install: false
  enable_mulled_containers: false
  involucro_auto_init: false
  enable_celery_tasks: false
  watch_tools: false
  galaxy_infrastructure_url: $URL
  tool_data_table_config_path: $CACHE/tool_data_table_conf.xml
  data_manager_config_file: $DATA_MANAGER/data_manager_conf.xml
  galaxy_data_manager_data_path: $CACHE/data/tool-data
  tool_data_path: $CACHE/data/tool-data
YAML

# shellcheck disable=SC1091
. "$GXV/bin/activate"
galaxy-web --config "$CACHE/galaxy.yml" --bind "127.0.0.1:$PORT" > "$CACHE/galaxy.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT

for _ in $(seq 1 180); do
    curl -sf "$URL/api/version" > /dev/null && break
    kill -0 $SERVER 2>/dev/null || { tail -50 "$CACHE/galaxy.log"; exit 1; }
    sleep 2
done
curl -sf "$URL/api/version" > /dev/null || { echo "Galaxy did not start"; tail -50 "$CACHE/galaxy.log"; exit 1; }

USER_ID=$(curl -sf -H "x-api-key: $KEY" -H 'Content-Type: application/json' -X POST "$URL/api/users" \
    -d '{"username": "cellpix", "email": "admin@cellpix.test", "password": "cellpix-test-pw"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
USER_KEY=$(curl -sf -H "x-api-key: $KEY" -X POST "$URL/api/users/$USER_ID/api_key" | tr -d '"')

passed=0; failed=0
# galaxy-tool-test skips, and counts as no failure, every test that reads a data table (the installed-model tests)
# unless given --with-reference-data: a tool passes only when each of its tests ran and succeeded.
all_ran() {
    python3 -c 'import json, sys
statuses = [t["data"]["status"] for t in json.load(open(sys.argv[1]))["tests"]]
print(" ".join(statuses)); sys.exit(not statuses or any(s != "success" for s in statuses))' "$1"
}
# The data manager first: it installs pbmc-zheng2017 (and a bundle from the history) into cellpix_models.
id=cellpix_models_fetcher
if galaxy-tool-test -u "$URL" -k "$USER_KEY" -a "$KEY" -t "$id" --test-data "$TOOLS/test-data" -j "$CACHE/$id.json" \
    > "$CACHE/$id.log" 2>&1 && all_ran "$CACHE/$id.json" >> "$CACHE/$id.log" && grep -q "pbmc-zheng2017" "$CACHE/data/tool-data/cellpix_models.loc"; then
    echo "PASS $id"; passed=$((passed + 1))
else
    echo "FAIL $id"; tail -60 "$CACHE/$id.log" | LC_ALL=C tr -cd "[:print:]\n" | cut -c1-400
    cat "$CACHE/data/tool-data/cellpix_models.loc"; failed=$((failed + 1))
fi

for tool in "$TOOLS"/cellpix_*.xml; do
    id=$(basename "$tool" .xml)
    if galaxy-tool-test -u "$URL" -k "$USER_KEY" -a "$KEY" -t "$id" --with-reference-data -j "$CACHE/$id.json" \
        > "$CACHE/$id.log" 2>&1 && all_ran "$CACHE/$id.json" >> "$CACHE/$id.log"; then
        echo "PASS $id"; passed=$((passed + 1))
    else
        echo "FAIL $id"; tail -60 "$CACHE/$id.log" | LC_ALL=C tr -cd "[:print:]\n" | cut -c1-400; failed=$((failed + 1))
    fi
done

for wf in "$ROOT"/galaxy_tools/workflows/*.gxwf.yml; do
    [ -e "$wf" ] || continue
    if planemo test --engine external_galaxy --galaxy_url "$URL" --galaxy_admin_key "$KEY" \
        --galaxy_user_key "$USER_KEY" --test_output "$CACHE/workflow.html" \
        --test_output_json "$CACHE/workflow.json" "$wf" > "$CACHE/workflow.log" 2>&1; then
        echo "PASS $(basename "$wf")"; passed=$((passed + 1))
    else
        echo "FAIL $(basename "$wf")"; tail -60 "$CACHE/workflow.log" | LC_ALL=C tr -cd "[:print:]\n" | cut -c1-400; failed=$((failed + 1))
    fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
