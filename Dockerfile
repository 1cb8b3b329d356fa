# The trainer image: python -m trainer.main as the entry point, TensorFlow 2.21 with its CUDA libraries (GPU jobs;
# on a machine without a GPU it runs on the CPU). Build and run: see WORKSPACE.md ("Container").
# Pinned by tag; pin by digest too (python:3.11.11-slim-bookworm@sha256:...) where the registry is reachable.
FROM python:3.11.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/home/trainer

WORKDIR /app

# Dependencies before the source, so that editing the code does not reinstall them. requirements.txt pins
# tensorflow==2.21.0; the [and-cuda] extra of that same version adds the pinned CUDA/cuDNN/NCCL wheels.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt "tensorflow[and-cuda]==2.21.0"

COPY trainer/ trainer/
COPY launch/ launch/
COPY configs/ configs/

# A numeric non-root user (Kubernetes runAsNonRoot can verify it); /runs is where model_dirs go (mount a volume).
RUN useradd --uid 10001 --create-home --home-dir /home/trainer --shell /usr/sbin/nologin trainer \
    && mkdir /runs && chown 10001:10001 /runs
USER 10001
VOLUME ["/runs"]

ENTRYPOINT ["python", "-m", "trainer.main"]
CMD ["--gin_file=configs/ring_gan.gin", "--model_dir=/runs/default"]
