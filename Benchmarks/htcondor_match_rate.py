"""HTCondor's own ClassAd library on the same workload, as a side-by-side baseline for `slurm-vm bench match`.

    slurm-vm bench match --generate 10000 1000 --seed 1 --dump /tmp/w
    python3 Benchmarks/htcondor_match_rate.py /tmp/w [--jobs 100]

Evaluates, for a sample of jobs against every image, both Requirements (symmetricMatch) and both Ranks,
and prints pair evaluations per second per core (CPU time of this process, one thread).
"""
import argparse
import os
import time

os.environ.setdefault("CONDOR_CONFIG", "ONLY_ENV")
import htcondor2  # noqa: E402,F401
import classad2  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--jobs", type=int, default=100)
a = ap.parse_args()
jobs = [classad2.ClassAd(l) for l in open(os.path.join(a.dir, "jobs.ads")) if l.strip()]
images = [classad2.ClassAd(l) for l in open(os.path.join(a.dir, "images.ads")) if l.strip()]
step = max(1, len(jobs) // a.jobs)
sample = jobs[::step][: a.jobs]
rank = classad2.ExprTree("Rank")
t0 = time.process_time()
matches = 0
for job in sample:
    for image in images:
        if job.symmetricMatch(image):
            matches += 1
            rank.eval(job, image)
            rank.eval(image, job)
t = time.process_time() - t0
pairs = len(sample) * len(images)
print(f"HTCondor classad2: {len(sample)} jobs x {len(images)} images = {pairs} pairs in {t:.3f} s CPU, "
      f"{pairs / t / 1e6:.3f} million pair evaluations/s/core ({matches} matches; includes Python call overhead)")
