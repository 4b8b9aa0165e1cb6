#!/bin/sh
# Merge the pipeline's cluster-wide settings into the objects Knative installed, key by key.
#   knative/cluster/patch.sh --dry-run=server    # show what would change
#   knative/cluster/patch.sh                     # patch
# Each file patches/<namespace>/<resource>.<name>.yaml is a JSON merge patch, applied with
#   kubectl -n <namespace> patch <resource> <name> --type merge --patch-file <file>
# so keys the file does not name stay as they are. Never `kubectl apply` these objects: a
# client-side apply of a whole ConfigMap replaces every key Knative or an admin set.
# With the Knative Operator, put the same keys into the KnativeServing / KnativeEventing CR
# instead (docs/deploy.md): the operator reverts direct changes to the objects it owns.
# Extra arguments go to every kubectl call; KUBECTL names the kubectl binary.
set -eu
kubectl=${KUBECTL:-kubectl}
patches=$(dirname "$0")/patches
for file in "$patches"/*/*.yaml; do
  namespace=$(basename "$(dirname "$file")")
  object=$(basename "$file" .yaml)
  "$kubectl" -n "$namespace" patch "${object%%.*}" "${object#*.}" \
    --type merge --patch-file "$file" "$@"
done
