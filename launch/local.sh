#!/usr/bin/env bash
# N processes on this machine forming one JAX job over loopback, M CPU devices each: the
# multi-host code path (jax.distributed, gloo collectives, per-process data, one checkpoint
# written by all) without a cluster.
#
#   launch/local.sh N M --config=configs/tiny.py --workdir=runs/local [--config.FIELD=VALUE ...]
#
# Prints each process's pid; a SIGTERM or Ctrl-C here reaches every process, which save one
# checkpoint at a step they agree on and exit 0; run the same command again to resume.
# PYTHON picks the interpreter (default: python), PORT the coordinator's port (default: a free one).
set -euo pipefail
if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ || ! $2 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 PROCESSES DEVICES_PER_PROCESS [lavin_jax.main flags...]" >&2
  exit 2
fi
processes=$1 devices=$2
shift 2
python=${PYTHON:-python}
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
for ((i = 0; i < processes; i++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=$devices JAX_COORDINATOR_ADDRESS=127.0.0.1:$port \
    JAX_NUM_PROCESSES=$processes JAX_PROCESS_ID=$i "$python" -m lavin_jax.main "$@" &
  pids+=($!)
  echo "process $i: pid $!"
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT

status=0
for pid in "${pids[@]}"; do
  while true; do
    code=0
    wait "$pid" || code=$?
    # A trapped signal interrupts `wait` while the process still runs: wait again.
    if kill -0 "$pid" 2>/dev/null; then continue; fi
    if ((code != 0)); then status=$code; fi
    break
  done
done
exit $status
