"""Per-task times of a bench.yml run, from results_json's output.
Usage: bench_summary.py LABEL OUTPUT.json WALL_SECONDS"""

import json
import statistics
import sys

label, path, wall = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(path) as f:
    text = f.read()
out = json.loads(text[text.index('{'):])
durations = [r['_duration'] for p in out['plays'] for t in p['tasks'] for r in t['hosts'].values()
             if not r.get('failed') and not r.get('unreachable')]
if len(durations) != 20:
    sys.exit('%s: %d of 20 tasks succeeded' % (label, len(durations)))
durations.sort()
print('%-38s per task median %.2f s, p90 %.2f s, min %.2f s; whole playbook %.1f s'
      % (label, statistics.median(durations), durations[int(len(durations) * 0.9) - 1], durations[0], wall))
