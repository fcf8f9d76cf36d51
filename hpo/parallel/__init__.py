"""Many trials at once: the exact-total trial loop any number of workers share, local worker processes, which
GPU each worker gets, and how Ctrl-C and SIGTERM stop them.

    workers.py     the trial loop: exact totals, claiming, heartbeats, recovering dead workers' trials
    launcher.py    --workers W: W spawned processes, bounded by the machine, ended with their parent
    devices.py     the GPU and memory share of each worker, decided before JAX starts in it
    interrupts.py  SIGINT and SIGTERM: the running trial is re-queued, the process exits 130 or 143
"""
