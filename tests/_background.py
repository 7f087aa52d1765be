"""Subprocess jobs that run one after another in a background thread beside the test session.

conftest.py starts the jobs of the collected tests when collection ends (a test module lists its own in
``BACKGROUND_JOBS``: test name -> job) and moves the tests that wait for them to the end of the session, so that
the jobs use the second core while the rest of the session (mostly one busy core) goes on, and no test blocks the
session in its middle waiting for one. Each waiting test calls ``RUNNER.result`` for its own job only. One job at a
time: never more than one extra busy process beside the session.

A job is a function returning ``(cmd, env, cwd)``: the command line, its environment (None: the session's), and the
folder to run it in (None: a fresh temporary folder, removed after; a folder given is handed to the test that
collects the job's result, or removed by ``stop`` when none did, as in a session ended early by -x). It may raise
``pytest.skip``; that outcome is then its test's. ``start`` calls every job function at once, in the session's
thread, before any test runs: a job's environment is the session's at its start, never what a test running beside
it has set for a while (a ``monkeypatch.setenv("DALI_KMIX_PLUGIN", "0")`` read by a job the thread prepared later
once ran a sanitized plugin suite without its plugin).
"""

import os
import shutil
import subprocess
import tempfile
import threading
import traceback
from pathlib import Path

import pytest

#: One job may run this long; then it is killed and its output says so.
JOB_TIMEOUT_S = 1800
#: The file a job's output goes to, in its folder.
LOG_NAME = "job-output.txt"


class Runner:
    """The background thread and the results of its jobs."""

    def __init__(self):
        self.results, self.events, self.lock = {}, {}, threading.Lock()
        self.proc, self.stopped, self.thread = None, False, None
        self.folders = {}  # name -> the folder a prepared job gave, until its test collects the result

    def start(self, jobs):
        """Run ``jobs`` (a list of (name, job)) in that order in the background; once per runner."""
        with self.lock:
            if self.thread is not None:
                return
            prepared = []
            for name, job in jobs:
                self.events[name] = threading.Event()
                try:
                    spec = self.prepare(job)
                    prepared.append((name, spec))
                    if not isinstance(spec, pytest.skip.Exception) and spec[2] is not None:
                        self.folders[name] = Path(spec[2])
                except Exception:  # noqa: BLE001 - its test fails with this, as with a job that raised running
                    self.results[name] = f"the job could not be prepared:\n{traceback.format_exc()}", -1, None
                    self.events[name].set()
            self.thread = threading.Thread(target=self._loop, args=(prepared,), daemon=True,
                                           name="kmix-background-jobs")
            self.thread.start()

    def _loop(self, jobs):
        for name, spec in jobs:
            if self.stopped:
                break
            try:
                self.results[name] = self.execute(spec)
            except BaseException:  # the job's test fails with this, instead of waiting for a result forever
                self.results[name] = f"the runner raised:\n{traceback.format_exc()}", -1, None
            self.events[name].set()

    @staticmethod
    def prepare(job):
        """``(cmd, env, cwd)`` of ``job``, its environment a copy of the session's as it is now; or its skip."""
        try:
            cmd, env, cwd = job()
        except pytest.skip.Exception as skip:
            return skip
        return cmd, dict(os.environ if env is None else env), cwd

    def run(self, job):
        """``job`` to its end: (output, return code, folder or None), or the ``pytest.skip`` outcome that stops it."""
        return self.execute(self.prepare(job))

    def execute(self, spec):
        """A prepared job (:meth:`prepare`) to its end, as :meth:`run`."""
        if isinstance(spec, pytest.skip.Exception):
            return spec
        cmd, env, cwd = spec
        own = cwd is None
        folder = Path(tempfile.mkdtemp(prefix="kmix-job-")) if own else Path(cwd)
        try:
            with open(folder / LOG_NAME, "w+") as log:
                with self.lock:
                    if self.stopped:
                        return "stopped before it started", -1, None if own else folder
                    self.proc = proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                        cwd=folder)
                try:
                    proc.wait(timeout=JOB_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    log.write(f"\nkilled after {JOB_TIMEOUT_S} s\n")
                log.seek(0)
                return log.read(), proc.returncode, None if own else folder
        finally:
            if own:
                shutil.rmtree(folder, ignore_errors=True)

    def result(self, name, job):
        """Wait for job ``name`` if the background thread has it, else run ``job`` here and now. Raises its skip."""
        event = self.events.get(name)
        if event is None:
            outcome = self.run(job)
        else:
            event.wait()
            outcome = self.results[name]
            self.folders.pop(name, None)  # the test's from now on
        if isinstance(outcome, pytest.skip.Exception):
            raise outcome
        return outcome

    def stop(self):
        """Kill what is still running (a session ended early, e.g. by -x); a later result() runs in the foreground."""
        with self.lock:
            self.stopped = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
        if self.thread is not None:
            self.thread.join(timeout=60)
        for folder in self.folders.values():  # prepared at the start, no test collected them
            shutil.rmtree(folder, ignore_errors=True)
        self.folders.clear()


RUNNER = Runner()
