r"""Runs a multi-worker job on this machine: python -m launch.local --num_workers=N -- <trainer.main flags>.

Starts N `trainer.main` processes (or `trainer.evaluate` ones, --module) with TF_CONFIG on free loopback ports,
prints their output interleaved with a `[worker i]` prefix, and treats them as one job: when a worker fails, the others are stopped (SIGTERM, then
SIGKILL after --grace_seconds) and, while --max_restarts allows, all of them are started again and resume from the
last checkpoint. That is the restart model TF documents for MultiWorkerMirroredStrategy: a lone restarted worker
cannot rejoin its peers' collectives. Exit codes 2 and 3 (bad input, non-finite loss) are not retried: a restart
would fail the same way. A worker that exits 42 was preempted (SIGTERM) after saving; that too restarts the job.
SIGTERM to the launcher itself is passed on to every worker (they save and exit 42) and is not followed by a
restart: the launcher exits with worker 0's code.

The workers run in a network namespace of their own that has only loopback (--isolate_network, the default).
TensorFlow's gRPC server listens on every interface whatever address TF_CONFIG gives (grpc_server_lib.cc binds
"0.0.0.0:<port>"; ServerDef has a port but no host) and authenticates nobody, so on a shared network anyone who
reaches the port could run ops in a worker. Root can make the namespace, and so can any user where unprivileged
user namespaces are allowed; elsewhere the launcher warns and runs the workers on the host's network.
"""

import ctypes
import fcntl
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from absl import app, flags

from trainer.console import parse_flags
from trainer.threads import intra_op_threads, max_sharing

_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Worker processes to start.", lower_bound=1)
_MAX_RESTARTS = flags.DEFINE_integer("max_restarts", 0, "Times to restart the whole job after a failure.",
                                     lower_bound=0)
_MODULE = flags.DEFINE_enum("module", "trainer.main", ["trainer.main", "trainer.evaluate"],
                            "What each worker runs: training, or a run's evaluation from a checkpoint.")
_GRACE = flags.DEFINE_float("grace_seconds", 10.0, "Time between SIGTERM and SIGKILL when stopping workers.")
flags.register_validator("grace_seconds", lambda v: math.isfinite(v) and v >= 0, "must be a number of seconds >= 0")
_ISOLATE = flags.DEFINE_bool("isolate_network", True, "Run the workers in a network namespace with only loopback, "
                             "so that no other host reaches their unauthenticated gRPC ports. --noisolate_network "
                             "for a job that needs the network (a gs:// model_dir, dataset downloads).")

NOT_RETRIED = (2, 3)  # trainer.main's exit codes for bad input and for a non-finite loss


class Terminated(Exception):
  """The launcher itself received SIGTERM."""


def _on_sigterm(signum, frame):
  del signum, frame
  raise Terminated()


_CLONE_NEWNET, _CLONE_NEWUSER = 0x40000000, 0x10000000  # <sched.h>
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1  # <linux/sockios.h>, <net/if.h>


def isolate_network() -> str | None:
  """Moves this process into a new network namespace with only loopback (up), where the workers it starts run.

  Returns None, or why not (then nothing changed). Without root, a user namespace of its own gives the process
  the right to make the network namespace; it keeps its uid and gid there (one-line id maps), so files it and the
  workers write are owned as before. Call before any thread starts (unshare refuses a threaded process).
  """
  libc = ctypes.CDLL(None, use_errno=True)
  if not hasattr(libc, "unshare"):
    return "network namespaces are Linux's"
  uid, gid = os.getuid(), os.getgid()
  if libc.unshare(_CLONE_NEWNET) != 0:
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
      return f"unshare: {os.strerror(ctypes.get_errno())} (it needs root or unprivileged user namespaces)"
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
      with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
        f.write(text)
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a new namespace's loopback starts down
    request = struct.pack("16sH22x", b"lo", 0)  # struct ifreq: the name, then ifr_flags
    current = struct.unpack("16sH22x", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
    fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", current | _IFF_UP))
  return None


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
  env.setdefault("TF_NUM_INTRAOP_THREADS", str(intra_op_threads(len(cluster))))  # the workers share the cores
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


def run_once(num_workers: int, trainer_args: list[str], grace: float, module: str = "trainer.main") -> int:
  """Runs the job once; returns 0, or the exit code of the first worker that failed (128 + signal if killed)."""
  cluster = [f"127.0.0.1:{p}" for p in free_ports(num_workers)]
  lock = threading.Lock()
  workers, pumps = [], []
  for i in range(num_workers):
    w = subprocess.Popen([sys.executable, "-m", module, *trainer_args], env=worker_env(cluster, i),
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
  if _NUM_WORKERS.value > max_sharing():
    print(f"error: --num_workers={_NUM_WORKERS.value} is more than this host's {os.cpu_count()} cores can run in "
          f"reasonable time (at most {max_sharing()}); local workers stand in for hosts, so use 2 or 4", file=sys.stderr)
    sys.exit(2)
  if not trainer_args:
    print("error: give the trainer.main flags after '--', e.g. -- --gin_file=configs/smoke.gin --model_dir=/tmp/run",
          file=sys.stderr)
    sys.exit(2)
  problem = isolate_network() if _ISOLATE.value else None
  if problem:
    print(f"[launch] warning: the workers' gRPC ports listen on every interface of this host, unauthenticated "
          f"(no network namespace of their own: {problem}); run this only on a trusted network "
          "(--noisolate_network: do not try)", flush=True)
  signal.signal(signal.SIGTERM, _on_sigterm)
  for attempt in range(_MAX_RESTARTS.value + 1):
    try:
      code = run_once(_NUM_WORKERS.value, trainer_args, _GRACE.value, _MODULE.value)
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
  app.run(main, flags_parser=parse_flags)
