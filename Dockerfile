# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target operator -t llmtrain-operator .   (kopf operator; slim Python, operator deps only)
#   docker build --target trainer  -t llmtrain-trainer  .   (torchrun trainer; PyTorch CUDA runtime base)
# Both run as a numeric non-root user so the "restricted" Pod Security profile admits them.
# Base images are pinned; bump them deliberately. For a CPU-only trainer (kind, laptops) build with
#   --build-arg TRAINER_BASE=python:3.11.13-slim-bookworm --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ARG OPERATOR_BASE=python:3.11.13-slim-bookworm
ARG TRAINER_BASE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

# ---------------------------------------------------------------- operator
FROM ${OPERATOR_BASE} AS operator-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY contract/pyproject.toml contract/pyproject.toml
COPY contract/llmtrain_contract contract/llmtrain_contract
COPY operator/pyproject.toml operator/pyproject.toml
COPY operator/llmtrain_operator operator/llmtrain_operator
# A venv keeps the runtime stage a plain copy: no compiler, no pip cache, no sources.
RUN python -m venv /opt/llmtrain \
 && /opt/llmtrain/bin/pip install ./contract ./operator

FROM ${OPERATOR_BASE} AS operator
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="llmtrain-operator" \
      org.opencontainers.image.description="Kubernetes operator (kopf) that runs LLMTrainingJob resources as torchrun gangs" \
      org.opencontainers.image.source="https://github.com/llmtrain/llmtrain" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=operator-build /opt/llmtrain /opt/llmtrain
ENV PATH=/opt/llmtrain/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# 65532 is the conventional "nonroot" id; numeric so the kubelet can verify runAsNonRoot.
USER 65532:65532
EXPOSE 8080 8081
CMD ["llmtrain-operator"]

# ---------------------------------------------------------------- trainer
FROM ${TRAINER_BASE} AS trainer-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY contract/pyproject.toml contract/pyproject.toml
COPY contract/llmtrain_contract contract/llmtrain_contract
COPY trainer_image/pyproject.toml trainer_image/pyproject.toml
COPY trainer_image/llmtrain_trainer trainer_image/llmtrain_trainer
RUN python -m pip wheel --no-deps --wheel-dir /wheels ./contract ./trainer_image

FROM ${TRAINER_BASE} AS trainer
ARG VERSION=0.1.0
ARG REVISION=unknown
# Empty: keep the base image's torch (CUDA build). Set to a CPU wheel index for CPU-only bases.
ARG TORCH_INDEX_URL=""
LABEL org.opencontainers.image.title="llmtrain-trainer" \
      org.opencontainers.image.description="torchrun LLM pre-training: DDP, FSDP2, tensor parallel, Prometheus metrics" \
      org.opencontainers.image.source="https://github.com/llmtrain/llmtrain" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=trainer-build /wheels /tmp/wheels
# torch comes from the base image when it already satisfies the requirement, so pip adds only the small deps.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      python -m pip install --index-url "$TORCH_INDEX_URL" torch; \
    fi \
 && python -m pip install /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && groupadd --gid 1000 llmtrain \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/llmtrain --shell /usr/sbin/nologin llmtrain
ENV PYTHONUNBUFFERED=1 \
    HOME=/home/llmtrain
WORKDIR /home/llmtrain
USER 1000:1000
EXPOSE 9090 29400
# No entrypoint: the operator gives each pod its torchrun command.
ENTRYPOINT []
CMD ["python", "-c", "import llmtrain_trainer; print('llmtrain-trainer: run me with torchrun -m llmtrain_trainer')"]
