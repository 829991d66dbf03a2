"""Several methods of one experiment trained at once, one process each (``wsbus experiment --jobs N``).

The methods of an experiment are independent except where one starts from another's weights: a warm-started
``joint`` waits for ``strong_few``, and ``joint_self_training`` for ``joint`` (:func:`method_dependencies`).
:func:`run_parallel` starts every method whose dependencies are finished, up to ``jobs`` processes at a time; each
process trains its method exactly as a sequential run would (same seeds, same data order, its own thread count) and
stores the result in the method's folder, so the numbers are the same, bit for bit on CPU. An interrupt
(SIGINT/SIGTERM) of the parent is passed on to the running processes, which save their checkpoints.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

__all__ = ["method_dependencies", "parallel_plan", "run_parallel"]


def method_dependencies(methods: Sequence[str], warm_start: Mapping[str, Optional[str]]) -> Dict[str, List[str]]:
    """For each method, the methods (among ``methods``) it waits for: ``warm_start[m]`` and, for
    ``joint_self_training``, ``joint``."""
    deps: Dict[str, List[str]] = {}
    for m in methods:
        needs = [warm_start.get(m)] + (["joint"] if m == "joint_self_training" else [])
        deps[m] = [d for d in needs if d is not None and d in methods]
    return deps


def parallel_plan(methods: Sequence[str], deps: Mapping[str, Sequence[str]], jobs: int) -> List[List[str]]:
    """The waves of methods that can run side by side (for display and tests): each wave holds at most ``jobs``
    methods whose dependencies ran in earlier waves."""
    done: set = set()
    left = list(methods)
    waves = []
    while left:
        ready = [m for m in left if all(d in done for d in deps[m])][:max(1, int(jobs))]
        if not ready:
            raise ValueError(f"circular method dependencies among {left}")
        waves.append(ready)
        done |= set(ready)
        left = [m for m in left if m not in ready]
    return waves


def _child(work: Callable[[str], None], name: str, conn: Any) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        work(name)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1)
    conn.send(("ok", None))


def run_parallel(todo: Sequence[str], deps: Mapping[str, Sequence[str]], work: Callable[[str], None], jobs: int, *,
                 start_method: str = "fork", on_done: Callable[[str], None] = lambda name: None) -> None:
    """Run ``work(name)`` for every method of ``todo`` in child processes, at most ``jobs`` at once, each after the
    methods it depends on (``deps``; those not in ``todo`` are taken as done). Raises ``RuntimeError`` naming the
    method and its error when a child fails (the others are let finish first); on an interrupt, the children are
    sent SIGTERM and waited for (they save their checkpoints) before the interrupt propagates."""
    ctx = mp.get_context(start_method)
    pending, running, done, errors = list(todo), {}, set(), []
    try:
        while pending or running:
            while len(running) < jobs and not errors:
                ready = [m for m in pending if all(d in done or d not in todo for d in deps[m])]
                if not ready:
                    break
                name = ready[0]
                pending.remove(name)
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(work, name, child), name=f"wsbus-{name}")
                proc.start()
                child.close()
                running[name] = (proc, parent)
            if not running:
                break
            time.sleep(0.2)
            for name, (proc, conn) in list(running.items()):
                if proc.is_alive():
                    continue
                proc.join()
                status, message = conn.recv() if conn.poll() else ("error", f"exit code {proc.exitcode}")
                del running[name]
                if status == "ok":
                    done.add(name)
                    on_done(name)
                else:
                    errors.append(f"{name}: {message}")
    except BaseException:
        for proc, _ in running.values():
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the child's Trainer saves a checkpoint at its step boundary
        for proc, _ in running.values():
            proc.join()
        raise
    if errors:
        raise RuntimeError("method(s) failed in their processes: " + "; ".join(errors))
