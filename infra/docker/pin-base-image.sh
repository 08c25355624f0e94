#!/usr/bin/env bash
# Pin the Dockerfile's base image to the digest its tag points at now (needs Docker with buildx
# and network access to Docker Hub).
#
#   infra/docker/pin-base-image.sh                     # re-resolve the tag already in the FROM line
#   infra/docker/pin-base-image.sh 2.61.0-py311-gpu    # bump: a new tag (bump ray in constraints.txt too)
#
# Without Docker: `skopeo inspect docker://rayproject/ray:TAG | jq -r .Digest` gives the same digest
# (the multi-architecture index); put it after the tag as `@sha256:...`.
set -euo pipefail
dockerfile="$(cd "$(dirname "$0")" && pwd)/Dockerfile"
current=$(sed -n 's|^FROM rayproject/ray:\([^@ ]*\).*|\1|p' "$dockerfile")
tag="${1:-$current}"
digest=$(docker buildx imagetools inspect "rayproject/ray:$tag" --format '{{.Manifest.Digest}}')
if [[ ! "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
  echo "error: could not resolve rayproject/ray:$tag to a digest (got '$digest')" >&2
  exit 1
fi
sed -i "s|^FROM rayproject/ray:[^ ]*|FROM rayproject/ray:$tag@$digest|" "$dockerfile"
echo "FROM rayproject/ray:$tag@$digest"
