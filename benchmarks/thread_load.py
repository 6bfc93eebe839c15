"""Training step time under load: OpenMP wait policy and thread count, idle and beside a job.

Two torch threads on a 2-core machine collapse when anything else runs: an OpenMP worker that
spins while it waits for its partner (libgomp's default) burns the core the other job needs,
and each parallel region then waits for a descheduled thread. This script measures the plain
cpu-profile training step (the step of chapter 04) in fresh processes, one per setting, with
the machine idle and beside one competing single-thread job (at nice 10, and at the same
priority, as a user's other work would be), and prints each setting's median step time and
its ratio to the default, side by side from one run. Settings and loads take turns
(``--rounds``) so drift hits them alike.

    python benchmarks/thread_load.py [--steps 12] [--rounds 2] [--batch 32]

Each long job (a training run, a large sample set) chooses its thread count from the load this
benchmark measures the effect of (:func:`interpddpm.threads.choose_threads`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS: dict[str, dict[str, str]] = {
    "default (2 threads, OpenMP default wait)": {},
    "OMP_WAIT_POLICY=PASSIVE (2 threads)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}

#: One step of plain training, timed in the child (after two warm-up steps).
CHILD = r"""
import json, statistics, sys, time
import torch
from interpddpm.models import make_unet
from interpddpm.toyfaces import ToyFaces
from interpddpm.training import TrainConfig, run_noise_scheduler, native_bf16, training_losses
steps, batch = int(sys.argv[1]), int(sys.argv[2])
model = make_unet("cpu", sample_size=32)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
images, labels = ToyFaces(32, 10_000).batch(range(batch))
config, sched = TrainConfig(), run_noise_scheduler(TrainConfig())
bf16 = native_bf16("cpu")
times = []
for i in range(steps + 2):
    gen = torch.Generator().manual_seed(i)
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = training_losses(model, sched, images, labels, config, 0, gen)
    out.total.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= 2:
        times.append(time.perf_counter() - start)
print(json.dumps({"median": statistics.median(times), "threads": torch.get_num_threads(),
                  "bf16": bf16}))
"""

#: The competing job: one busy single thread at lower priority.
BUSY = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass\n"


def run_child(env_extra: dict[str, str], steps: int, batch: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(steps), str(batch)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    loads = {"idle": None, "beside 1 busy thread, nice 10": 10, "beside 1 busy thread, nice 0": 0}
    medians: dict[tuple[str, str], list[float]] = {(s, ld): [] for s in SETTINGS for ld in loads}
    info = {}
    for _ in range(args.rounds):
        for load in loads:
            busy = None
            if loads[load] is not None:
                niceness = str(loads[load])
                busy = subprocess.Popen(["nice", "-n", niceness, sys.executable, "-c", BUSY])
                time.sleep(1.0)
            try:
                for name, env in SETTINGS.items():
                    info = run_child(env, args.steps, args.batch)
                    medians[name, load].append(info["median"])
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    print(
        f"{os.cpu_count()} CPUs, plain cpu-profile step (batch {args.batch}, 32x32, "
        f"bf16 autocast: {info.get('bf16')}), median of {args.steps} steps per process, "
        f"best of {args.rounds} rounds"
    )
    default = next(iter(SETTINGS))
    header = f"{'setting':42s}" + "".join(f"{ld:>36s}" for ld in loads)
    print(header)
    for name in SETTINGS:
        cells = []
        for load in loads:
            t = min(medians[name, load])
            ratio = t / min(medians[default, load])
            cells.append(f"{t:8.3f} s/step ({ratio:4.2f}x default)")
        print(f"{name:42s}" + "".join(f"{c:>36s}" for c in cells))


if __name__ == "__main__":
    main()
