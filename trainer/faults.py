"""What a job does when its cluster misbehaves: a peer that never comes, a peer that stalls, a preemption notice.

Seen on TF 2.21 with loopback workers: MultiWorkerMirroredStrategy waits forever at start-up for a missing
peer (holding the GIL, so no Python thread can intervene), a stopped (SIGSTOP) peer blocks the others' collectives
forever, and MWMS swallows SIGTERM. Each gets an answer here:
  * `wait_for_peers`: a plain-socket rendezvous BEFORE the strategy exists, with a deadline and an error that names
    the addresses that never answered;
  * `Watchdog`: a thread that ends the process when one compiled training call outlives its deadline (the GIL is
    released while TF executes, so the thread runs);
  * `Preemption`: SIGTERM or SIGUSR1 sets a flag; at the next loop boundary all workers agree (a one-scalar
    all-reduce, once per loop, not per window), save a checkpoint and exit with EXIT_PREEMPTED.
CollectiveCommunication's own `timeout_seconds` is not used for stalls: it starts a thread per collective that
lives for the whole timeout (TF's docstring), so at hundreds of updates per second as many threads as updates in
the timeout.
"""

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, Iterator

import tensorflow as tf
from absl import logging

from trainer.errors import ClusterFault

_READY = b"trainer-rendezvous\n"
EXIT_STALLED = 4  # = ClusterFault.exit_code; a hard exit from the watchdog thread uses it directly


def _split(address: str) -> tuple[str, int]:
  host, _, port = address.rpartition(":")
  return host.strip("[]"), int(port)


def wait_for_peers(addresses: list[str], index: int, timeout: float) -> None:
  """Returns once every task in `addresses` runs this rendezvous; raises ClusterFault naming the missing ones.

  Task `index` listens on its own port and connects to every peer until, within `timeout` seconds, it has both
  reached every peer and been reached by every peer. Then it closes its socket and the strategy binds the port.
  The symmetric condition is what makes it safe: a task only leaves after each peer has reached it, so no peer
  can still be waiting to connect to a socket that is gone. A peer counts as reached only when it answers the
  handshake, so the gRPC port of a still-running older incarnation of that peer is not mistaken for it.
  """
  peers = {i: a for i, a in enumerate(addresses) if i != index}
  if not peers:
    return
  server = socket.socket(socket.AF_INET6 if ":" in _split(addresses[index])[0] else socket.AF_INET)
  server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    server.bind(("", _split(addresses[index])[1]))
  except OSError as e:
    raise ClusterFault(f"cannot listen on {addresses[index]} ({e.strerror}): another process holds the port; "
                       "stop it or give this task another port in TF_CONFIG") from e
  server.listen(len(addresses))
  server.settimeout(0.2)
  reached, reached_by, done = set(), set(), threading.Event()

  def answer() -> None:  # in its own thread, so that peers' handshakes never wait on our own connects
    while not done.is_set():
      with contextlib.suppress(OSError, ValueError):
        connection, _ = server.accept()
        with connection:
          connection.settimeout(1.0)
          peer = int(connection.recv(16).decode().strip())
          connection.sendall(_READY)
          reached_by.add(peer)

  answering = threading.Thread(target=answer, name="trainer-rendezvous", daemon=True)
  answering.start()
  deadline = time.monotonic() + timeout
  try:
    while reached != peers.keys() or not peers.keys() <= reached_by:
      for i in peers.keys() - reached:
        with contextlib.suppress(OSError):  # not up yet (refused, unresolvable, timed out): try again
          with socket.create_connection(_split(peers[i]), timeout=1.0) as c:
            c.sendall(f"{index}\n".encode())
            if c.recv(len(_READY)) == _READY:
              reached.add(i)
      if time.monotonic() > deadline:
        missing = sorted((peers.keys() - reached) | (peers.keys() - reached_by))
        raise ClusterFault(
            f"peer task(s) {', '.join(f'{i} at {peers[i]}' for i in missing)} did not join within {timeout:.0f} s "
            "(--startup_timeout); start every task of the cluster, and check those addresses, their DNS and "
            "firewalls")
      time.sleep(0.1)
  finally:
    done.set()
    answering.join()
    server.close()
  logging.info("all %d tasks joined", len(addresses))


class Watchdog:
  """Ends the process with EXIT_STALLED when a watched call runs longer than `timeout` seconds (0: never).

  A stalled collective cannot be interrupted from Python, and nothing can be saved without the peers, so the
  only useful act is to exit with a clear message: the launcher then restarts the whole job from its last
  checkpoint. `on_exit` runs just before that exit (os._exit skips `finally` blocks and atexit handlers), e.g. to
  remove a worker's temporary directory.
  """

  def __init__(self, timeout: float, on_exit: Callable[[], None] | None = None):
    self._timeout = timeout
    self._on_exit = on_exit
    self._deadline = None
    self._what = ""
    self._changed = threading.Condition()
    if timeout > 0:
      threading.Thread(target=self._watch, name="trainer-watchdog", daemon=True).start()

  @contextlib.contextmanager
  def watch(self, what: str) -> Iterator[None]:
    """Watches the body of the `with` block; `what` names it in the message."""
    with self._changed:
      self._deadline, self._what = time.monotonic() + self._timeout, what
      self._changed.notify()
    try:
      yield
    finally:
      with self._changed:
        self._deadline = None

  def _watch(self) -> None:
    with self._changed:
      while True:
        if self._deadline is None:
          self._changed.wait()
        elif time.monotonic() < self._deadline:
          self._changed.wait(self._deadline - time.monotonic())
        else:
          sys.stderr.write(f"error: {self._what} did not finish within {self._timeout:.0f} s (--stall_timeout): a "
                           "peer worker is stalled or unreachable; exiting so that the job can be restarted from "
                           "its last checkpoint\n")
          sys.stderr.flush()
          if self._on_exit is not None:
            try:
              self._on_exit()
            except Exception:  # pylint: disable=broad-except  (exiting matters more than tidying up)
              pass
          os._exit(EXIT_STALLED)  # pylint: disable=protected-access  (the main thread is stuck in TF)


class Preemption:
  """SIGTERM or SIGUSR1 means: save at the next loop boundary and exit. `requested()` is the same on every worker.

  SIGTERM is what Kubernetes, Docker and Slurm's own preemption send; SIGUSR1 is launch/slurm.sbatch's time-limit
  warning, since srun kills its step on SIGTERM but passes SIGUSR1 on to the tasks. Creating it installs the handler
  for both (replacing MWMS's, which ignores SIGTERM); `close()` restores the previous ones.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

  def __init__(self, strategy: tf.distribute.Strategy):
    self._strategy = strategy
    self._signalled = threading.Event()
    self.signal_name = "SIGTERM"  # the signal that asked for the preemption, for the message
    self._previous = {}
    self._agree = None
    if strategy.extended._in_multi_worker_mode():  # pylint: disable=protected-access
      # Any worker's signal stops all of them at the same update: sum the flags over the cluster.
      self._agree = tf.function(lambda flag: strategy.reduce(
          tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(flag)), axis=None))
    if threading.current_thread() is threading.main_thread():  # Python only delivers signals to the main thread
      self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}

  def close(self) -> None:
    """Restores the handlers that were there before."""
    for s, previous in self._previous.items():
      signal.signal(s, previous)
    self._previous = {}

  def _handler(self, signum, frame) -> None:
    del frame
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: saving at the next loop boundary, then exiting", self.signal_name)
    self._signalled.set()

  def requested(self) -> bool:
    """Whether any worker got SIGTERM or SIGUSR1. A collective call in multi-worker mode: call it on every worker."""
    flag = 1.0 if self._signalled.is_set() else 0.0
    if self._agree is None:
      return flag > 0
    return float(self._agree(tf.constant(flag))) > 0
