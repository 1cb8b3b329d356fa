"""The container and cluster launch files (Dockerfile, launch/slurm.sbatch, launch/k8s/*.yaml), checked without a
Docker engine or a cluster: hadolint, parsing, and running the shell that builds TF_CONFIG."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.processes import REPO
from trainer.strategy import cluster_tasks

DEFAULT_CONFIG = "configs/ring_gan.gin"  # the README's default job, which the image runs without arguments


def _dockerfile() -> list[tuple[str, str]]:
  """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
  text = open(os.path.join(REPO, "Dockerfile"), encoding="utf-8").read()
  text = re.sub(r"\\\n", " ", "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#")))
  return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1].strip()) for l in text.splitlines() if l.strip()]


def test_dockerfile_passes_hadolint_at_warning_level():
  hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
  if not os.path.exists(hadolint):
    pytest.skip("hadolint is not installed (pip install -r requirements-dev.txt)")
  result = subprocess.run([hadolint, "--failure-threshold", "warning", "Dockerfile"], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_the_properties_the_image_relies_on():
  steps = _dockerfile()
  kinds = [k for k, _ in steps]
  base = dict(steps)["FROM"]
  assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base  # pinned, no 'latest'
  copies = [a for k, a in steps if k == "COPY"]
  assert copies[0].split()[0] == "requirements.txt"  # dependencies first: source edits keep the pip layer cached
  install = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install" in a)
  assert kinds.index("COPY") < install < [i for i, k in enumerate(kinds) if k == "COPY"][1]
  assert '"tensorflow[and-cuda]==2.21.0"' in steps[install][1]
  assert "tensorflow==2.21.0" in open(os.path.join(REPO, "requirements.txt")).read()  # the same version
  for source in (c.split()[0] for c in copies):
    assert os.path.exists(os.path.join(REPO, source)), source
  user = [a for k, a in steps if k == "USER"]
  assert user and user[-1].isdigit() and int(user[-1]) > 0  # numeric and not root
  assert json.loads(dict(steps)["ENTRYPOINT"]) == ["python", "-m", "trainer.main"]  # exec form
  cmd = json.loads(dict(steps)["CMD"])
  assert f"--gin_file={DEFAULT_CONFIG}" in cmd and any(a.startswith("--model_dir=/runs/") for a in cmd)
  assert os.path.exists(os.path.join(REPO, DEFAULT_CONFIG))


def test_slurm_script_is_valid_bash_and_starts_one_trainer_per_task_with_srun():
  path = os.path.join(REPO, "launch", "slurm.sbatch")
  assert subprocess.run(["bash", "-n", path]).returncode == 0
  text = open(path).read()
  options = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M))
  assert options["ntasks-per-node"] == "1" and int(options["nodes"]) >= 2
  assert options["signal"].startswith("B:TERM@")  # SIGTERM before the time limit: the workers save and exit 42
  assert re.search(r"^srun .*python -m trainer\.main --strategy=auto", text, re.M)
  assert "unset http_proxy https_proxy" in text and "TRAINER_SLURM_PORT_BASE" in text
  assert re.search(r'"\$code" -eq 42 \]; then\s+scontrol requeue', text)


def _manifests(name):
  with open(os.path.join(REPO, "launch", "k8s", name)) as f:
    return {d["kind"]: d for d in yaml.safe_load_all(f) if d}


def test_indexed_job_pods_reach_each_other_through_the_headless_service(tmp_path):
  docs = _manifests("indexed-job.yaml")
  service, job = docs["Service"], docs["Job"]
  spec, pod = job["spec"], job["spec"]["template"]["spec"]
  assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
  assert pod["subdomain"] == service["metadata"]["name"]
  assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
  assert job["spec"]["template"]["metadata"]["labels"]["job-name"] == job["metadata"]["name"]
  assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
  assert {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2, 3]}} in \
      spec["podFailurePolicy"]["rules"]
  container = pod["containers"][0]
  env = {e["name"]: e["value"] for e in container["env"]}
  assert int(env["NUM_WORKERS"]) == spec["completions"] and env["JOB_NAME"] == job["metadata"]["name"]
  assert env["SERVICE"] == service["metadata"]["name"]
  assert int(env["PORT"]) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
  assert pod["securityContext"]["runAsUser"] == 10001
  claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
  assert docs["PersistentVolumeClaim"]["metadata"]["name"] == claim
  assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
  # Run the container's shell with a stand-in `python` that prints the TF_CONFIG it was given.
  fake = tmp_path / "python"
  fake.write_text('#!/bin/sh\nprintf "%s" "$TF_CONFIG"\n')
  fake.chmod(0o755)
  assert container["command"] == ["/bin/sh", "-c"]
  for index in range(spec["completions"]):
    out = subprocess.run(["/bin/sh", "-c", container["args"][0]], capture_output=True, text=True, check=True,
                         env={**env, "JOB_COMPLETION_INDEX": str(index), "PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert cluster_tasks(out.stdout) == spec["completions"]
    config = json.loads(out.stdout)
    assert config["task"] == {"type": "worker", "index": index}
    assert config["cluster"]["worker"] == [f"trainer-{i}.trainer:{env['PORT']}" for i in range(spec["completions"])]


def test_tfjob_runs_the_image_entry_point_with_the_shared_volume():
  tfjob = _manifests("tfjob.yaml")["TFJob"]
  assert tfjob["apiVersion"] == "kubeflow.org/v1"
  worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
  assert worker["replicas"] >= 2 and worker["restartPolicy"] == "OnFailure"
  container = worker["template"]["spec"]["containers"][0]
  assert container["name"] == "tensorflow"  # the operator's default container name
  assert "command" not in container  # the image's ENTRYPOINT: python -m trainer.main
  assert any(a.startswith("--gin_file=") for a in container["args"])
  assert os.path.exists(os.path.join(REPO, container["args"][0].split("=", 1)[1]))
  assert worker["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "trainer-runs"
