"""launch.local: no other host can reach its workers' unauthenticated gRPC ports, and its flags are checked."""

import ctypes
import fcntl
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from launch import local
from tests.processes import REPO, run
from trainer import strategy

_SIOCGIFADDR = 0x8915  # <linux/sockios.h>


def _listening_ports(pid: int | str) -> set[int]:
  """The TCP ports in LISTEN state in the network namespace of process `pid`, from /proc (as `ss -ltn` shows)."""
  ports = set()
  for table in ("tcp", "tcp6"):
    with open(f"/proc/{pid}/net/{table}", encoding="ascii") as f:
      for line in f.readlines()[1:]:
        local_address, state = line.split()[1], line.split()[3]
        if state == "0A":
          ports.add(int(local_address.rsplit(":", 1)[1], 16))
  return ports


def _interfaces(pid: int | str) -> list[str]:
  with open(f"/proc/{pid}/net/dev", encoding="ascii") as f:
    return [line.split(":")[0].strip() for line in f.readlines()[2:]]


def _this_hosts_ipv4_addresses() -> list[str]:
  addresses = []
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for _, name in socket.if_nameindex():
      try:
        addresses.append(socket.inet_ntoa(fcntl.ioctl(s, _SIOCGIFADDR, struct.pack("256s", name.encode()))[20:24]))
      except OSError:  # an interface without an IPv4 address
        pass
  return addresses


@pytest.mark.slow
def test_the_workers_grpc_ports_cannot_be_reached_from_this_hosts_network(tmp_path):
  launcher = subprocess.Popen(
      [sys.executable, "-m", "launch.local", "--num_workers=2", "--", f"--model_dir={tmp_path}",
       "--gin_file=configs/smoke.gin", "--gin_bindings=TRAIN_STEPS=100000"],
      cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  pids = []
  try:
    first = launcher.stdout.readline()  # [launch] started 2 workers on 127.0.0.1:P, 127.0.0.1:Q (pids A B)
    assert first.startswith("[launch] started"), first + launcher.stdout.read()[-3000:]
    ports = [int(a.rsplit(":", 1)[1]) for a in first.split(" on ")[1].split(" (pids ")[0].split(", ")]
    pids = [int(p) for p in first.split("(pids ")[1].rstrip(")\n").split()]
    deadline = time.monotonic() + 240
    while not set(ports) <= _listening_ports(pids[0]):  # the strategy starts the servers after the rendezvous
      assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()[-3000:]
      time.sleep(0.2)
    for pid in pids:  # both workers in one network namespace, not this one, whose only interface is loopback
      assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
      assert _interfaces(pid) == ["lo"]
    assert not set(ports) & _listening_ports("self")  # as `ss -ltn` here would show: neither port
    hosts = {"127.0.0.1", *_this_hosts_ipv4_addresses()}
    for host in hosts:
      for port in ports:
        with pytest.raises(OSError):
          socket.create_connection((host, port), timeout=5).close()
    print(f"workers on ports {ports} listen only in their own namespace (interfaces: lo); refused from {sorted(hosts)}")
  finally:
    for pid in pids:
      os.kill(pid, signal.SIGKILL)
    output = launcher.communicate(timeout=120)[0]
  assert launcher.returncode == 137 and "[launch] warning" not in output, output[-3000:]


def test_without_the_right_to_make_a_namespace_the_launcher_says_so_and_changes_nothing(monkeypatch):
  class NoUnshare:
    def unshare(self, flags):
      del flags
      ctypes.set_errno(1)  # EPERM, as for a user without user namespaces
      return -1
  monkeypatch.setattr(local.ctypes, "CDLL", lambda *args, **kwargs: NoUnshare())
  before = os.readlink("/proc/self/ns/net")
  assert local.isolate_network() == "unshare: Operation not permitted (it needs root or unprivileged user namespaces)"
  assert os.readlink("/proc/self/ns/net") == before


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to become nobody")
def test_a_user_without_root_gets_the_namespace_through_a_user_namespace_and_keeps_its_ids():
  nobody = lambda code: subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                                        "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
  probe = nobody("import launch.local")  # a clone under a 0700 directory (mktemp -d, a home) is not theirs to read
  if probe.returncode and any(s in probe.stderr for s in ("Permission denied", "PermissionError", "No module named")):
    pytest.skip(f"uid 65534 cannot read this checkout or its Python ({probe.stderr.strip().splitlines()[-1]}); "
                "clone where other users can read to run this test")
  result = nobody("import os, socket; from launch.local import isolate_network; "
                  "before = os.readlink('/proc/self/ns/net'); "
                  "print(isolate_network(), os.getuid(), os.getgid(), [n for _, n in socket.if_nameindex()], "
                  "os.readlink('/proc/self/ns/net') != before)")
  if "Operation not permitted" in result.stdout:
    pytest.skip(f"unprivileged user namespaces are off here: {result.stdout.strip()}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["None", "65534", "65534", "['lo']", "True"]


@pytest.mark.parametrize("flag, message", [
    ("--num_workers=0", "error: flag --num_workers=0: 0 is not a positive integer"),
    ("--max_restarts=-1", "error: flag --max_restarts=-1: -1 is not a non-negative integer"),
    ("--grace_seconds=-1", "error: flag --grace_seconds=-1.0: must be a number of seconds >= 0"),
    ("--grace_seconds=nan", "error: flag --grace_seconds=nan: must be a number of seconds >= 0"),
    ("--num_workers=500", r"error: --num_workers=500 is more than this host's \d+ cores can run in reasonable time "
                          r"\(at most \d+\); local workers stand in for hosts, so use 2 or 4"),
])
def test_bad_launcher_flags_are_one_line_and_exit_2(flag, message):
  result = run("-m", "launch.local", flag, "--", "--gin_file=configs/smoke.gin", "--model_dir=/nonexistent")
  assert result.returncode == 2 and result.stdout == "" and len(result.stderr.splitlines()) == 1
  assert re.fullmatch(message if "500" in flag else re.escape(f"{message} (--helpshort lists the flags)"),
                      result.stderr.strip())


def test_a_loopback_address_on_a_host_with_other_interfaces_is_warned_about(monkeypatch):
  warnings = []
  monkeypatch.setattr(strategy.logging, "warning", lambda message, *args: warnings.append(message % args))
  monkeypatch.setattr(strategy.socket, "if_nameindex", lambda: [(1, "lo"), (2, "eth0")])
  strategy.warn_if_exposed("127.0.0.1:2222")
  strategy.warn_if_exposed("worker-1.trainer:2222")  # a cluster address: meant to face the job's network
  monkeypatch.setattr(strategy.socket, "if_nameindex", lambda: [(1, "lo")])  # launch.local's namespace
  strategy.warn_if_exposed("127.0.0.1:2222")
  assert warnings == ["TF_CONFIG puts this task on 127.0.0.1:2222, but TensorFlow listens on every interface (also "
                      "eth0), unauthenticated: on a shared network start local workers with launch.local "
                      "(WORKSPACE.md, Security)"]
