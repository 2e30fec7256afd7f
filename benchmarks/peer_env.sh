#!/usr/bin/env bash
# Recreate a "peer" Python environment holding learn2learn 0.2.0 (default) or easyfsl 1.5.0
# (PEER_LIBRARY=easyfsl), used ONLY to run those libraries next to lit-meta in the benchmarks. Documentation + automation for
# benchmark sessions: the project's tests/CI never need it, and it never touches the
# project's own venv or dependencies.
#
# Usage:   bash benchmarks/peer_env.sh            # idempotent; re-running is cheap
#          PEER_VENV=/some/dir bash benchmarks/peer_env.sh
#          PEER_LIBRARY=easyfsl bash benchmarks/peer_env.sh   # the easyfsl env (side_by_side.py)
#
# Env vars (all optional):
#   PEER_LIBRARY      learn2learn (default) or easyfsl
#   PEER_VENV         target venv  (default /work/peer/venv; /work/peer/easyfsl-venv for easyfsl)
#   PEER_BUILD        scratch dir for sdist/build venv/wheel (default $(dirname PEER_VENV)/build)
#   PEER_BASE_PYTHON  interpreter the venvs are made from  (default python3; needs 3.11)
#   PEER_SKIP_APT=1   do not apt-get install libjemalloc2
#   PEER_REBUILD=1    wipe PEER_VENV and the cached wheel first
#
# Result:
#   $PEER_VENV/bin/python             the peer interpreter (torch 2.13.0+cpu, numpy, learn2learn 0.2.0)
#   $PEER_VENV/l2l-stubs/torchvision  minimal import-time stub (see below); put it on PYTHONPATH
#   $PEER_VENV/bin/python-l2l         wrapper = PYTHONPATH=$PEER_VENV/l2l-stubs exec $PEER_VENV/bin/python
#   (easyfsl: torch 2.13.0+cpu, numpy, easyfsl 1.5.0 --no-deps; the stub in $PEER_VENV/easyfsl-stubs,
#    the wrapper $PEER_VENV/bin/python-easyfsl)
#   /usr/lib/x86_64-linux-gnu/libjemalloc.so.2   (Debian libjemalloc2) for LD_PRELOAD runs
#
# Why the build is unusual:
#   * learn2learn 0.2.0's sdist ships Cython-0.29.24-generated .c files that do not compile
#     on CPython 3.11 (upstream issue learnables/learn2learn#413). We delete them (and the
#     sdist's stray .eggs/ with Cython 0.29.15), regenerate them with Cython 3 using the
#     directives from its setup.py (language_level=3, embedsignature=True), then build a
#     wheel with --no-build-isolation in a throwaway build venv.
#   * install_requires pulls torchvision, gym, qpth, gsutil, scipy, requests, tqdm. We install
#     the wheel with --no-deps and add only what `import learn2learn` needs:
#     requests, tqdm (learn2learn.data.utils), gym==0.26.2 (learn2learn.gym registers envs at
#     import), scipy (vision.models.cnn4 uses scipy.stats.truncnorm for its weight init),
#     pillow (vision.datasets / benchmarks import PIL at module level).
#   * The PyPI torchvision wheels do not load with the local CPU torch 2.13.0 build, and
#     learn2learn.vision imports torchvision at module level. So the peer env gets NO
#     torchvision; instead a stub package providing only the names learn2learn imports at
#     import time lives in $PEER_VENV/l2l-stubs (outside site-packages: it is visible only
#     when that dir is on PYTHONPATH, e.g. via bin/python-l2l). Every stub class/function
#     raises if actually used, so nothing can silently run on fake torchvision code.
#   * easyfsl 1.5.0 requires torchvision, matplotlib, pandas and tqdm, but `easyfsl.methods`
#     (all the benchmarks use) imports only torch and, through easyfsl.modules, the names
#     torchvision.models.resnet.{BasicBlock,Bottleneck,conv1x1,conv3x3} (in type hints and
#     the ResNet builders). It is installed with --no-deps and the same stub, which has those too.
set -euo pipefail

PEER_LIBRARY="${PEER_LIBRARY:-learn2learn}"
case "$PEER_LIBRARY" in
  learn2learn) SHORT=l2l; DEFAULT_VENV=/work/peer/venv ;;
  easyfsl) SHORT=easyfsl; DEFAULT_VENV=/work/peer/easyfsl-venv ;;
  *) echo "peer_env.sh: PEER_LIBRARY must be learn2learn or easyfsl, not $PEER_LIBRARY" >&2; exit 2 ;;
esac
PEER_VENV="${PEER_VENV:-$DEFAULT_VENV}"
PEER_BUILD="${PEER_BUILD:-$(dirname "$PEER_VENV")/build}"
PEER_BASE_PYTHON="${PEER_BASE_PYTHON:-python3}"
TORCH_SPEC="torch==2.13.0"       # must come first so pip never resolves a CUDA torch
NUMPY_SPEC="numpy==2.4.6"        # same numpy as the project venv at the time of writing
L2L_VERSION="0.2.0"
CYTHON_SPEC="cython>=3.0,<4"     # 3.3.1 used when this was written
RUNTIME_DEPS=(requests tqdm "gym==0.26.2" scipy pillow)
EASYFSL_SPEC="easyfsl==1.5.0"

# --- guard: never touch the project's own venv -------------------------------------------
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
mkdir -p "$(dirname "$PEER_VENV")"
peer_abs="$(cd "$(dirname "$PEER_VENV")" && pwd -P)/$(basename "$PEER_VENV")"
case "$peer_abs/" in
  "$repo_root"/*) echo "peer_env.sh: refusing to build inside the repository ($peer_abs)" >&2; exit 2 ;;
esac
# Make the venvs from the *base* interpreter even if some venv is activated.
base_py="$("$PEER_BASE_PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
"$base_py" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || echo "peer_env.sh: warning: tested only with Python 3.11" >&2

if [[ "${PEER_REBUILD:-0}" == 1 ]]; then rm -rf "$PEER_VENV" "$PEER_BUILD"; fi

# --- jemalloc (Debian) ---------------------------------------------------------------------
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
if [[ ! -e "$JEMALLOC" && "${PEER_SKIP_APT:-0}" != 1 ]]; then
  if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2
  else
    echo "peer_env.sh: libjemalloc2 not installed and apt-get unavailable; jemalloc runs will be skipped" >&2
  fi
fi

# --- peer venv: torch first, then numpy ----------------------------------------------------
[[ -x "$PEER_VENV/bin/python" ]] || "$base_py" -m venv "$PEER_VENV"
PPY="$PEER_VENV/bin/python"
"$PPY" -m pip install -q "$TORCH_SPEC"
"$PPY" -m pip install -q "$NUMPY_SPEC"
if [[ "$PEER_LIBRARY" == learn2learn ]]; then "$PPY" -m pip install -q "${RUNTIME_DEPS[@]}"; fi
if [[ "$PEER_LIBRARY" == easyfsl ]]; then "$PPY" -m pip install -q --no-deps "$EASYFSL_SPEC"; fi

# --- learn2learn 0.2.0: rebuild Cython extensions from the .pyx ------------------------------
if [[ "$PEER_LIBRARY" == learn2learn ]] && ! "$PPY" -c "import importlib.metadata as m, sys; sys.exit(m.version('learn2learn') != '$L2L_VERSION')" 2>/dev/null; then
  mkdir -p "$PEER_BUILD/wheels"
  wheel="$(ls "$PEER_BUILD"/wheels/learn2learn-"$L2L_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
  if [[ -z "$wheel" ]]; then
    src="$PEER_BUILD/learn2learn-$L2L_VERSION"
    rm -rf "$src" "$PEER_BUILD/bvenv"
    "$base_py" -m venv "$PEER_BUILD/bvenv"
    "$PEER_BUILD/bvenv/bin/python" -m pip install -q "$CYTHON_SPEC" setuptools wheel
    "$PEER_BUILD/bvenv/bin/python" -m pip download -q --no-deps --no-binary :all: \
        "learn2learn==$L2L_VERSION" -d "$PEER_BUILD"
    tar -xzf "$PEER_BUILD/learn2learn-$L2L_VERSION.tar.gz" -C "$PEER_BUILD"
    rm -rf "$src/.eggs" "$src"/learn2learn/data/*.c          # stale Cython 0.29 output
    (cd "$src" && "$PEER_BUILD/bvenv/bin/cythonize" -q -3 -X embedsignature=True \
        learn2learn/data/meta_dataset.pyx learn2learn/data/task_dataset.pyx learn2learn/data/transforms.pyx)
    (cd "$src" && "$PEER_BUILD/bvenv/bin/python" -m pip wheel -q --no-deps --no-build-isolation \
        -w "$PEER_BUILD/wheels" .)
    wheel="$(ls "$PEER_BUILD"/wheels/learn2learn-"$L2L_VERSION"-*.whl | head -n1)"
  fi
  "$PPY" -m pip install -q --no-deps --force-reinstall "$wheel"
fi

# --- torchvision import-time stub (peer env only, opt-in through PYTHONPATH) -----------------
STUBS="$PEER_VENV/$SHORT-stubs"
mkdir -p "$STUBS/torchvision/datasets" "$STUBS/torchvision/models"
cat > "$STUBS/torchvision/_stub.py" <<'EOF'
"""Stub helpers: placeholders that fail loudly if learn2learn ever uses them at run time."""


def _fail(name):
    raise ImportError(
        f"torchvision.{name} is a stub in the learn2learn peer benchmark env; real torchvision is not installed"
    )


def make_class(name):
    def __init__(self, *args, **kwargs):
        _fail(name)

    return type(name.rsplit(".", 1)[-1], (object,), {"__init__": __init__, "__module__": "torchvision." + name})


def make_function(name):
    def f(*args, **kwargs):
        _fail(name)

    f.__name__ = name.rsplit(".", 1)[-1]
    return f
EOF
cat > "$STUBS/torchvision/__init__.py" <<'EOF'
"""Minimal torchvision stub for importing learn2learn 0.2.0 or easyfsl 1.5.0 without torchvision (peer envs only)."""

__version__ = "0.0.0+peer-stub"
from . import datasets, models, transforms  # noqa: E402,F401
EOF
cat > "$STUBS/torchvision/transforms.py" <<'EOF'
from ._stub import make_class

# names imported at module level by learn2learn.vision.{transforms,benchmarks}
for _n in ("Compose", "ToPILImage", "ToTensor", "RandomCrop", "RandomHorizontalFlip", "ColorJitter",
           "Normalize", "Resize", "RandomRotation", "Lambda"):
    globals()[_n] = make_class("transforms." + _n)
del _n
EOF
cat > "$STUBS/torchvision/datasets/__init__.py" <<'EOF'
from .._stub import make_class
from . import folder, omniglot  # noqa: F401

ImageFolder = make_class("datasets.ImageFolder")  # subclassed by learn2learn.vision.datasets.CIFARFS
Omniglot = omniglot.Omniglot
EOF
cat > "$STUBS/torchvision/models/__init__.py" <<'EOF'
from . import resnet  # noqa: F401
EOF
cat > "$STUBS/torchvision/models/resnet.py" <<'EOF'
from .._stub import make_class, make_function

# names imported at module level by easyfsl.modules.{resnet,predesigned_modules,feat_resnet12}
BasicBlock = make_class("models.resnet.BasicBlock")
Bottleneck = make_class("models.resnet.Bottleneck")
conv1x1 = make_function("models.resnet.conv1x1")
conv3x3 = make_function("models.resnet.conv3x3")
EOF
cat > "$STUBS/torchvision/datasets/folder.py" <<'EOF'
from .._stub import make_function

default_loader = make_function("datasets.folder.default_loader")
EOF
cat > "$STUBS/torchvision/datasets/omniglot.py" <<'EOF'
from .._stub import make_class

Omniglot = make_class("datasets.omniglot.Omniglot")
EOF

cat > "$PEER_VENV/bin/python-$SHORT" <<EOF
#!/bin/sh
# $PEER_LIBRARY peer interpreter: puts the torchvision import stub on PYTHONPATH.
PYTHONPATH="$STUBS\${PYTHONPATH:+:\$PYTHONPATH}" exec "$PPY" "\$@"
EOF
chmod +x "$PEER_VENV/bin/python-$SHORT"
if [[ "$PEER_LIBRARY" == easyfsl ]]; then
  "$PEER_VENV/bin/python-easyfsl" -c "import torch, easyfsl; from easyfsl.methods import PrototypicalNetworks, \
MatchingNetworks, RelationNetworks; print('peer env ok: easyfsl', easyfsl.__version__, '| torch', torch.__version__)"
  exit 0
fi

# --- verify ---------------------------------------------------------------------------------
"$PEER_VENV/bin/python-l2l" -c "import torch, learn2learn as l2l; from learn2learn.algorithms import MAML; \
print('peer env ok: learn2learn', l2l.__version__, '| torch', torch.__version__)"
if [[ -e "$JEMALLOC" ]]; then
  LD_PRELOAD="$JEMALLOC" "$PEER_VENV/bin/python-l2l" -c "import learn2learn" && echo "jemalloc: $JEMALLOC"
fi
