# What the machine itself did during a benchmark: on a VM, time the hypervisor gave to other
# guests ("steal") slows every target at random, and a run with much of it is not comparable
# with other runs (nor are its rounds with each other).
#   s0=$(cpu_times); …; steal_pct "$s0" "$(cpu_times)"   # percent of the machine's CPU time stolen
cpu_times() { head -1 /proc/stat; }
steal_pct() {
  # /proc/stat "cpu" line: user nice system idle iowait irq softirq steal …
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x); split(b, y); total = 0
    for (i = 2; i <= n; i++) total += y[i] - x[i]
    printf "%.1f", (total > 0 ? 100 * (y[9] - x[9]) / total : 0)
  }'
}
