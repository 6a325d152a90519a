#!/usr/bin/env bash
# Memory (issue 5, target 4), serve mode: resident memory of the wicket
# process itself (nginx not counted) with N Ingresses loaded by
# `wicket serve` (release): VmRSS and VmHWM from /proc/PID/status once
# ready, and again after one change (a new Ingress file, one rebuild and
# reload). RUNS fresh processes.
#
#   bench/memory.sh [N]      default N=10000; RUNS=3; TEMPLATES=DIR (--templates)
#
# "ready" is /readyz answering 200 (nginx serves the config); when it does
# not within 120 s the figures are still taken and the run says NOT READY.
#
# Target: <= 150 MiB resident at 10,000 Ingresses.
# Controller mode: bench/memory-controller.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

n=${1:-10000}
RUNS=${RUNS:-3}
extra=()
[[ -z ${TEMPLATES:-} ]] || extra=(--templates "$TEMPLATES")
ensure_wicket
src=$(manifests "$n")
out=$REPO/target/bench-out/memory
pid=
cleanup() { stop_wicket "$pid" "$out/wicket.log"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$2/status"; }
: >"$out.rss1" 2>/dev/null || { mkdir -p "$(dirname "$out")"; : >"$out.rss1"; }
: >"$out.hwm1"; : >"$out.rss2"; : >"$out.hwm2"; : >"$out.ready"
for ((r = 1; r <= RUNS; r++)); do
  rm -rf "$out"; mkdir -p "$out"
  cp -r "$src" "$out/manifests"
  read -r http https admin < <(free_ports 3)
  t0=$(now_ns)
  NO_COLOR=1 "$WICKET" serve --manifests "$out/manifests" --http-port "$http" --https-port "$https" \
    --admin-port "$admin" "${extra[@]}" >/dev/null 2>"$out/wicket.log" &
  pid=$!
  state="NOT READY"
  for _ in $(seq 2400); do
    curl -sf -o /dev/null "http://127.0.0.1:$admin/readyz" && { state=ready; break; }
    kill -0 "$pid" 2>/dev/null || die "wicket exited: $(tail -5 "$out/wicket.log")"
    sleep 0.05
  done
  ready=$(echo "scale=2; ($(now_ns) - $t0) / 1000000000" | bc)
  sleep 1
  rss1=$(kib VmRSS "$pid"); hwm1=$(kib VmHWM "$pid")
  # The end of an apply: a reload, or a refused or timed-out one.
  applies() { grep -c -E 'reloaded nginx|config not applied' "$out/wicket.log" || true; }
  reloads=$(applies)
  python3 "$BENCH_DIR/gen-manifests.py" --count 1 --start "$n" --out "$out/manifests"
  for ((i = 0; ; i++)); do
    [[ $(applies) -gt $reloads ]] && break
    ((i < 2400)) || die "no reload within 120 s after the change"
    sleep 0.05
  done
  sleep 1
  rss2=$(kib VmRSS "$pid"); hwm2=$(kib VmHWM "$pid")
  grep -E 'reloaded nginx|config not applied' "$out/wicket.log" | tail -1 | sed -E 's/^/  change: /' | cut -c1-240
  printf 'run %d: %s after %ss; after start VmRSS %d MiB VmHWM %d MiB; after one change VmRSS %d MiB VmHWM %d MiB\n' \
    "$r" "$state" "$ready" $((rss1 / 1024)) $((hwm1 / 1024)) $((rss2 / 1024)) $((hwm2 / 1024))
  echo "$ready" >>"$out.ready"
  echo "scale=1; $rss1 / 1024" | bc >>"$out.rss1"; echo "scale=1; $hwm1 / 1024" | bc >>"$out.hwm1"
  echo "scale=1; $rss2 / 1024" | bc >>"$out.rss2"; echo "scale=1; $hwm2 / 1024" | bc >>"$out.hwm2"
  stop_wicket "$pid" "$out/wicket.log"; pid=
done

echo
echo "wicket serve with $n Ingresses${TEMPLATES:+ (templates $TEMPLATES)}, $RUNS runs (MiB, min/median/max):"
for f in ready rss1 hwm1 rss2 hwm2; do
  case $f in
    ready) what="time to ready (s)";; rss1) what="VmRSS after start";; hwm1) what="VmHWM after start";;
    rss2) what="VmRSS after a change";; hwm2) what="VmHWM after a change";;
  esac
  printf '  %-22s %s\n' "$what" "$(stats <"$out.$f" | tr ' ' /)"
done
read -r _ _ worst < <(stats <"$out.hwm2")
printf '  target <= 150 MiB resident (worst VmHWM %s MiB): %s\n' "$worst" \
  "$([[ $(echo "$worst <= 150" | bc) == 1 ]] && echo PASS || echo FAIL)"
