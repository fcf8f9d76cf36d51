"""Many workers on one study: the exact total, crash recovery, and local worker processes.

Any number of processes, on any number of machines, may run the same study through one storage. Each runs
``run_trials``; together they finish exactly ``total`` trials in a finished state (complete or pruned).

**The exact-total rule.** Optuna numbers trials in the order they are created, in the storage. A new trial
looks at the trials numbered below it that have not failed (complete, pruned, running or waiting). If they
already reach the total, the new trial is *surplus*: it ends at once, before sampling or training, as FAIL
with the user attribute ``surplus`` (the reason), so it neither counts nor is retried. Otherwise it runs.
A trial only ever leaves the "not failed" set (running -> fail), never joins it later, so the count a trial
saw can only shrink; hence the last trial that runs and does not fail saw every other one below it, and at
most ``total`` trials finish. MaxTrialsCallback alone checks after a trial and overshoots when workers race.

**Stopping.** A worker stops when the study has ``total`` finished trials. When the remaining slots are held
by running trials of other workers it waits for them (polling) rather than leaving, so that if one of them
dies, its retry is picked up and the total is still reached. It leaves early only when it cannot learn
whether those trials are alive (journal storage, trials of another machine): their own machine recovers them.

**Interrupts.** SIGINT or SIGTERM fails every trial the worker holds (asked, not yet told) as interrupted and
re-queues it with the same parameters, wherever the signal lands: ``Held`` keeps the storage's running trials and
the worker's list in step.

**Dead workers.** With a database server (PostgreSQL, MySQL) a running trial writes a heartbeat; any worker
fails trials without a heartbeat for the grace period (``optuna.storages.fail_stale_trials``, before every
trial and while waiting) and Optuna's ``RetryHeartbeatStaleTrialCallback`` re-queues each once with the same
parameters (``hpo.storage``). With a local file (SQLite, journal) each trial also records its owner
(host, pid, process start time) in the user attribute ``worker``; a worker on the same host that finds a
running trial whose owner process is gone fails it and re-queues it the same way, so a rerun after a crash
resumes at once. The state change RUNNING -> FAIL succeeds for exactly one worker (the storage refuses to
update a finished trial), so a trial is never retried twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import warnings
import zlib
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import StorageError
from hpo.parallel import interrupts
from hpo.record import read_trial, write_trial
from hpo.storage import MAX_RETRY, STORAGE_FAILURES, is_server_url

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # states that count towards the total
POLL_SECONDS = 1.0  # how often a waiting worker looks at the storage again
HEARTBEAT_JOIN_SECONDS = 2.0  # how long a finished trial waits for its heartbeat thread's last write

Printer = Callable[[str], None]
TrialCallback = Callable[[optuna.Study, FrozenTrial], None]


def heartbeats_enabled(storage: BaseStorage) -> bool:
    return isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), to tell a reused pid from its owner;
    None for a process that is gone, or a zombie (dead, not yet reaped by its parent: its trial is no longer
    running, though /proc still lists it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def owner_is_dead(owner: dict) -> bool:
    """True if ``owner`` (a trial's ``worker`` record) names a process on this host that no longer exists."""
    if owner.get("host") != socket.gethostname():
        return False  # another machine: only heartbeats can tell
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by another user
    if not os.path.exists("/proc/self/stat"):
        return False  # no /proc (not Linux): the process exists, and nothing tells a reused pid or a zombie
    started = owner.get("started")
    now = process_start(pid)
    return now is None if started is None else now != started


def claimed_owner(trial: FrozenTrial) -> dict | None:
    """The owner recorded by the worker running ``trial``; a retry inherits its original's, which is ignored."""
    owner = read_trial(trial).worker
    return owner if isinstance(owner, dict) and owner.get("trial") == trial.number else None


def retry_failed(study: optuna.Study, trial: FrozenTrial) -> None:
    """Re-queue a dead worker's trial with the same parameters, exactly as the heartbeat mechanism does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def recover(study: optuna.Study, storage: BaseStorage, check_pids: bool, out: Printer) -> None:
    """Fail the trials of dead workers and re-queue them once (see the module docstring)."""
    if heartbeats_enabled(storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            fail_stale_trials(study)
    if not check_pids:
        return
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = claimed_owner(trial)
        if owner is None or not owner_is_dead(owner):
            continue
        try:
            won = storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            won = False  # another worker got there first
        if won:
            retry_failed(study, storage.get_trial(trial._trial_id))
            out(f"trial #{trial.number} was left running by dead process {owner['pid']}: failed and re-queued")


@contextlib.contextmanager
def heartbeat(storage: BaseStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every interval while the block runs (what ``study.optimize`` does)."""
    interval = storage.get_heartbeat_interval() if isinstance(storage, optuna.storages.RDBStorage) else None
    if interval is None or not isinstance(storage, optuna.storages.RDBStorage):
        yield
        return
    stop = threading.Event()

    storage.record_heartbeat(trial_id)  # before the trial starts, so a worker killed at once is still noticed

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except STORAGE_FAILURES:
                # The storage is gone: the trial's next report fails in the main thread, within the storage's
                # bounded wait, and says so in one line. Stop beating here without a thread traceback.
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        # Do not wait out a heartbeat stuck on a storage that stopped answering (its wait is bounded by the
        # storage, see hpo.storage.DB_TIMEOUT_SECONDS); a late heartbeat of a finished trial is harmless.
        thread.join(timeout=HEARTBEAT_JOIN_SECONDS)


def counted_below(trials: list[FrozenTrial], number: int) -> int:
    """Trials numbered below ``number`` that count or may still count towards the total."""
    return sum(t.number < number and t.state != TrialState.FAIL for t in trials)


def surplus_reason(study: optuna.Study, trial: optuna.Trial, total: int) -> str | None:
    before = counted_below(study.get_trials(deepcopy=False), trial.number)
    if before < total:
        return None
    return f"{before} trials numbered below #{trial.number} already fill the total of {total}; ended without training"


def claim(trial: optuna.Trial) -> None:
    pid = os.getpid()
    owner = {"trial": trial.number, "host": socket.gethostname(), "pid": pid, "started": process_start(pid)}
    write_trial(trial, worker=owner)


def requeue_interrupted(study: optuna.Study, trial: optuna.Trial) -> None:
    """Fail an interrupted trial, saying so (``interrupted``: the reports do not count it as a failure), and
    re-queue it with the same parameters."""
    code = interrupts.received()
    write_trial(trial, interrupted=f"stopped by {signal.Signals(code).name if code else 'SIGINT'}")
    retry_failed(study, study.tell(trial, state=TrialState.FAIL))


class Held:
    """The trials a worker has asked and not yet told: exactly those it re-queues when interrupted.

    Asking a trial creates it in the storage as running, and telling it ends it there; each happens together with
    the change to this list, an interrupt held until both are done (``interrupts.deferred``). So wherever a signal
    lands, a trial running in the storage for this worker is in the list, and one that has ended is not.
    """

    def __init__(self, study: optuna.Study):
        self.study = study
        self.trials: list[optuna.Trial] = []

    def ask(self) -> optuna.Trial:
        with interrupts.deferred(), warnings.catch_warnings():
            # Optuna warns that heartbeats expect study.optimize; this loop records them itself.
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
            trial = self.study.ask()
            self.trials.append(trial)
        return trial

    def tell(self, trial: optuna.Trial, **end: Any) -> FrozenTrial:
        """``study.tell(trial, **end)``."""
        with interrupts.deferred():
            frozen = self.study.tell(trial, **end)
            self.trials.remove(trial)
        return frozen

    def requeue(self) -> None:
        """Fail every held trial as interrupted and re-queue it with its parameters (interrupted: a rerun resumes
        it, as it does a crashed trial)."""
        while self.trials:
            requeue_interrupted(self.study, self.trials.pop(0))


def run_one(held: Held, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]) -> FrozenTrial:
    """Run the objective on ``trial`` and tell the storage how it ended (as ``study.optimize`` would).
    Interrupted, the trial stays held: the caller re-queues it."""
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return held.tell(trial, state=TrialState.PRUNED)
    except (KeyboardInterrupt, *STORAGE_FAILURES, StorageError):
        # a storage that failed cannot take a "failed" now: the trial stays running, recovered as a dead worker's
        raise
    except BaseException:
        # an interrupt that library code turned into an error of its own
        if (signum := interrupts.received()) is not None:
            raise interrupts.Interrupted(signum) from None
        held.tell(trial, state=TrialState.FAIL)
        raise
    return held.tell(trial, values=value)


def run_batch(
    held: Held, trials: list[optuna.Trial], objective: Any, on_trial: Callable[[FrozenTrial], None]
) -> list[FrozenTrial]:
    """Run ``trials`` together (``objective.run_batch``) and tell the storage how each ended as soon as it has:
    what ``run_one`` does for one trial. Interrupted, the trials not yet told stay held (the caller re-queues
    them); an unexpected error fails its trial and, after the others are told, stops the worker."""
    told: dict[int, FrozenTrial] = {}
    error: BaseException | None = None

    def settle(i: int, outcome: float | BaseException) -> None:
        nonlocal error
        if isinstance(outcome, optuna.TrialPruned):
            told[i] = held.tell(trials[i], state=TrialState.PRUNED)
        elif isinstance(outcome, BaseException):
            told[i] = held.tell(trials[i], state=TrialState.FAIL)
            error = error or outcome
        else:
            told[i] = held.tell(trials[i], values=outcome)
        on_trial(told[i])

    try:
        objective.run_batch(trials, settle)
    except (KeyboardInterrupt, *STORAGE_FAILURES, StorageError):
        raise
    except BaseException:
        if (signum := interrupts.received()) is not None:
            raise interrupts.Interrupted(signum) from None
        for trial in list(held.trials):
            if trial in trials:
                held.tell(trial, state=TrialState.FAIL)
        raise
    if error is not None:
        raise error
    return [told[i] for i in range(len(trials))]


class Company(NamedTuple):
    """What a worker does when it first meets a trial that another worker created: ``reseed()``, once, on seeing
    such a trial numbered from ``since`` (the trial count when the worker chose its sampler seed), so that workers
    started together do not propose alike."""

    since: int
    reseed: Callable[[], None]


def run_trials(
    study: optuna.Study,
    storage: BaseStorage,
    storage_url: str,
    objective: Callable[[optuna.Trial], float],
    total: int,
    out: Printer,
    on_trial: TrialCallback,
    company: Company | None = None,
    batch: int = 1,
    startup: int = 0,
) -> None:
    """Run trials of ``study`` until it holds ``total`` finished trials (see the module docstring).

    ``batch > 1`` asks that many trials at a time (the sampler's constant liar keeps them apart) and runs them
    with ``objective.run_batch`` (trials that share programs train as one compiled program); ``objective`` is
    then an ``hpo.study.objective.Objective``, else any callable of a trial. So are the sampler's random start-up trials,
    the trials numbered below ``startup`` (0: none; ``objective`` is then an ``Objective``): a worker asks on until
    it holds every start-up trial not yet asked, and runs them as one batch, whose programs compile in background
    threads while its first trials train (``Objective.compiling_ahead``). Their parameters do not depend on any
    result, so asking them together changes nothing in them; several workers share them out, each asking one at
    a time.

    ``company`` reseeds the caller's sampler once, before sampling, when this worker first meets another worker's
    trial (``Company``).
    """
    check_pids = not is_server_url(storage_url)
    waiting_said = False
    mine: set[int] = set()
    while True:
        if (signum := interrupts.received()) is not None:  # a signal whose exception library code swallowed is not lost
            raise interrupts.Interrupted(signum)
        recover(study, storage, check_pids, out)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        if finished >= total:
            return
        running = [t for t in trials if t.state == TrialState.RUNNING]
        queued = any(t.state == TrialState.WAITING for t in trials)
        if not queued and finished + len(running) >= total:
            # Every remaining slot is held by a running trial. Wait for them when a dead one would be noticed:
            # heartbeats (database storages) or, for files, a claimed owner on this host (pid check).
            unknown = [t for t in running if not heartbeats_enabled(storage) and not _local(t)]
            if unknown:
                out(f"{len(unknown)} trial(s) still running on other machines or not yet claimed; this worker "
                    "stops (a crashed machine's trials are recovered when a worker is restarted on it)")
                return
            if not waiting_said:
                out(f"waiting for {len(running)} running trial(s) of other workers to finish")
                waiting_said = True
            time.sleep(POLL_SECONDS)
            continue
        waiting_said = False
        # A batch asks no more trials than the study still needs (the exact-total rule fails any surplus anyway).
        room = max(1, total - finished - len(running))
        held = Held(study)
        with contextlib.ExitStack() as beats:
            asked: list[optuna.Trial] = []  # the trials to run (not those ended at once as surplus)
            n_asked = 0
            try:
                while n_asked < room and (n_asked < batch or asked and asked[-1].number + 1 < startup):
                    n_asked += 1
                    trial = held.ask()
                    beats.enter_context(heartbeat(storage, trial._trial_id))
                    claim(trial)
                    mine.add(trial.number)
                    if company is not None and any(n not in mine for n in range(company.since, trial.number)):
                        company.reseed()
                        company = None
                    reason = surplus_reason(study, trial, total)
                    if reason is not None:
                        write_trial(trial, surplus=reason)
                        held.tell(trial, state=TrialState.FAIL)
                    else:
                        asked.append(trial)
                alone = batch == 1 and len(asked) <= 1
                if alone:
                    told = [run_one(held, trial, objective) for trial in asked]
                else:
                    told = run_batch(held, asked, objective, lambda frozen: on_trial(study, frozen))
            except KeyboardInterrupt:
                held.requeue()  # wherever the signal landed: asking, claiming, sampling, training or telling
                raise
        if alone:
            for frozen in told:
                on_trial(study, frozen)


def _local(trial: FrozenTrial) -> bool:
    owner = claimed_owner(trial)
    return owner is not None and owner.get("host") == socket.gethostname()


def sampler_seed(seed: int, n_existing: int, busy: bool, worker: int) -> int:
    """Seed of this worker's sampler.

    A lone worker on a fresh study uses the study seed, so a one-process study is reproducible. A worker that
    resumes a study, joins one that others are running, or is one of ``--workers`` mixes in what it sees and
    who it is, so that workers never replay each other's (or an earlier run's) proposals.
    """
    if n_existing == 0 and not busy and worker == 0:
        return seed
    entropy = [seed, n_existing, worker]
    if busy:
        entropy += [os.getpid(), zlib.crc32(socket.gethostname().encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
