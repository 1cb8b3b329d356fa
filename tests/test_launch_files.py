"""The container and cluster launch files (Dockerfile, .dockerignore, launch/slurm.sbatch, launch/k8s/*.yaml), checked
without a Docker engine or a cluster: hadolint, shellcheck, the Kubernetes API schemas, parsing, and running their
shell with stand-ins for `srun`, `scontrol` and `python`."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import kubernetes_validate
import pytest
import yaml

from tests.processes import REPO, checkpoint_state
from trainer.strategy import cluster_tasks

DEFAULT_CONFIG = "configs/gan_digits.gin"  # the README's default job: the image's CMD and every launcher's default
OLDEST_KUBERNETES = "1.31.0"  # the first release with podFailurePolicy GA; the manifests must validate from there on
SBATCH = os.path.join(REPO, "launch", "slurm.sbatch")


def _read(*path: str) -> str:
  with open(os.path.join(REPO, *path), encoding="utf-8") as f:
    return f.read()


def _tool(name: str) -> str:
  """The path of a linter installed by requirements-dev.txt (next to this Python, or on PATH); skips without it."""
  path = os.path.join(os.path.dirname(sys.executable), name)
  path = path if os.path.exists(path) else shutil.which(name)
  try:
    subprocess.run([path, "--version"], capture_output=True, check=True, timeout=60)
  except (TypeError, OSError, subprocess.SubprocessError) as e:
    pytest.skip(f"{name} cannot run here ({e!r}); pip install -r requirements-dev.txt installs it")
  return path


def _dockerfile() -> list[tuple[str, str]]:
  """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
  text = "\n".join(l for l in _read("Dockerfile").splitlines() if not l.lstrip().startswith("#"))
  text = re.sub(r"\\\n", " ", text)
  return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1].strip()) for l in text.splitlines() if l.strip()]


def _image_user() -> int:
  return int([a for k, a in _dockerfile() if k == "USER"][-1])


def _image() -> str:
  """The image name WORKSPACE.md builds (`docker build -t NAME .`), which the manifests must run."""
  return re.search(r"docker build -t (\S+) \.", _read("WORKSPACE.md")).group(1)


def test_dockerfile_passes_hadolint_at_warning_level():
  hadolint = _tool("hadolint")
  result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", "Dockerfile"], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
  # The threshold does fail on a warning: an unpinned base and pip install.
  bad = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", "-"], capture_output=True, text=True,
                       input="FROM python:latest\nRUN pip install --no-cache-dir numpy\n")
  assert bad.returncode == 1 and "DL3007" in bad.stdout and "DL3013" in bad.stdout


def test_dockerfile_has_the_properties_the_image_relies_on():
  steps = _dockerfile()
  kinds, args = [k for k, _ in steps], dict(steps)
  # Base pinned to a patch release (a digest may follow), never a moving tag like 3.11-slim or latest.
  assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", args["FROM"]), args["FROM"]
  copies = [(i, a.split()[0]) for i, (k, a) in enumerate(steps) if k == "COPY"]
  install = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install" in a)
  assert copies[0][1] == "requirements.txt" and copies[0][0] < install < copies[1][0]  # the pip layer stays cached
  assert all(source != "requirements.txt" for _, source in copies[1:])
  assert "--no-cache-dir -r requirements.txt" in steps[install][1]
  pinned = re.search(r"^tensorflow==(\S+)$", _read("requirements.txt"), re.M).group(1)
  # The same TensorFlow, by default with its CUDA wheels: a build argument (CI builds the CPU variant) the install takes.
  assert re.findall(r'^TENSORFLOW_REQUIREMENT="tensorflow\[and-cuda\]==([^"]+)"$', args["ARG"]) == [pinned]
  assert '"${TENSORFLOW_REQUIREMENT}"' in steps[install][1] and kinds.index("ARG") < install
  for _, source in copies:
    assert os.path.exists(os.path.join(REPO, source)), f"COPY {source}: no such file in the repository"
  assert _image_user() > 0 and kinds.index("USER") > install  # numeric, not root, after the installs
  assert re.search(r"\bPYTHONUNBUFFERED=1\b", args["ENV"]) and re.search(r"\bPIP_NO_CACHE_DIR=1\b", args["ENV"])
  assert json.loads(args["ENTRYPOINT"]) == ["python", "-m", "trainer.main"]  # exec form: python gets SIGTERM
  cmd = json.loads(args["CMD"])
  assert cmd == [f"--gin_file={DEFAULT_CONFIG}", "--model_dir=/runs/default"]
  assert os.path.exists(os.path.join(REPO, DEFAULT_CONFIG))
  assert json.loads(args["VOLUME"]) == ["/runs"]


def test_dockerignore_keeps_environments_and_results_out_but_not_what_the_image_copies():
  ignored = {l.strip() for l in _read(".dockerignore").splitlines() if l.strip() and not l.startswith("#")}
  assert {".git", ".venv", "runs", "**/__pycache__", ".pytest_cache"} <= ignored
  sources = {a.split()[0].rstrip("/") for k, a in _dockerfile() if k == "COPY"}
  assert not sources & {p.rstrip("/") for p in ignored}


@pytest.mark.slow
def test_the_files_the_image_copies_run_its_default_command_offline(tmp_path):
  """The image's /app, made here from its COPY lines, runs its CMD (two updates) with every proxy pointing nowhere
  and HOME unwritable."""
  app = tmp_path / "app"  # the WORKDIR
  app.mkdir()
  for k, a in _dockerfile():
    if k == "COPY":
      source, target = a.split()
      (shutil.copytree if source.endswith("/") else shutil.copy)(os.path.join(REPO, source), app / target)
  cmd = [a.replace("/runs/", f"{tmp_path}/runs/") for a in json.loads(dict(_dockerfile())["CMD"])]
  dead = "http://127.0.0.1:9"  # a download would fail here instead of reaching the network
  (tmp_path / "file").write_text("")
  # An unwritable HOME, even for root (below a file), as for `docker run --user <any uid>`: HOME is the image's.
  home = str(tmp_path / "file" / "home")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and k != "TF_CONFIG" and not k.startswith("SLURM")}
  env.update(HOME=home, http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead)
  # The build step that prepares the data into the image's TFDS_DATA_DIR, run here against a temporary one.
  tfds_dir = str(tmp_path / "tensorflow_datasets")
  env["TFDS_DATA_DIR"] = tfds_dir
  prepare = next(a for k, a in _dockerfile() if k == "RUN" and "datasets.load('digits'" in a)
  prepare = prepare.replace("/opt/tensorflow_datasets", tfds_dir).replace("python ", f"{sys.executable} ", 1)
  built = subprocess.run(["sh", "-c", prepare], cwd=app, env=env, capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stderr[-3000:]
  result = subprocess.run([sys.executable, "-m", "trainer.main", *cmd, "--gin_bindings=TRAIN_STEPS=2"], cwd=app,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert checkpoint_state(tmp_path / "runs" / "default")["update/.ATTRIBUTES/VARIABLE_VALUE"] == 2


def _sbatch_options() -> list[tuple[str, str]]:
  return re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?$", _read("launch", "slurm.sbatch"), re.M)


def test_slurm_script_is_valid_bash_with_consistent_options():
  assert subprocess.run(["bash", "-n", SBATCH]).returncode == 0
  lines = _read("launch", "slurm.sbatch").splitlines()
  first_command = next(i for i, l in enumerate(lines) if l.strip() and not l.startswith("#"))
  # sbatch reads #SBATCH lines only before the first command; every one of them must be well-formed.
  assert [l for l in lines[first_command:] if l.startswith("#SBATCH")] == []
  assert len([l for l in lines if l.startswith("#SBATCH")]) == len(_sbatch_options())
  options = dict(_sbatch_options())
  assert len(options) == len(_sbatch_options())  # no option given twice
  assert int(options["nodes"]) >= 2 and "ntasks" not in options  # the task count follows from nodes x per node
  if "gpus-per-task" in options:  # one task per GPU
    assert int(options["ntasks-per-node"]) >= 1 and "gpus-per-node" not in options
  else:  # one task per node, mirroring over the node's GPUs (the shipped choice)
    assert options["ntasks-per-node"] == "1" and int(options["gpus-per-node"]) >= 1
  hours, minutes, seconds = map(int, options["time"].split(":"))
  # SIGUSR1 to the script before the limit: srun passes it on to the tasks (a SIGTERM would make srun kill them).
  lead = int(re.fullmatch(r"B:USR1@(\d+)", options["signal"]).group(1))
  assert 0 < lead < hours * 3600 + minutes * 60 + seconds
  assert "requeue" in options  # the script requeues itself after a preemption (exit 42)
  assert re.search(r"^GIN_FILE=\$\{1:-" + re.escape(DEFAULT_CONFIG) + r"\}$", "\n".join(lines), re.M)


def test_launch_shell_passes_shellcheck():
  shellcheck = _tool("shellcheck")
  result = subprocess.run([shellcheck, "--color=never", SBATCH], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout
  snippet = _indexed_job()["Job"]["spec"]["template"]["spec"]["containers"][0]["command"][2]
  result = subprocess.run([shellcheck, "--color=never", "--shell=sh", "-"], input=snippet, capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stdout


def _fake(path, text: str) -> None:
  path.write_text("#!/bin/bash\n" + text)
  path.chmod(0o755)


def _run_sbatch(tmp_path, codes: list[str], *args: str, send: signal.Signals | None = None,
                job_state: str = "RUNNING"):
  """Runs the script as sbatch would, with an `srun` that records its call and exits with the next of `codes`
  ('save': waits for SIGUSR1, then exits 42 as trainer does; exits 1 after ~20 s without), and an `scontrol` that
  records its calls and reports the job in `job_state`. `send` is sent to the script once that srun runs.
  Returns the script's exit code, srun's calls, srun's environment and scontrol's requeue calls."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(parents=True)
  (tmp_path / "codes").write_text("\n".join(codes) + "\n")
  _fake(bin_dir / "srun", f"""cd {tmp_path}
echo "$*" >> srun.calls
env > srun.env
code=$(sed -n "$(wc -l < srun.calls)p" codes)
if [ "$code" = save ]; then trap 'exit 42' USR1; touch started; for _ in $(seq 1000); do sleep 0.02; done; exit 1; fi
exit "$code"
""")
  _fake(bin_dir / "scontrol", f'echo "$*" >> {tmp_path}/scontrol.calls\n'
                              f'if [ "$1" = show ]; then echo "JobId=12345 JobState={job_state} Reason=None"; fi\n')
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "12345", "SLURM_JOB_NAME": "trainer",
         "SLURM_CPUS_PER_TASK": "8", "https_proxy": "http://proxy:3128", "HTTP_PROXY": "http://proxy:3128"}
  script = subprocess.Popen(["bash", SBATCH, *args], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
  if send:
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
      time.sleep(0.02)
    script.send_signal(send)
  script.communicate(timeout=60)
  calls = (tmp_path / "srun.calls").read_text().splitlines()
  srun_env = dict(l.split("=", 1) for l in (tmp_path / "srun.env").read_text().splitlines() if "=" in l)
  scontrol = (tmp_path / "scontrol.calls").read_text().splitlines() if (tmp_path / "scontrol.calls").exists() else []
  return script.returncode, calls, srun_env, [c for c in scontrol if c.startswith("requeue")]


def test_slurm_script_starts_the_trainer_with_srun_and_restarts_the_whole_step(tmp_path):
  code, calls, env, requeues = _run_sbatch(tmp_path / "done", ["0"])
  assert (code, requeues) == (0, [])
  assert calls == [f"--kill-on-bad-exit=0 --cpus-per-task=8 python -m trainer.main --strategy=auto "
                   f"--gin_file={DEFAULT_CONFIG} --model_dir=runs/slurm-trainer"]
  assert not {"https_proxy", "HTTP_PROXY"} & env.keys()  # gRPC would send worker traffic to the proxy
  assert env["TRAINER_SLURM_PORT_BASE"] == str(20000 + 12345 % 20000)
  # A lost worker (exit 4) restarts every task, up to MAX_RESTARTS (2) times; arguments reach trainer.main.
  code, calls, _, _ = _run_sbatch(tmp_path / "lost", ["4", "4", "0"], "configs/smoke.gin", "/shared/r", "--verbosity=1")
  assert code == 0 and len(calls) == 3
  assert calls[0].endswith("--gin_file=configs/smoke.gin --model_dir=/shared/r --verbosity=1")
  code, calls, _, _ = _run_sbatch(tmp_path / "gives_up", ["4", "4", "4", "0"])
  assert (code, len(calls)) == (4, 3)
  code, calls, _, requeues = _run_sbatch(tmp_path / "bad_input", ["2", "0"])  # would fail the same way again
  assert (code, len(calls), requeues) == (2, 1, [])


def test_slurm_script_passes_the_time_limit_signal_to_the_step_and_requeues_after_a_saved_preemption(tmp_path):
  # SIGUSR1 (--signal=B:USR1@N), or a SIGTERM to the script alone: srun gets SIGUSR1, the workers save (42).
  for sent in (signal.SIGUSR1, signal.SIGTERM):
    code, calls, _, requeues = _run_sbatch(tmp_path / sent.name, ["save", "0"], send=sent)
    assert (code, len(calls), requeues) == (42, 1, ["requeue 12345"]), sent
  # scancel (Slurm reports the job COMPLETING): the workers save, but a requeue would bring a cancelled job back.
  code, calls, _, requeues = _run_sbatch(tmp_path / "cancelled", ["save", "0"], send=signal.SIGTERM,
                                         job_state="COMPLETING")
  assert (code, len(calls), requeues) == (42, 1, [])
  # Slurm's own preemption signals the tasks, not the script: they exit 42, and the job goes back to the queue.
  code, calls, _, requeues = _run_sbatch(tmp_path / "preempted", ["42", "0"])
  assert (code, len(calls), requeues) == (42, 1, ["requeue 12345"])


def _manifests(name: str) -> dict:
  """The documents of launch/k8s/<name>, by kind."""
  return {d["kind"]: d for d in yaml.safe_load_all(_read("launch", "k8s", name)) if d}


def _indexed_job() -> dict:
  return _manifests("indexed-job.yaml")


def _tfjob() -> dict:
  return _manifests("tfjob.yaml")["TFJob"]


def _flags(container: dict) -> dict[str, str]:
  return dict(a.lstrip("-").split("=", 1) for a in container["args"])


def _check_pod(pod: dict, container: dict, volume_claim: str) -> None:
  """What a trainer pod needs, in either manifest: the image, a GPU, its user, the shared volume, the default job."""
  assert container["image"] == _image()
  assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
  assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == _image_user()
  assert pod["terminationGracePeriodSeconds"] >= 30  # time to reach a loop boundary and save
  flags = _flags(container)
  assert flags["gin_file"] == DEFAULT_CONFIG
  mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
  claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
  assert any(flags["model_dir"].startswith(mounts[n] + "/") for n, c in claims.items() if c == volume_claim)
  assert not any(e["name"] == "TF_CONFIG" for e in container.get("env", []))


def test_manifests_validate_against_the_kubernetes_api_schemas():
  pvc = yaml.safe_load(_read("launch", "k8s", "pvc.yaml"))
  tfjob = _tfjob()
  # TFJob is a custom resource: its pod template is checked as a PodTemplate.
  template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
              "template": tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]}
  for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
    for doc in [*_indexed_job().values(), pvc, template, _manifests("tfjob.yaml")["NetworkPolicy"]]:
      kubernetes_validate.validate(doc, version, strict=True)  # strict: an unknown (misspelled) field is an error
  broken = {**pvc, "spec": {**pvc["spec"], "accessMode": ["ReadWriteMany"]}}
  with pytest.raises(kubernetes_validate.ValidationError):
    kubernetes_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


def test_indexed_job_pods_find_each_other_through_the_headless_service(tmp_path):
  docs = _indexed_job()
  service, job, pvc = docs["Service"], docs["Job"], yaml.safe_load(_read("launch", "k8s", "pvc.yaml"))
  spec, pod = job["spec"], job["spec"]["template"]["spec"]
  n = spec["completions"]
  assert spec["completionMode"] == "Indexed" and spec["parallelism"] == n >= 2
  assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
  assert pod["subdomain"] == service["metadata"]["name"]
  assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
  # Whole-job restarts: no in-place restart of a lone worker, and one fault costs N pod failures.
  assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] >= n
  rules = [(r["action"], tuple(r.get("onExitCodes", {}).get("values", ()))) for r in spec["podFailurePolicy"]["rules"]]
  assert rules[:2] == [("FailJob", (2, 3)), ("Ignore", (42,))]
  assert pvc["metadata"]["name"] == "trainer-runs" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
  container = pod["containers"][0]
  _check_pod(pod, container, pvc["metadata"]["name"])
  env = {e["name"]: e["value"] for e in container["env"]}
  assert int(env["NUM_WORKERS"]) == n and env["JOB_NAME"] == job["metadata"]["name"]
  assert env["SERVICE"] == service["metadata"]["name"]
  assert int(env["PORT"]) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
  # Run the container's command in sh (the image's dash) and bash, with a `python` that prints what it was given.
  _fake(tmp_path / "python", 'printf "%s\\n" "$TF_CONFIG" "$*"\n')
  shell, flag, script, name = container["command"]
  assert (shell, flag) == ("/bin/sh", "-c")
  hosts = [f"{job['metadata']['name']}-{i}.{service['metadata']['name']}:{env['PORT']}" for i in range(n)]
  for sh in ("/bin/sh", "bash"):
    for index in range(n):
      out = subprocess.run([sh, "-c", script, name, *container["args"]], capture_output=True, text=True, check=True,
                           env={**env, "JOB_COMPLETION_INDEX": str(index), "PATH": f"{tmp_path}:/usr/bin:/bin"})
      tf_config, argv = out.stdout.splitlines()
      assert cluster_tasks(tf_config) == n
      assert json.loads(tf_config) == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
      assert argv == "-m trainer.main " + " ".join(container["args"])


def test_tfjob_runs_the_image_entry_point_on_the_shared_volume():
  tfjob = _tfjob()
  assert tfjob["apiVersion"] == "kubeflow.org/v1" and tfjob["kind"] == "TFJob"
  assert set(tfjob["spec"]["tfReplicaSpecs"]) == {"Worker"}  # worker 0 is the chief, as in the Indexed Job
  worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
  assert worker["replicas"] >= 2 and worker["restartPolicy"] == "OnFailure"  # in place: the pod keeps its address
  assert tfjob["spec"]["runPolicy"]["backoffLimit"] >= worker["replicas"]
  pod = worker["template"]["spec"]
  container = pod["containers"][0]
  assert container["name"] == "tensorflow" and "command" not in container  # the image's ENTRYPOINT takes the args
  assert container["ports"] == [{"containerPort": 2222, "name": "tfjob-port"}]  # where the operator's TF_CONFIG points
  _check_pod(pod, container, "trainer-runs")
  indexed = _indexed_job()["Job"]["spec"]["template"]["spec"]["containers"][0]
  assert _flags(container)["model_dir"] != _flags(indexed)["model_dir"]  # the two jobs never share a model_dir


def _check_policy(policy: dict, pod_labels: dict) -> None:
  """`policy` applies to the pods labelled `pod_labels` and admits connections to them only from those pods."""
  spec = policy["spec"]
  selector = spec["podSelector"]["matchLabels"]
  assert selector and selector.items() <= pod_labels.items(), (selector, pod_labels)
  assert "Ingress" in spec["policyTypes"]  # with no rule matching, ingress is then denied
  for rule in spec["ingress"]:  # an empty rule, or one without `from`, would admit anyone
    assert rule["from"] and all(peer == {"podSelector": {"matchLabels": selector}} for peer in rule["from"]), rule


def test_network_policies_admit_the_workers_ports_only_from_the_jobs_own_pods():
  docs = _indexed_job()
  job_pods = docs["Job"]["spec"]["template"]["metadata"]["labels"]
  assert docs["Service"]["spec"]["selector"].items() <= job_pods.items()
  _check_policy(docs["NetworkPolicy"], job_pods)
  tfjob_pods = _tfjob()["spec"]["tfReplicaSpecs"]["Worker"]["template"]["metadata"]["labels"]
  _check_policy(_manifests("tfjob.yaml")["NetworkPolicy"], tfjob_pods)
  open_to_all = {**docs["NetworkPolicy"], "spec": {**docs["NetworkPolicy"]["spec"], "ingress": [{}]}}
  with pytest.raises((AssertionError, KeyError)):
    _check_policy(open_to_all, job_pods)
