# The trainer image: python -m trainer.main as the entry point, TensorFlow 2.21 with its CUDA libraries by default (GPU
# jobs; on a machine without a GPU it runs on the CPU). Build and run: see WORKSPACE.md ("Container").
# Pinned by tag (the newest 3.11 patch release, Debian 12). Not by digest as well: no registry is reachable where this
# file is written and tested, so a digest could not be checked; add @sha256:... from `docker buildx imagetools inspect
# python:3.11.14-slim-bookworm` where byte-for-byte reproducible builds matter.
FROM python:3.11.14-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/home/trainer \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TFDS_DATA_DIR=/opt/tensorflow_datasets
# ^ the NVIDIA runtime mounts libcuda only for the 'compute' capability, and older runtimes default to 'utility'
#   alone: TensorFlow would then find no GPU and silently train on the CPU. (NVIDIA_VISIBLE_DEVICES stays unset:
#   docker run --gpus and the Kubernetes device plugin set it, so a pod without a GPU limit sees no GPU.)

WORKDIR /app

# Dependencies before the source, so that editing the code does not reinstall them. requirements.txt pins
# tensorflow==2.21.0; the [and-cuda] extra of that same version adds the CUDA/cuDNN/NCCL wheels, in the version ranges
# TensorFlow declares (like the rest of the dependency tree, they are not locked). For an image without them (CPU
# only, as CI builds it: see WORKSPACE.md), --build-arg TENSORFLOW_REQUIREMENT=tensorflow==2.21.0.
ARG TENSORFLOW_REQUIREMENT="tensorflow[and-cuda]==2.21.0"
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt "${TENSORFLOW_REQUIREMENT}"

# A numeric non-root user (Kubernetes' runAsNonRoot can only verify a numeric one). Model dirs go under /runs: a named
# volume starts as a copy of it, owned by this user; a bind mount keeps the host's owner (see WORKSPACE.md).
RUN useradd --uid 10001 --create-home --home-dir /home/trainer --shell /usr/sbin/nologin trainer \
    && mkdir /runs && chown 10001:10001 /runs

# The digits dataset (from the scikit-learn wheel, no download) is prepared at build time into a directory every
# uid can read (TFDS_DATA_DIR above), so the default job runs offline whatever user the container runs as.
COPY trainer/ trainer/
RUN python -c "from trainer import datasets; datasets.load('digits', 'train'); datasets.load('digits', 'test')" \
    && chmod -R a+rX /opt/tensorflow_datasets
# That step ran as root with HOME set, so the caches it left there (matplotlib's, Keras's) are root's: give them to the
# user, who could not write to them otherwise.
RUN chown -R 10001:10001 /home/trainer
COPY launch/ launch/
COPY configs/ configs/

USER 10001
VOLUME ["/runs"]

# Exec form: python is PID 1 and gets SIGTERM itself (every worker saves and exits 42). Arguments replace CMD.
ENTRYPOINT ["python", "-m", "trainer.main"]
CMD ["--gin_file=configs/gan_digits.gin", "--model_dir=/runs/default"]
