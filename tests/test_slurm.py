"""launch/slurm.sbatch on a real Slurm: munge, slurmctld and slurmd on this host, one node of 2 CPUs.

The fixture starts its own daemons on free ports with a private slurm.conf (SLURM_CONF), so it neither needs nor
touches a Slurm configured on the host, and stops them at the end. It skips where Slurm is not installed (`apt-get
install slurm-wlm munge`) or its daemons cannot start; with TRAINER_REQUIRE_SLURM=1 (set by .ci/run) that is a
failure instead, so CI always runs these tests. Every job is WORKSPACE.md's CPU-only command:
`sbatch --nodes=1 --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 launch/slurm.sbatch configs/smoke.gin DIR`.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from launch.local import free_ports
from tests.processes import REPO, checkpoint_state, max_diff
from trainer.faults import Preemption

SBATCH = os.path.join(REPO, "launch", "slurm.sbatch")
STEPS = 300
TRAINER_ARGS = [f"--gin_bindings=TRAIN_STEPS={STEPS}", "--gin_bindings=train.log_every=50",
                "--gin_bindings=train.eval_every=0", "--gin_bindings=train.checkpoint_every=100",
                "--gin_bindings=train.steps_per_loop=20"]
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo")
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _unavailable(reason: str) -> None:
  if os.environ.get("TRAINER_REQUIRE_SLURM") == "1":
    pytest.fail(f"TRAINER_REQUIRE_SLURM=1, but {reason}")
  pytest.skip(reason)


def _wait(condition, timeout: float, what: str, interval: float = 0.2):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = condition()
    if value:
      return value
    time.sleep(interval)
  raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Cluster:
  """The test cluster: Slurm commands run against its slurm.conf; jobs run in the repository."""

  def __init__(self, directory, env: dict[str, str]):
    self.directory = directory
    self.env = env

  def command(self, *args: str, check: bool = True) -> str:
    result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
    if check and result.returncode:
      raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result.stdout

  def submit(self, model_dir, log, *trainer_args: str) -> str:
    """Submits the script as WORKSPACE.md's CPU-only command does; its output goes to `log` (kept across requeues)."""
    return self.command("sbatch", "--parsable", f"--chdir={REPO}", f"--output={log}", "--nodes=1",
                        "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", SBATCH, "configs/smoke.gin",
                        str(model_dir), *trainer_args).strip()

  def job(self, job_id: str) -> dict[str, str]:
    fields = self.command("scontrol", "--oneliner", "show", "job", job_id).split()
    return dict(f.split("=", 1) for f in fields if "=" in f)

  def wait_until_done(self, job_id: str, timeout: float = 300) -> dict[str, str]:
    """The job's record once it has ended for good, releasing it whenever it is requeued.

    Slurm holds a requeued job for 120 s (its EligibleTime; measured here on 22.05). `StartTime=now` lifts that, as
    an operator could, but not in the second the previous run ended: slurmd then refuses to start it ("Job
    credential revoked") and the job FAILS (seen here). So it is released 3 s after it is seen pending.
    """
    pending_since = {}

    def ended():
      job = self.job(job_id)
      if job["JobState"] == "PENDING" and job["Reason"] == "BeginTime":
        if time.monotonic() - pending_since.setdefault(job["Restarts"], time.monotonic()) > 3:
          self.command("scontrol", "update", f"JobId={job_id}", "StartTime=now")
      return job if job["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") else None
    return _wait(ended, timeout, f"job {job_id} to end", interval=0.5)


def _start_munge() -> subprocess.Popen | None:
  """Starts munged unless a munge daemon already answers; returns what it started."""
  if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
    return None
  os.makedirs("/run/munge", exist_ok=True)
  shutil.chown("/run/munge", "munge", "munge")
  # In the foreground (so that it is ours to stop), as the munge user that owns its key.
  daemon = subprocess.Popen(["runuser", "-u", "munge", "--", shutil.which("munged", path=SBIN), "--foreground"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    _wait(lambda: subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0, 10,
          "munged")
  except AssertionError:
    daemon.kill()
    _unavailable(f"munged did not start: {daemon.communicate()[1].decode()[-500:]}")
  return daemon


def _slurm_conf(directory, ctld_port: int, slurmd_port: int) -> str:
  node = socket.gethostname().split(".")[0]
  # proctrack/linuxproc and task/none: no cgroups, which containers and sandboxes often lack. One node, 2 CPUs.
  return f"""ClusterName=trainer-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=10
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
  missing = [d for d in DAEMONS if not shutil.which(d, path=SBIN)]
  if missing:
    _unavailable(f"Slurm is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge")
  if os.geteuid() != 0:
    _unavailable("slurmd must run as root to start job steps")
  directory = tmp_path_factory.mktemp("slurm")
  for d in ("state", "spool"):
    (directory / d).mkdir()
  conf = directory / "slurm.conf"
  conf.write_text(_slurm_conf(directory, *free_ports(2)))
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM") and k != "TF_CONFIG"}
  env.update(SLURM_CONF=str(conf), PATH=SBIN, PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="2")
  munged = _start_munge()
  for daemon in ("slurmctld", "slurmd"):
    subprocess.run([shutil.which(daemon, path=SBIN), "-f", str(conf)], env=env, capture_output=True, timeout=60)
  cluster = Cluster(directory, env)
  try:
    _wait(lambda: cluster.command("sinfo", "--noheader", "--format=%T", check=False).strip() == "idle", 30,
          "the node to be idle")
  except AssertionError:
    logs = "".join((directory / f).read_text()[-1000:] for f in ("slurmctld.log", "slurmd.log")
                   if (directory / f).exists())
    _stop(cluster, munged)
    _unavailable(f"the Slurm daemons did not start: {logs}")
  yield cluster
  _stop(cluster, munged)


def _stop(cluster: Cluster, munged: subprocess.Popen | None) -> None:
  cluster.command("scancel", "--full", "--user=root", check=False)
  for daemon in ("slurmd", "slurmctld"):
    pid_file = cluster.directory / f"{daemon}.pid"
    if pid_file.exists():
      pid = int(pid_file.read_text())
      os.kill(pid, signal.SIGTERM)
      _wait(lambda: not os.path.exists(f"/proc/{pid}"), 30, f"{daemon} to stop")
  if munged:
    munged.terminate()
    munged.wait(timeout=30)


def _progress(model_dir) -> int:
  """The last update in the run's metrics.jsonl (the chief writes it), 0 before its first line."""
  try:
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
      return max([json.loads(l).get("update", 0) for l in f if l.strip()], default=0)
  except (OSError, ValueError):  # not there yet, or a line being written
    return 0


def _unscheduled_checkpoint(model_dir) -> str | None:
  """A checkpoint written for a signal: one whose update is not a multiple of train.checkpoint_every (100)."""
  try:
    names = os.listdir(model_dir / "checkpoints")
  except OSError:
    return None
  return next((n for n in names if re.fullmatch(r"ckpt-\d+\.index", n) and int(n[5:-6]) % 100), None)


def _task_pid(job_id: str, rank: int) -> int | None:
  """The pid of trainer.main for task `rank` of the job's current step."""
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read()
      with open(f"/proc/{pid}/environ", "rb") as f:
        environ = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    except OSError:
      continue
    if (b"trainer.main" in cmdline and environ.get(b"SLURM_JOB_ID") == job_id.encode()
        and environ.get(b"SLURM_PROCID") == str(rank).encode()):
      return int(pid)
  return None


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory):
  """A 2-task job of TRAINER_ARGS that runs to the end: (its checkpoint state, output, job record, seconds)."""
  directory = tmp_path_factory.mktemp("whole")
  start = time.monotonic()
  job_id = slurm.submit(directory / "run", directory / "job.log", *TRAINER_ARGS)
  job = slurm.wait_until_done(job_id)
  seconds = time.monotonic() - start
  output = (directory / "job.log").read_text()
  return checkpoint_state(directory / "run"), output, job, seconds


@pytest.mark.slow
def test_a_two_task_job_trains_to_the_end_on_the_cpus_of_its_node(uninterrupted):
  state, output, job, seconds = uninterrupted
  print(f"uninterrupted 2-task job of {STEPS} updates: {seconds:.1f} s from sbatch to COMPLETED")
  assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "0"), output[-3000:]
  assert state["update/.ATTRIBUTES/VARIABLE_VALUE"] == STEPS
  assert "MultiWorkerMirroredStrategy" in output and "on 2 replica(s)" in output, output[-3000:]
  # Each task mirrors over its node's devices: a CPU here (the resolver used to claim a GPU on every node).
  devices = re.findall(r"on 2 replica\(s\) \(MultiWorkerMirroredStrategy, 2 workers, this one on ([^)]*)\)", output)
  assert sorted(devices) == [f"/job:worker/replica:0/task:{t}/device:CPU:0" for t in "01"], devices


def _declared_warning() -> str:
  """The signal the script asks Slurm to send before the time limit (--signal=B:<SIG>@<seconds>)."""
  with open(SBATCH, encoding="utf-8") as f:
    return re.search(r"^#SBATCH --signal=B:(\w+)@\d+$", f.read(), re.M).group(1)


@pytest.mark.slow
def test_the_time_limit_signal_saves_requeues_and_the_job_ends_on_the_uninterrupted_weights(slurm, tmp_path,
                                                                                             uninterrupted):
  model_dir, log = tmp_path / "run", tmp_path / "job.log"
  job_id = slurm.submit(model_dir, log, *TRAINER_ARGS)
  _wait(lambda: _progress(model_dir) >= 150, 120, "update 150", interval=0.05)  # between the checkpoints
  # What --signal=B:<SIG>@N delivers before the time limit: the declared signal, to the batch shell only.
  signalled = time.time()
  slurm.command("scancel", f"--signal={_declared_warning()}", "--batch", job_id)
  checkpoint = _wait(lambda: _unscheduled_checkpoint(model_dir), 60, "a checkpoint for the signal", interval=0.02)
  saved_after = time.time() - signalled
  _wait(lambda: slurm.job(job_id)["Restarts"] == "1", 60, "the job to be requeued")
  requeued_after = time.time() - signalled
  job = slurm.wait_until_done(job_id)
  output = log.read_text()
  assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), output[-3000:]
  saved = [int(u) for u in re.findall(r"preempted: SIGUSR1 received; saved update (\d+) of", output)]
  assert len(saved) == 2 and saved[0] == saved[1], output[-3000:]  # both tasks, at the same update
  update = saved[0]
  assert 150 <= update < STEPS and update % 100, update  # not a checkpoint_every multiple: saved for the signal
  assert f"from update {update} of {STEPS}" in output, output[-3000:]  # the requeued job resumed there
  assert checkpoint == f"ckpt-{update}.index", checkpoint
  diff = max_diff(uninterrupted[0], checkpoint_state(model_dir))
  print(f"time-limit signal after update 150: saved update {update} {saved_after:.2f} s after the signal, requeued "
        f"{requeued_after:.1f} s after it; max |w(uninterrupted) - w(requeued)| = {diff:.3g}")
  assert diff <= 1e-6, diff
  assert saved_after < 20, saved_after


@pytest.mark.slow
def test_a_task_killed_with_sigkill_restarts_the_step_and_the_job_ends_on_the_uninterrupted_weights(
    slurm, tmp_path, uninterrupted):
  model_dir, log = tmp_path / "run", tmp_path / "job.log"
  job_id = slurm.submit(model_dir, log, *TRAINER_ARGS)
  _wait(lambda: os.path.exists(model_dir / "checkpoints" / "ckpt-100.index") and _progress(model_dir) >= 100, 120,
        "the checkpoint of update 100", interval=0.05)
  killed = time.monotonic()
  os.kill(_wait(lambda: _task_pid(job_id, 1), 10, "task 1's pid"), signal.SIGKILL)
  _wait(lambda: "restarting all tasks" in log.read_text(), 60, "the script to restart the step", interval=0.05)
  restarted = time.monotonic() - killed
  _wait(lambda: "from update" in log.read_text().split("restarting all tasks")[1], 120, "the restarted step to train",
        interval=0.1)
  resumed = time.monotonic() - killed
  job = slurm.wait_until_done(job_id)
  output = log.read_text()
  assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "0"), output[-3000:]
  assert "the step exited with" in output and output.count("restarting all tasks") == 1, output[-3000:]
  resumed_at = int(re.findall(r"from update (\d+) of", output.split("restarting all tasks")[1])[0])
  assert 100 <= resumed_at < STEPS and resumed_at % 100 == 0, resumed_at  # the last periodic checkpoint
  diff = max_diff(uninterrupted[0], checkpoint_state(model_dir))
  print(f"SIGKILL of task 1 after update 100: step restarted {restarted:.1f} s later, training again from update "
        f"{resumed_at} {resumed:.1f} s after the kill; max |w(uninterrupted) - w(restarted)| = {diff:.3g}")
  assert diff <= 1e-6, diff


@pytest.mark.slow
def test_a_non_finite_loss_ends_the_job_with_exit_3_and_no_restart(slurm, tmp_path):
  """Every task stops with 3 at the same update; a restart would fail the same way."""
  log = tmp_path / "job.log"
  job = slurm.wait_until_done(slurm.submit(tmp_path / "run", log, "--gin_bindings=critic/Adam.learning_rate=1e30"))
  output = log.read_text()
  assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("FAILED", "3:0", "0"), output[-3000:]
  assert output.count("error: non-finite loss or gradient at update 2") == 2, output[-3000:]
  assert "restarting all tasks" not in output, output[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_sigusr1_asks_for_a_preemption_exactly_as_sigterm_does(sig):
  """The signal slurm.sbatch passes on through srun (SIGUSR1) and the one Kubernetes sends (SIGTERM)."""
  got = []
  previous = signal.signal(sig, lambda *_: got.append("previous handler"))  # what runs if Preemption misses it
  try:
    preemption = Preemption(tf.distribute.get_strategy())
    assert not preemption.requested()
    os.kill(os.getpid(), sig)
    _wait(lambda: preemption.requested() or got, 5, f"{sig.name} to be handled", interval=0.01)
    assert (preemption.requested(), preemption.signal_name, got) == (True, sig.name, [])
    preemption.close()
    os.kill(os.getpid(), sig)  # close() puts the previous handler back
    _wait(lambda: got, 5, "the previous handler", interval=0.01)
  finally:
    signal.signal(sig, previous)
