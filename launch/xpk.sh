#!/usr/bin/env bash
# A TPU slice on GKE through xpk (https://github.com/AI-Hypercomputer/xpk): xpk builds an image
# from this checkout (--script-dir) on a Python base image and runs the same training command
# on every host of the slice as a JobSet. JAX finds the slice's hosts itself; WORKDIR must be a
# gs:// bucket the cluster's service account can write.
#
#   launch/xpk.sh CLUSTER TPU_TYPE CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   e.g. launch/xpk.sh my-cluster v5p-64 configs/l.py gs://my-bucket/runs/l
#
# Submitting the same command again (a new workload name is drawn) resumes from the newest
# checkpoint in WORKDIR. Check the step fits first: --mode=compile --topology=v5p:4x4x4.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 CLUSTER TPU_TYPE CONFIG WORKDIR [lavin_jax.main flags...]" >&2
  exit 2
fi
cluster=$1 tpu_type=$2 config=$3 workdir=$4
shift 4
root=$(cd "$(dirname "$0")/.." && pwd)
jax_version=$(sed -n 's/^jax==//p' "$root/requirements.txt")
extra=$(printf ' %q' "$@")
xpk workload create \
  --cluster="$cluster" \
  --workload="lavin-$(date +%m%d-%H%M%S)" \
  --tpu-type="$tpu_type" \
  --num-slices=1 \
  --base-docker-image=python:3.11-slim \
  --script-dir="$root" \
  --command="pip install -q -r requirements.txt -e . 'jax[tpu]==$jax_version' && python -m lavin_jax.main --config=$config --workdir=$workdir$extra"
