r"""Runs a multi-worker job on this machine: python -m launch.local --num_workers=N -- <trainer.main flags>.

Starts N `trainer.main` processes with TF_CONFIG on free loopback ports, prints their output interleaved with a
`[worker i]` prefix, and treats them as one job: when a worker fails, the others are stopped (SIGTERM, then
SIGKILL after --grace_seconds) and, while --max_restarts allows, all of them are started again and resume from the
last checkpoint. That is the restart model TF documents for MultiWorkerMirroredStrategy: a lone restarted worker
cannot rejoin its peers' collectives. Exit codes 2 and 3 (bad input, non-finite loss) are not retried: a restart
would fail the same way. A worker that exits 42 was preempted (SIGTERM) after saving; that too restarts the job.
SIGTERM to the launcher itself is passed on to every worker (they save and exit 42) and is not followed by a
restart: the launcher exits with worker 0's code.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Worker processes to start.", lower_bound=1)
_MAX_RESTARTS = flags.DEFINE_integer("max_restarts", 0, "Times to restart the whole job after a failure.",
                                     lower_bound=0)
_GRACE = flags.DEFINE_float("grace_seconds", 10.0, "Time between SIGTERM and SIGKILL when stopping workers.")

NOT_RETRIED = (2, 3)  # trainer.main's exit codes for bad input and for a non-finite loss


class Terminated(Exception):
  """The launcher itself received SIGTERM."""


def _on_sigterm(signum, frame):
  del signum, frame
  raise Terminated()


def free_ports(n: int) -> list[int]:
  """`n` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
  sockets = [socket.socket() for _ in range(n)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def worker_env(cluster: list[str], index: int) -> dict[str, str]:
  """This process's environment plus TF_CONFIG for worker `index`, without proxies (gRPC honours them)."""
  env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
  env["TF_CONFIG"] = json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}})
  # The workers share this host's cores: cores / workers threads per op (as trainer.strategy.split_cpu gives
  # replicas); TF's default of every core per op oversubscribes it (up to 1.9x slower in trainer.bench).
  env.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 1) // len(cluster))))
  return env


def _pump(index: int, stream, lock: threading.Lock) -> None:
  for line in stream:
    with lock:
      sys.stdout.write(f"[worker {index}] {line}")
      sys.stdout.flush()


def _stop(workers: list[subprocess.Popen], grace: float) -> None:
  for w in workers:
    if w.poll() is None:
      w.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + grace
  for w in workers:
    try:
      w.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
      w.kill()
      w.wait()


def run_once(num_workers: int, trainer_args: list[str], grace: float) -> int:
  """Runs the job once; returns 0, or the exit code of the first worker that failed (128 + signal if killed)."""
  cluster = [f"127.0.0.1:{p}" for p in free_ports(num_workers)]
  lock = threading.Lock()
  workers, pumps = [], []
  for i in range(num_workers):
    w = subprocess.Popen([sys.executable, "-m", "trainer.main", *trainer_args], env=worker_env(cluster, i),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers.append(w)
    pumps.append(threading.Thread(target=_pump, args=(i, w.stdout, lock), daemon=True))
    pumps[-1].start()
  print(f"[launch] started {num_workers} workers on {', '.join(cluster)} (pids {' '.join(str(w.pid) for w in workers)})",
        flush=True)
  try:
    while True:
      codes = [w.poll() for w in workers]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        index, code = failed[0]
        code = 128 - code if code < 0 else code  # Popen reports death by signal N as -N
        print(f"[launch] worker {index} exited with code {code}; stopping the others", flush=True)
        _stop(workers, grace)
        return code
      if all(c == 0 for c in codes):
        return 0
      time.sleep(0.2)
  except KeyboardInterrupt:
    _stop(workers, grace)
    raise
  except Terminated:
    _stop(workers, grace)  # SIGTERM first: each worker saves at its next loop boundary and exits 42
    code = workers[0].returncode
    raise Terminated(128 - code if code < 0 else code) from None
  finally:
    for p in pumps:
      p.join(timeout=5)


def main(argv: list[str]) -> None:
  trainer_args = argv[1:]
  if not trainer_args:
    raise app.UsageError("give the trainer.main flags after '--', e.g. -- --gin_file=configs/smoke.gin "
                         "--model_dir=/tmp/run")
  signal.signal(signal.SIGTERM, _on_sigterm)
  for attempt in range(_MAX_RESTARTS.value + 1):
    try:
      code = run_once(_NUM_WORKERS.value, trainer_args, _GRACE.value)
    except Terminated as e:
      print(f"[launch] SIGTERM passed on to the workers; worker 0 exited with code {e.args[0]}", flush=True)
      sys.exit(e.args[0])
    if code == 0 or code in NOT_RETRIED:
      sys.exit(code)
    if attempt < _MAX_RESTARTS.value:
      print(f"[launch] restarting all workers ({attempt + 1} of {_MAX_RESTARTS.value}); they resume from the "
            "last checkpoint", flush=True)
  sys.exit(code)


if __name__ == "__main__":
  app.run(main)
