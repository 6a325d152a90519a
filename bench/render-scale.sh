#!/usr/bin/env bash
# Render at scale (issue 5, target 1): for each size, `wicket render` (release)
# over the generated manifests -- wall time and peak RSS (/usr/bin/time -v) --
# and `nginx -t` on the config it produced, in a state folder with the
# certificates it names and tmp/. Runs alternate render / nginx -t, RUNS of
# each. Prints min/median/max, the ratio render / nginx -t (target <= 0.25),
# peak RSS (target <= 150 MiB at 10k) and the cost per Ingress at each size
# (linear growth: the same cost per Ingress).
#
#   bench/render-scale.sh [SIZE...]        default: 1000 10000 50000
#   RUNS=5 (default) WICKET_NO_BUILD=1 (use $WICKET, default
#   target/release/wicket, as is) TEMPLATES=DIR (passed as --templates DIR)
#   WICKET_ARGS="--dynamic-endpoints=false" (more flags for wicket render)
#   ANNOTATED=1: every Ingress carries five typical annotations (see
#   gen-manifests.py --annotated)
#
# Output folder: target/bench-out/render-scale/N[-annotated]/{nginx.conf,certs,tmp}.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(1000 10000 50000)
RUNS=${RUNS:-5}
extra=()
[[ -z ${TEMPLATES:-} ]] || extra=(--templates "$TEMPLATES")
# WICKET_ARGS: more flags for `wicket render`, e.g. --dynamic-endpoints=false
# shellcheck disable=SC2206
[[ -z ${WICKET_ARGS:-} ]] || extra+=($WICKET_ARGS)
ensure_wicket
# user + sys seconds from a `/usr/bin/time -v` report.
cpu_seconds() { awk -F': ' '/User time/ {u = $2} /System time/ {s = $2} END {print u + s}' "$1"; }
out_root=$REPO/target/bench-out/render-scale
summary=()

for n in "${sizes[@]}"; do
  dir=$(manifests "$n")
  state=$out_root/$n
  [[ ${ANNOTATED:-} != 1 ]] || state=$out_root/$n-annotated
  rm -rf "$state"; mkdir -p "$state/tmp" "$state/control"
  self_signed "$state"
  : >"$state/render.times"; : >"$state/render.rss"; : >"$state/nginx.times"; : >"$state/nginx.rss"
  : >"$state/render.cpu"; : >"$state/nginx.cpu"
  for ((r = 1; r <= RUNS; r++)); do
    t0=$(now_ns)
    /usr/bin/time -v -o "$state/time.txt" "$WICKET" render --manifests "$dir" "${extra[@]}" \
      >"$state/nginx.conf" 2>"$state/render.stderr" || die "wicket render failed (see $state/render.stderr)"
    t1=$(now_ns)
    echo "scale=6; ($t1 - $t0) / 1000000000" | bc >>"$state/render.times"
    awk -F': ' '/Maximum resident set size/ {print $2 / 1024}' "$state/time.txt" >>"$state/render.rss"
    cpu_seconds "$state/time.txt" >>"$state/render.cpu"
    t0=$(now_ns)
    (cd "$state" && /usr/bin/time -v -o "$state/time.txt" "$NGINX" -t -q -p "$state" -c "$state/nginx.conf" 2>"$state/nginx.stderr") \
      || die "nginx -t failed: $(cat "$state/nginx.stderr")"
    t1=$(now_ns)
    echo "scale=6; ($t1 - $t0) / 1000000000" | bc >>"$state/nginx.times"
    awk -F': ' '/Maximum resident set size/ {print $2 / 1024}' "$state/time.txt" >>"$state/nginx.rss"
    cpu_seconds "$state/time.txt" >>"$state/nginx.cpu"
  done
  [[ -s $state/render.stderr ]] && log "render printed problems for $n: $(head -3 "$state/render.stderr")"
  read -r rmin rmed rmax < <(stats <"$state/render.times")
  read -r nmin nmed nmax < <(stats <"$state/nginx.times")
  read -r smin smed smax < <(stats <"$state/render.rss")
  read -r _ nrss _ < <(stats <"$state/nginx.rss")
  read -r rcmin rcmed rcmax < <(stats <"$state/render.cpu")
  read -r ncmin ncmed ncmax < <(stats <"$state/nginx.cpu")
  cratio=$(echo "scale=3; $rcmed / $ncmed" | bc)
  ratio=$(echo "scale=3; $rmed / $nmed" | bc)
  per=$(echo "scale=2; $rmed * 1000000 / $n" | bc)
  bytes=$(stat -c %s "$state/nginx.conf")
  printf '%6d Ingresses  render s min/med/max %s/%s/%s  peak RSS MiB %s/%s/%s  nginx -t s %s/%s/%s (RSS %s MiB)  ratio %s  %s us/Ingress  conf %d bytes\n' \
    "$n" "$rmin" "$rmed" "$rmax" "$smin" "$smed" "$smax" "$nmin" "$nmed" "$nmax" "$nrss" "$ratio" "$per" "$bytes"
  printf '%6d Ingresses  CPU (user+sys) s: render %s/%s/%s  nginx -t %s/%s/%s  ratio %s\n' \
    "$n" "$rcmin" "$rcmed" "$rcmax" "$ncmin" "$ncmed" "$ncmax" "$cratio"
  summary+=("$n $rmed $nmed $smax $ratio $per")
done

echo
echo "summary (wall-time medians of $RUNS runs; targets: render <= 0.25 x nginx -t, peak RSS <= 150 MiB at 10k, linear)"
first_per=
for line in "${summary[@]}"; do
  read -r n rmed nmed rss ratio per <<<"$line"
  [[ -n $first_per ]] || first_per=$per
  growth=$(echo "scale=2; $per / $first_per" | bc)
  verdict_ratio=$(echo "$ratio <= 0.25" | bc)
  verdict_rss=
  if [[ $n == 10000 ]]; then
    verdict_rss=$(echo "$rss <= 150" | bc); verdict_rss=" rss-target:$([[ $verdict_rss == 1 ]] && echo PASS || echo FAIL)"
  fi
  printf '  %6d: render %ss  nginx -t %ss  ratio %s (%s)  peak RSS %s MiB%s  per-Ingress %sus (x%s of the smallest size)\n' \
    "$n" "$rmed" "$nmed" "$ratio" "$([[ $verdict_ratio == 1 ]] && echo PASS || echo FAIL)" "$rss" "$verdict_rss" "$per" "$growth"
done
echo "  linear growth: per-Ingress cost within x1.5 of the smallest size's"
