"""Answers one JSON request per line with HTCondor's library (see oracle.py). Runs as a separate process
so that a crash inside HTCondor's library costs one request, not the test run."""
import json
import sys

import oracle

for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.write(json.dumps(oracle.answer(req)) + "\n")
    sys.stdout.flush()
