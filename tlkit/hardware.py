"""What this machine computes natively, probed without importing an ML framework: the precision that
``--precision auto`` resolves to.

``auto`` means ``mixed_bfloat16`` where the device a job runs on computes bfloat16 natively, and
``float32`` elsewhere:

- an NVIDIA GPU of compute capability 8.0 or later (Ampere, Hopper...), as ``nvidia-smi`` reports it (the
  weakest of those ``CUDA_VISIBLE_DEVICES`` leaves decides);
- a TPU (``/dev/accel0``... or ``TPU_NAME``);
- else the CPU, when its flags include ``amx_bf16`` or ``avx512_bf16`` and the Keras backend computes
  bfloat16 natively on a CPU (TensorFlow and PyTorch through oneDNN; JAX's XLA CPU compiler does not:
  there bfloat16 is emulated, and slower than float32).

The probe reads files and asks ``nvidia-smi`` (once per process), so that a command which only checks
its caches (``tlkit extract`` on unchanged data) can key them without loading a framework. A GPU the
installed framework cannot use (a CPU-only build on a GPU machine) still counts as the device: pass
``--precision float32`` there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: CPU flags of native bfloat16 arithmetic (Intel AMX, AVX512-BF16 on Intel and AMD).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
#: Backends whose CPU kernels use those instructions (oneDNN); XLA's CPU compiler emulates bfloat16.
BF16_CPU_BACKENDS = ("tensorflow", "torch")
#: The first NVIDIA compute capability with bfloat16 tensor cores (Ampere).
BF16_GPU_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Precision:
    """A compute precision and why: ``policy`` is a Keras dtype policy, ``reason`` says where it came from."""

    policy: str
    reason: str

    def describe(self) -> str:
        """``policy (reason)``, as a run records it."""
        return f"{self.policy} ({self.reason})"


def resolve_precision(name: str) -> Precision:
    """The precision ``name`` stands for: itself, or for ``auto`` what this machine computes natively."""
    if name != "auto":
        return Precision(name, "chosen")
    return _auto(keras_backend())


@lru_cache(maxsize=4)
def _auto(backend: str) -> Precision:
    capabilities = gpu_capabilities()
    if capabilities:
        lowest = min(capabilities)
        native = lowest >= BF16_GPU_CAPABILITY
        gpu = f"NVIDIA GPU of compute capability {lowest[0]}.{lowest[1]}"
        return Precision("mixed_bfloat16" if native else "float32",
                         f"auto: {gpu}{'' if native else ', no native bfloat16'}")
    if has_tpu():
        return Precision("mixed_bfloat16", "auto: TPU")
    flags = sorted(set(cpu_flags()) & set(BF16_CPU_FLAGS))
    if not flags:
        return Precision("float32", "auto: this CPU has no native bfloat16")
    if backend not in BF16_CPU_BACKENDS:
        return Precision("float32", f"auto: {backend} emulates bfloat16 on a CPU (which has {', '.join(flags)})")
    return Precision("mixed_bfloat16", f"auto: CPU with {', '.join(flags)}")


def keras_backend() -> str:
    """The backend Keras will load (``KERAS_BACKEND``, else ``~/.keras/keras.json``, else TensorFlow), read
    without importing Keras."""
    chosen = os.environ.get("KERAS_BACKEND")
    if chosen:
        return chosen
    settings = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return str(json.loads(settings.read_text()).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def has_tpu() -> bool:
    """A Cloud TPU VM: ``TPU_NAME`` set, or the TPU driver's ``/dev/accel0``... (not ``/dev/accel/``, the folder
    of other vendors' NPUs)."""
    return bool(os.environ.get("TPU_NAME")) or any(path.is_char_device() for path in Path("/dev").glob("accel[0-9]*"))


def gpu_capabilities() -> tuple[tuple[int, int], ...]:
    """The compute capability of every NVIDIA GPU a job here may use: those ``nvidia-smi`` lists, narrowed to
    ``CUDA_VISIBLE_DEVICES`` when it is set (empty or ``-1``: none)."""
    listed = _listed_capabilities()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return listed
    chosen = [part.strip() for part in visible.split(",") if part.strip()]
    if not chosen or chosen[0] == "-1":
        return ()
    if all(part.isdigit() for part in chosen):
        return tuple(listed[int(part)] for part in chosen if int(part) < len(listed))
    return listed  # GPUs named by UUID: all of them stand for the choice


@lru_cache(maxsize=1)
def _listed_capabilities() -> tuple[tuple[int, int], ...]:
    """The compute capability of every NVIDIA GPU ``nvidia-smi`` lists (none without the tool or a GPU)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return ()
    try:
        listed = subprocess.run([tool, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    found = []
    for line in listed.split():
        major, _, minor = line.strip().partition(".")
        if major.isdigit() and minor.isdigit():
            found.append((int(major), int(minor)))
    return tuple(found)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """This CPU's feature flags (Linux's ``/proc/cpuinfo``; none elsewhere)."""
    try:
        with open(cpuinfo) as lines:
            for line in lines:
                if line.startswith(("flags", "Features")):
                    return tuple(line.partition(":")[2].split())
    except OSError:
        pass
    return ()
