#!/usr/bin/env bash
# One-time set-up (idempotent): a virtualenv in .venv with ASTRA, the embedded model,
# the test tools, the BFCL data (no-deps) and the npm MCP servers/Inspector for tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The tool sandbox runs model-written code under bubblewrap with seccomp filters (libseccomp).
if ! command -v bwrap >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libseccomp.so.2; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2 >/dev/null
  else
    echo "setup: install bubblewrap and libseccomp2 (the tool sandbox needs them)" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# llama-cpp-python builds from source (~11 min on 2 cores the first time; pip caches the wheel).
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} .venv/bin/python -m pip install -q -e ".[local,test,bfcl,ray]"
# SFT template conformance: transformers' chat-template renderer (no torch), gguf for the SmolLM2 GGUF's template
# and tokenizer; TRL and LLaMA-Factory --no-deps (their torch-free modules check the exports).
.venv/bin/python -m pip install -q -e ".[sft]"
.venv/bin/python -m pip install -q --no-deps "trl==1.16.0" "llamafactory==0.9.5"
# The lint and type check scripts/test.sh runs first (pinned: a new release's rules must not break CI);
# pyright's [nodejs] extra brings Node.js as a wheel, so no system node is needed.
.venv/bin/python -m pip install -q "ruff==0.17.6" "pyright[nodejs]==1.1.414"
# The real chat templates (Qwen2.5, Qwen3, Hermes-3, Llama-3.1, Mistral-Nemo, ...) that llama.cpp keeps in
# models/templates/: from the sdist of the installed llama-cpp-python, templates directory only.
LCP_VERSION=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
if [ ! -f .ci/chat_templates/.version ] || [ "$(cat .ci/chat_templates/.version)" != "$LCP_VERSION" ]; then
  mkdir -p .ci/cache .ci/chat_templates
  [ -f ".ci/cache/llama_cpp_python-$LCP_VERSION.tar.gz" ] || .venv/bin/python -m pip download -q --no-deps \
     --no-binary :all: "llama-cpp-python==$LCP_VERSION" -d .ci/cache
  tar -xzf ".ci/cache/llama_cpp_python-$LCP_VERSION.tar.gz" -C .ci/chat_templates --strip-components=5 \
     --wildcards "*/vendor/llama.cpp/models/templates/*.jinja"
  echo "$LCP_VERSION" > .ci/chat_templates/.version
fi
# bfcl-eval's declared dependencies pull a CUDA torch: install it alone.
.venv/bin/python -m pip install -q --no-deps "bfcl-eval==2026.3.23"
# Trainers' own code checks the adapters (tests/trainers): TRL (installed above) for its chat templates and
# environment_factory introspection; transformers comes with the test extra.
# verl 0.9.x (its tool base class, tool registry and tool parsers run in tests/trainers without torch):
# --no-deps keeps its CUDA torch / vllm dependency set out; omegaconf reads its tool-config YAML.
.venv/bin/python -m pip install -q --no-deps "verl==0.9.1"
.venv/bin/python -m pip install -q "omegaconf>=2.3,<3"
# OpenEnv's Environment base class and types (its full set pulls fastmcp, which pins another mcp).
.venv/bin/python -m pip install -q --no-deps "openenv-core==0.3.0"
# Prime Intellect verifiers 0.4 pins mcp==2.0.0, so it gets its own venv (.venv-verifiers; no torch): astra goes in
# --no-deps (+ networkx) for the generated taskset packages, uv (PyPI) for verifiers' harness, which runs its chat
# program as a PEP 723 script with `uv sync --script`; that script's dependencies are kept as wheels in
# .ci/cache/vf-wheels so tests/trainers/test_verifiers.py resolves them offline. Skipped when the stamp matches.
VF_STAMP="verifiers==0.4.0 uv==0.13.9 networkx>=3.2"
if [ ! -f .venv-verifiers/.astra-stamp ] || [ "$(cat .venv-verifiers/.astra-stamp)" != "$VF_STAMP" ] \
   || [ ! -d .ci/cache/vf-wheels ]; then
  [ -x .venv-verifiers/bin/python ] || "$PY" -m venv .venv-verifiers
  .venv-verifiers/bin/python -m pip install -q --upgrade pip
  .venv-verifiers/bin/python -m pip install -q "verifiers==0.4.0" "uv==0.13.9" "networkx>=3.2"
  .venv-verifiers/bin/python -m pip install -q --no-deps -e .
  VF_CHAT_DEPS=$(.venv-verifiers/bin/python -c "import re; from verifiers.v1.harnesses.utils.launch import CHAT_PROGRAM as p
print(' '.join(re.findall(r'\"([^\"]+)\"', p.split('dependencies = ', 1)[1].splitlines()[0])))")
  # shellcheck disable=SC2086 # one word per requirement
  .venv-verifiers/bin/python -m pip download -q -d .ci/cache/vf-wheels $VF_CHAT_DEPS
  echo "$VF_STAMP" > .venv-verifiers/.astra-stamp
fi
if command -v npm >/dev/null 2>&1; then
  # The npm MCP servers and the Inspector, from a committed lock file: the same release of
  # server-everything lists other schemas depending on how npm hoists its zod copies, and the
  # tool-graph fixtures were captured from this exact tree.
  mkdir -p .ci/node
  if ! cmp -s .ci/node-lock/package-lock.json .ci/node/package-lock.json || [ ! -d .ci/node/node_modules ]; then
    cp .ci/node-lock/package.json .ci/node-lock/package-lock.json .ci/node/
    (cd .ci/node && npm ci --no-audit --no-fund --silent >/dev/null)
  fi
fi
