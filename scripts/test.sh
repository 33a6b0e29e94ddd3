#!/usr/bin/env bash
# Set up and run the whole test suite. `.ci/run` calls exactly this.
# As root on Debian it also installs Chromium (report screenshots) and starts the project's local Slurm
# cluster (stopped again on exit if this script started it); under CI=true those tests must run, not skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
started_cluster=0
cleanup() {
  if [[ $started_cluster == 1 ]]; then orchestrator cluster down || true; fi
}
trap cleanup EXIT
if [[ $(id -u) == 0 && -f /etc/debian_version ]]; then
  if ! command -v chromium >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core) >/dev/null
  fi
  if ! orchestrator cluster status >/dev/null 2>&1; then
    orchestrator cluster up
    started_cluster=1
  fi
  export ORCH_REQUIRE_SLURM=1
else
  echo "test.sh: not root on Debian: Slurm and browser tests will be skipped (they say so)"
fi
ruff check orchestrator tests benchmarks
python -m pytest -q -rs --durations=30 "$@"
