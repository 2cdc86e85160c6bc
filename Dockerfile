# syntax=docker/dockerfile:1
# Two images from one file (BuildKit):
#   docker build --target toolchain -t omama-toolchain .   # torch + train/export/bench
#   docker build --target runtime   -t omama-runtime .     # lean: no torch, `omama-run`
# `docker build .` without --target builds `runtime`, the deployable image (last stage).

# NGC TensorRT 25.10: TensorRT 10.13.3, CUDA 13.0, cuDNN 9, Ubuntu 24.04, Python 3.12.
# CUDA 13 matches both PyPI builds used below (torch 2.14.1 ships CUDA 13.0 libraries;
# onnxruntime-gpu 1.31.1 links libcudart.so.13, libcudnn.so.9 and, for its TensorRT
# provider, libnvinfer.so.10), and needs an NVIDIA driver R580 or newer on the host.
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3

FROM ${BASE_IMAGE} AS base
# The base image's Python is Ubuntu's (PEP 668 "externally managed"): this image is the
# environment, so pip installs into it. DONTWRITEBYTECODE keeps read-only runs quiet.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# TensorRT's Python bindings come from the base image, never from pip: fail the build here
# if a different base lacks them. /cache is world-writable (sticky) so that any --user can
# run; /artifacts and /data are the mount points for models and inputs/outputs. The user
# is numeric in USER below (10001) so that the host and Kubernetes can check it is not root.
RUN python3 -c "import tensorrt as trt; print('TensorRT', trt.__version__)" \
    && groupadd --gid 10001 omama \
    && useradd --no-log-init --uid 10001 --gid omama --create-home \
        --home-dir /home/omama --shell /bin/bash omama \
    && install -d -m 1777 /cache \
    && install -d -o omama -g omama /artifacts /data
WORKDIR /opt/omama

# ---------------------------------------------------------------------------------------
# toolchain: data preparation, training, export to ONNX/TensorRT, `omama bench`.
FROM base AS toolchain
# PyPI's Linux x86_64 torch wheels are CUDA 13.0 builds; the versions are the Makefile's.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG ORT_GPU_VERSION=1.31.1
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m pip install --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
# Dependencies before sources: with only pyproject.toml present the project builds as an
# empty package, so this layer is rebuilt only when the dependencies change.
COPY pyproject.toml README.md ./
# Two swaps after resolving `.[all]`, both because two wheels own the same import package
# and whichever is unpacked last wins:
# - onnxruntime (CPU, the base dependency) -> onnxruntime-gpu, so bench runs the CUDA and
#   TensorRT execution providers;
# - opencv-python (pulled in by ultralytics, needs libGL) -> opencv-python-headless.
# Uninstalling a wheel deletes the files it shares with its twin, hence the reinstall.
# `pip check` then reports these two requirements as unmet: expected, the modules are there.
# DL3013: `.[all]` is this project; its dependencies' versions are pyproject.toml's.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m pip install ".[all]" \
    && python3 -m pip uninstall -y onnxruntime opencv-python \
    && python3 -m pip install --no-deps --force-reinstall \
        "onnxruntime-gpu==${ORT_GPU_VERSION}" "opencv-python-headless>=4.8" \
    && python3 -c "import cv2, onnxruntime as o; assert 'CUDAExecutionProvider' in \
        o.get_available_providers(), 'onnxruntime-gpu did not win over onnxruntime'"
COPY runtime ./runtime
COPY omama_train ./omama_train
COPY export ./export
COPY benchmarks ./benchmarks
COPY scripts ./scripts
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m pip install --no-deps --force-reinstall . \
    && omama --help > /dev/null
# Caches that ONNX Runtime, ultralytics, matplotlib, torch hub and Hugging Face write to.
ENV XDG_CACHE_HOME=/cache \
    YOLO_CONFIG_DIR=/cache/ultralytics \
    MPLCONFIGDIR=/cache/matplotlib \
    TORCH_HOME=/cache/torch \
    HF_HOME=/cache/huggingface
USER 10001:10001
WORKDIR /data
VOLUME ["/artifacts"]
ENTRYPOINT ["omama"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------
# runtime: numpy + ONNX Runtime (CUDA/TensorRT providers) + TensorRT + PyAV + OpenCV.
FROM base AS runtime
ARG ORT_GPU_VERSION=1.31.1
# The project's base dependencies (pyproject.toml, same specifiers; a test keeps them in
# sync) with onnxruntime-gpu in place of onnxruntime: both provide the `onnxruntime`
# module, so pip must never see the CPU requirement. The project itself is installed
# with --no-deps below for that reason. polygraphy drives the TensorRT engines; the signing
# extra lets `omama-run --trust` check a signed artifacts folder shipped to this machine.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m pip install \
        "onnxruntime-gpu==${ORT_GPU_VERSION}" \
        "numpy>=1.24" \
        "typer>=0.12" \
        "tqdm>=4.66" \
        "pycocotools>=2.0.7" \
        "opencv-python-headless>=4.8" \
        "av>=12" \
        "filelock>=3.12" \
        "polygraphy>=0.49" \
        "model-signing>=1.1" \
        "pyopenssl>=24"
COPY pyproject.toml README.md ./
COPY runtime ./runtime
# Only runtime/ is in this stage, so the wheel holds only the runtime package; the
# `omama` script it declares needs omama_train and is removed. The final check fails the
# build if torch reached the image or the CUDA provider is missing.
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m pip install --no-deps . \
    && rm -f "$(command -v omama)" \
    && omama-run --help > /dev/null \
    && python3 -c "import importlib.util as u; assert u.find_spec('torch') is None, \
        'torch must not be in the runtime image'" \
    && python3 -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in \
        o.get_available_providers(), 'onnxruntime-gpu is not the active onnxruntime'"
# ONNX Runtime writes a device database under $XDG_CACHE_HOME; with --read-only, mount a
# tmpfs there (--tmpfs /cache).
ENV XDG_CACHE_HOME=/cache
USER 10001:10001
WORKDIR /data
VOLUME ["/artifacts"]
ENTRYPOINT ["omama-run"]
CMD ["--help"]
