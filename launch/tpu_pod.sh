#!/usr/bin/env bash
# A Cloud TPU VM slice (v4, v5e, v5p, v6e): installs lavin_jax on every worker, then runs the
# same training command on all of them. JAX finds the slice's hosts itself
# (lavin_jax.parallel.initialize_distributed); process 0 writes logs and samples, every host
# writes its shards of each checkpoint, so WORKDIR must be shared: a gs:// bucket.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   e.g. launch/tpu_pod.sh my-v5p-64 us-east5-a configs/l.py gs://my-bucket/runs/l
#
# Check first that the step fits: python -m lavin_jax.main --mode=compile --config=CONFIG
#   --workdir=/tmp/compile --topology=v5p:4x4x4  (needs jax[tpu] on this machine, no TPU).
# Run the script again to resume from the newest checkpoint; a preempted slice saves on SIGTERM.
# REPO and REF pick the code to install (default: this checkout's origin and commit).
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [lavin_jax.main flags...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=${REPO:-$(git remote get-url origin)}
ref=${REF:-$(git rev-parse HEAD)}
jax_version=$(sed -n 's/^jax==//p' "$(dirname "$0")/../requirements.txt")
ssh=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all)

"${ssh[@]}" --command="set -e
  if [ ! -d lavin_jax ]; then git clone $repo lavin_jax; fi
  cd lavin_jax && git fetch -q origin && git checkout -q $ref
  python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e . 'jax[tpu]==$jax_version'"

# Quote the trailing flags for the remote shell.
extra=$(printf ' %q' "$@")
"${ssh[@]}" --command="cd lavin_jax && .venv/bin/python -m lavin_jax.main --config=$config --workdir=$workdir$extra"
