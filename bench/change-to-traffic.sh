#!/usr/bin/env bash
# Change to traffic (issue 5, target 2): see bench/change-to-traffic.py.
#   bench/change-to-traffic.sh [--ingresses 1000] [--changes 10] [--debounce-ms MS] [--annotated]
#   WICKET_ARGS="--dynamic-endpoints=false": more flags for wicket serve
exec python3 "$(dirname "$0")/change-to-traffic.py" "$@"
