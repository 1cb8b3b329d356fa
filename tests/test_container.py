"""The image itself: built from this repository with podman, then run with no network at all (--network=none): the
default job as the image's user into a named volume, a container stopped mid-run (SIGTERM) and resumed by a second one
on the same volume, and an arbitrary uid on a host directory. The image is the CPU variant (the TensorFlow requirement
is a build argument); where no registry is reachable, its base is the stand-in that .ci/podman-base.sh makes. Skipped
where podman cannot run, unless TRAINER_REQUIRE_PODMAN=1 (CI), which makes that a failure."""

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.processes import REPO, checkpoint_state, max_diff

IMAGE = "localhost/trainer:test-cpu"
BASE_SCRIPT = os.path.join(REPO, ".ci", "podman-base.sh")
STEPS = 1000  # enough that a stop after the first log line lands mid-way
BINDINGS = [f"--gin_bindings=TRAIN_STEPS={STEPS}", "--gin_bindings=train.log_every=50",
            "--gin_bindings=train.checkpoint_every=250", "--gin_bindings=train.eval_every=500"]
ARBITRARY_UID = 54321  # neither root nor the image's user, as `docker run --user "$(id -u):$(id -g)"` gives
TIMEOUT = 1800  # seconds; the first test to run builds the image (on a new machine, the stand-in base too)
UPDATE = "update/.ATTRIBUTES/VARIABLE_VALUE"


def _read(name: str) -> str:
  with open(os.path.join(REPO, name), encoding="utf-8") as f:
    return f.read()


def _cmd(model_dir: str) -> list[str]:
  """The image's CMD (the default job) with another model_dir."""
  cmd = json.loads(re.search(r"^CMD (.*)$", _read("Dockerfile"), re.M).group(1))
  return [a.replace("/runs/default", model_dir) for a in cmd]


def _podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
  result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
  if check:
    assert result.returncode == 0, f"podman {' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
  return result


def _run_flags() -> list[str]:
  """`podman run` options for a container that reaches nothing and runs on hosts like these CI machines: runc, as
  Debian's crun refuses their hybrid cgroups, and cgroupfs, as there is no systemd; the host's own open-files limit
  and a modest process limit, as podman's defaults for root (2^20 files, 2^22 processes) exceed what the host allows
  and runc then cannot start the container."""
  _, files = resource.getrlimit(resource.RLIMIT_NOFILE)
  files = min(files, 1 << 20) if files != resource.RLIM_INFINITY else 1 << 20
  return ["--runtime=runc", "--cgroup-manager=cgroupfs", "--network=none", f"--ulimit=nofile={files}:{files}",
          "--ulimit=nproc=4096:4096"]


def _unavailable() -> str | None:
  """Why podman cannot build and run the image here, or None."""
  for tool in ("podman", "runc"):
    if not shutil.which(tool):
      return f"{tool} is not installed (apt-get install podman runc debootstrap)"
  if os.geteuid() != 0:
    return "needs root: the build runs as root podman, and the stand-in base needs debootstrap"
  try:
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=120)
  except subprocess.SubprocessError as e:
    return f"podman info failed: {e!r}"
  if info.returncode != 0:
    return f"podman info failed: {info.stderr[-500:]}"
  base = "docker.io/library/" + re.search(r"^FROM (\S+)", _read("Dockerfile"), re.M).group(1)
  has_base = subprocess.run(["podman", "image", "exists", base], capture_output=True).returncode == 0
  if not has_base and not shutil.which("debootstrap", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"):
    return f"{base} is not in podman's store, and debootstrap (to make a stand-in for it) is not installed"
  return None


@pytest.fixture(scope="module")
def image():
  reason = _unavailable()
  if reason and os.environ.get("TRAINER_REQUIRE_PODMAN") == "1":
    pytest.fail(f"TRAINER_REQUIRE_PODMAN=1 but {reason}")
  if reason:
    pytest.skip(reason)
  base = subprocess.run(["bash", BASE_SCRIPT], capture_output=True, text=True, timeout=900)
  assert base.returncode == 0, base.stdout + base.stderr[-3000:]
  pinned = re.search(r"^tensorflow==(\S+)$", _read("requirements.txt"), re.M).group(1)
  before = _podman("image", "inspect", "--format={{.Id}}", IMAGE, check=False).stdout.strip()
  start = time.monotonic()
  # chroot isolation and the host's network: the RUN steps need no OCI runtime, and no network namespace or bridge
  # (with its firewall rules on the host) just to reach PyPI.
  _podman("build", "--isolation=chroot", "--network=host", f"--build-arg=TENSORFLOW_REQUIREMENT=tensorflow=={pinned}",
          "-t", IMAGE, REPO, timeout=1800)
  print(f"built {IMAGE} in {time.monotonic() - start:.0f}s")
  if before and before != _podman("image", "inspect", "--format={{.Id}}", IMAGE).stdout.strip():
    _podman("rmi", before, check=False)  # the previous build's, untagged now: only the layers it alone had go
  return IMAGE


@pytest.fixture(scope="module")
def volume(image):
  """A named volume for /runs, as WORKSPACE.md runs the image: it starts as a copy of the image's /runs, owned by the
  image's user. Yields (name, its directory on this host)."""
  name = f"trainer-test-{uuid.uuid4().hex[:8]}"
  _podman("volume", "create", name)
  try:
    yield name, _podman("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout.strip()
  finally:
    _podman("volume", "rm", "--force", name, check=False)


@pytest.fixture(scope="module")
def default_run(image, volume):
  """The image's CMD, shortened by gin bindings, run to the end into the volume: (its result, the host model_dir)."""
  name, host_dir = volume
  result = _podman("run", "--rm", *_run_flags(), "-v", f"{name}:/runs", image, *_cmd("/runs/default"), *BINDINGS,
                   check=False)
  return result, os.path.join(host_dir, "default")


def _image_user(image: str) -> int:
  return int(_podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip())


def _logs(container: str) -> str:
  logs = _podman("logs", container)
  return logs.stdout + logs.stderr


def _owners(top: str) -> set[int]:
  return {os.stat(os.path.join(d, f)).st_uid for d, _, files in os.walk(top) for f in files}


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_the_default_job_runs_offline_as_the_image_user_into_a_named_volume(image, default_run):
  result, model_dir = default_run
  assert result.returncode == 0, result.stderr[-3000:]
  assert checkpoint_state(model_dir)[UPDATE] == STEPS
  assert sorted(os.listdir(os.path.join(model_dir, "samples"))) == ["eval_samples_000500.png",
                                                                     "eval_samples_001000.png"]
  with open(os.path.join(model_dir, "samples", "eval_samples_001000.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    assert any(json.loads(line).get("eval/real_accuracy", 0) > 0.9 for line in f)  # the shipped classifier loaded
  user = _image_user(image)
  assert user > 0 and _owners(model_dir) == {user}  # not root
  # Everything the build left in the user's HOME and /runs is the user's (a root-owned cache there would be unwritable).
  others = _podman("run", "--rm", *_run_flags(), "--entrypoint=find", image, "/home/trainer", "/runs", "!", "-user",
                   str(user))
  assert others.stdout == ""


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_a_stopped_container_saves_and_exits_42_and_a_second_one_resumes_to_the_uninterrupted_weights(
    image, volume, default_run):
  name, host_dir = volume
  args = [*_run_flags(), "-v", f"{name}:/runs", image, *_cmd("/runs/preempted"), *BINDINGS]
  container = f"trainer-test-{uuid.uuid4().hex[:8]}"
  _podman("run", "--detach", f"--name={container}", *args)
  try:
    deadline = time.monotonic() + 300
    while True:  # until the first log line: training has begun
      logs = _logs(container)
      running = _podman("inspect", "--format={{.State.Running}}", container).stdout.strip() == "true"
      if re.search(rf"update \d+/{STEPS} ", logs) or not running or time.monotonic() > deadline:
        break
      time.sleep(0.5)
    assert re.search(rf"update \d+/{STEPS} ", logs), logs[-3000:]
    start = time.monotonic()
    # As `docker stop -t 120` in WORKSPACE.md: SIGTERM to python (PID 1), SIGKILL (exit 137) only after 120 s.
    _podman("stop", "--time=120", container, timeout=200)
    stopped = time.monotonic() - start
    code = int(_podman("wait", container).stdout.strip())
    logs = _logs(container)
  finally:
    _podman("rm", "--force", container, check=False)
  assert code == 42, logs[-3000:]
  saved = re.search(r"preempted: SIGTERM received; saved update (\d+) of (\d+) in (\S+); run the same command", logs)
  assert saved, logs[-3000:]
  update = int(saved.group(1))
  assert 0 < update < STEPS and int(saved.group(2)) == STEPS and saved.group(3).startswith("/runs/preempted/")
  model_dir = os.path.join(host_dir, "preempted")
  assert checkpoint_state(model_dir)[UPDATE] == update  # the checkpoint it reported is the latest on the volume
  resumed = _podman("run", "--rm", *args, check=False)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"from update {update} of {STEPS}" in resumed.stdout + resumed.stderr
  diff = max_diff(checkpoint_state(default_run[1]), checkpoint_state(model_dir))
  print(f"stopped at update {update} of {STEPS} in {stopped:.1f}s; max |w(uninterrupted) - w(resumed)| = {diff:.3g}")
  assert diff == 0, diff  # deterministic on the CPU: every tensor, optimizer slots and counters included


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_an_arbitrary_uid_runs_the_job_on_a_host_directory(image, tmp_path):
  """As with `--user "$(id -u):$(id -g)" -v "$PWD/runs:/runs"`: a uid the image does not know, whose HOME (the image's)
  it cannot write."""
  runs = tmp_path / "runs"
  runs.mkdir()
  os.chown(runs, ARBITRARY_UID, ARBITRARY_UID)
  bindings = ["--gin_bindings=TRAIN_STEPS=20", "--gin_bindings=train.log_every=10",
              "--gin_bindings=train.eval_every=20"]
  result = _podman("run", "--rm", *_run_flags(), f"--user={ARBITRARY_UID}:{ARBITRARY_UID}", "-v", f"{runs}:/runs",
                   image, *_cmd("/runs/job"), *bindings, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert checkpoint_state(runs / "job")[UPDATE] == 20
  assert os.listdir(runs / "job" / "samples") == ["eval_samples_000020.png"]
  assert _owners(str(runs)) == {ARBITRARY_UID}


def test_the_stand_in_base_script_passes_shellcheck():
  shellcheck = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or shutil.which("shellcheck")
  if not shellcheck:
    pytest.skip("shellcheck is not installed; pip install -r requirements-dev.txt installs it")
  result = subprocess.run([shellcheck, "--color=never", BASE_SCRIPT], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout
