"""Rotating paired runs of one node's GETs (compiled generator) across variants: name=path[:extra args]."""
import json, os, subprocess, sys, tempfile, statistics
from kvwire.testing import NodeProcess, free_port

VARIANTS = {}
for spec in sys.argv[2:]:
    name, rest = spec.split("=", 1)
    path, _, extra = rest.partition(":")
    VARIANTS[name] = (path, extra.split() if extra else [])
ROUNDS = int(sys.argv[1])
KVWIRE = "/work/main/.venv/bin/kvwire"

def run(name):
    path, extra = VARIANTS[name]
    os.environ["PYTHONPATH"] = path
    with tempfile.TemporaryDirectory() as root:
        with NodeProcess("n1", data_dir=os.path.join(root, "n1"), host="127.0.0.1", port=free_port("127.0.0.1"),
                         extra_args=extra) as node:
            out = subprocess.run([KVWIRE, "bench", "--endpoints", node.address, "--mix", "get", "--connections", "50",
                                  "--duration", "5", "--warmup", "1", "--generator", "native", "--server-pid",
                                  str(node.pid), "-o", "json"], capture_output=True, text=True, timeout=120, check=True).stdout
    r = json.loads(out)
    return r["ops_per_s"], r["server_cpu_us_per_op"]

names = list(VARIANTS)
results = {n: [] for n in names}
for r in range(ROUNDS):
    order = names[r % len(names):] + names[:r % len(names)]
    if r % 2: order = order[::-1]
    row = {}
    for n in order:
        row[n] = run(n); results[n].append(row[n])
    print(r, {n: (round(v[0]), v[1]) for n, v in row.items()}, flush=True)
base = names[0]
for n in names:
    ops = statistics.median(v[0] for v in results[n]); cpu = statistics.median(v[1] for v in results[n])
    ratios = [a[0] / b[0] for a, b in zip(results[n], results[base])]
    cratios = [a[1] / b[1] for a, b in zip(results[n], results[base])]
    print(f"{n}: median {ops:.0f}/s {cpu:.1f} us; vs {base}: median ratio {statistics.median(ratios):.3f}, cpu {statistics.median(cratios):.3f}")
json.dump(results, open("/tmp/ab/get_results.json", "w"))
