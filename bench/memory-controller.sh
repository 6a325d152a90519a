#!/usr/bin/env bash
# Memory in controller mode (issue 5, target 4): see bench/memory-controller.py.
#   bench/memory-controller.sh [--ingresses 10000] [--concurrency 16] [--watch 60]
exec python3 "$(dirname "$0")/memory-controller.py" "$@"
