# sam-serve image for every Ray pod of k8s/rayservice.yaml: head, GPU worker (encoder), CPU workers (decoders).
#
#   docker build -t registry.example.com/sam-serve:0.1.0-ray2.60.0 .
#   docker build --build-arg EXTRAS=gpu -t ...   # adds onnxruntime-gpu (decoders on GPU; not the default)
#
# The base's Ray and Python must be the ones the package is pinned to and tested with (Ray 2.60.0, Python 3.11):
# tests/test_k8s.py compares this FROM tag with the installed Ray and the venv's Python. The -gpu image carries
# CUDA; the same image runs on CPU-only nodes.
FROM rayproject/ray:2.60.0-py311-gpu

# Extras of the package to install, e.g. "gpu" (onnxruntime-gpu) or "" (none).
ARG EXTRAS=""
# torch/torchvision come from PyPI, whose Linux x86_64 wheels are CUDA builds (the CUDA runtime arrives as
# nvidia-* wheels; the node's NVIDIA driver must support that CUDA version). To pick another build, point this
# at a PyTorch wheel index, e.g. https://download.pytorch.org/whl/cpu for a smaller CPU-only image.
ARG TORCH_INDEX_URL=""

WORKDIR /home/ray/sam-serve

# torch first, in its own layer: the largest download, and it changes less often than the code.
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        torch==2.14.1 torchvision==0.29.1

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users sam_core ./sam_core
COPY --chown=ray:users deployments ./deployments
# The labelling page, and onnxruntime-web's three files from the build context's node_modules: run
# `npm ci --prefix web` (the bootstrap does) before `docker build`; the image then needs no Node.js.
COPY --chown=ray:users web/ui ./web/ui
COPY --chown=ray:users web/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs \
    web/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.mjs \
    web/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm \
    ./web/node_modules/onnxruntime-web/dist/
ENV SAM_UI_DIR=/home/ray/sam-serve/web

# ray[serve] pinned to the base's version so pip can never swap the Ray that rayVersion promises. With the gpu
# extra, onnxruntime and onnxruntime-gpu would share one module directory: only the GPU build is kept.
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" "ray[serve]==2.60.0" \
    && if [ -n "$EXTRAS" ] && echo ",$EXTRAS," | grep -q ",gpu,"; then \
        pip uninstall -y onnxruntime onnxruntime-gpu \
        && pip install --no-cache-dir "onnxruntime-gpu>=1.17"; \
    fi \
    && sam-serve --help > /dev/null

# KubeRay supplies the command (`ray start ...`); the base image's user `ray` (uid 1000) runs it.
