"""Plot latency percentiles per variant from target/bench/results.json (matplotlib)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = json.load(open(sys.argv[1]))
quantiles = ["50", "75", "90", "95", "99", "99.9"]
fig, ax = plt.subplots(figsize=(8, 4.5))
for s in results["summary"]:
    ys = [s["latency_us"][q] / 1000.0 for q in quantiles]
    ax.plot(quantiles, ys, marker="o", label=f'({s["key"]}) {s["name"]}')
ax.set_xlabel("percentile")
ax.set_ylabel("latency (ms)")
ax.set_title(
    f'Envoy 1.40, 1 worker, wrk -c{results["connections"]}: latency by variant '
    f'(median of {results["rounds"]} rounds)\n{results["date"]}, {results["machine"]}',
    fontsize=9,
)
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
print(f"wrote {sys.argv[2]}")
