"""``--precision auto``: bfloat16 where the device computes it natively, float32 elsewhere, probed without a
framework; the run records what it resolved to, and caches of two precisions never mix."""

from __future__ import annotations

import json
import os
import stat

import keras
import pytest

import tlkit
from tlkit import hardware
from tlkit.hardware import Precision, resolve_precision

from conftest import make_dataset


@pytest.fixture
def probe(monkeypatch):
    """Set what the probe finds: GPUs' compute capabilities, CPU flags, the backend, a TPU or not."""

    def found(gpus=(), flags=(), backend="tensorflow", tpu=False):
        hardware._auto.cache_clear()
        monkeypatch.setattr(hardware, "gpu_capabilities", lambda: tuple(gpus))
        monkeypatch.setattr(hardware, "cpu_flags", lambda: tuple(flags))
        monkeypatch.setattr(hardware, "keras_backend", lambda: backend)
        monkeypatch.setattr(hardware, "has_tpu", lambda: tpu)
        return resolve_precision("auto")

    yield found
    hardware._auto.cache_clear()


@pytest.mark.backend_independent
def test_auto_is_bfloat16_only_where_it_is_native(probe):
    assert probe(gpus=[(9, 0)]).policy == "mixed_bfloat16"  # H100/H200
    assert probe(gpus=[(8, 0), (7, 5)]) == Precision("float32", "auto: NVIDIA GPU of compute capability 7.5, "
                                                                "no native bfloat16")  # the weakest decides
    assert probe(gpus=[(7, 0)], flags=["avx512_bf16"]).policy == "float32"  # the GPU does the work, not the CPU
    assert probe(tpu=True).policy == "mixed_bfloat16"
    assert probe(flags=["avx512f", "avx512_bf16"]) == Precision("mixed_bfloat16", "auto: CPU with avx512_bf16")
    assert probe(flags=["amx_bf16"], backend="torch").policy == "mixed_bfloat16"
    assert probe(flags=["avx512_bf16"], backend="jax").policy == "float32"  # XLA's CPU emulates it
    assert probe(flags=["avx2", "fma"]) == Precision("float32", "auto: this CPU has no native bfloat16")
    assert resolve_precision("mixed_float16") == Precision("mixed_float16", "chosen")


@pytest.mark.backend_independent
def test_the_probe_reads_cpu_flags_and_nvidia_smi(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert hardware.cpu_flags(cpuinfo) == ("fpu", "avx512f", "avx512_bf16")
    assert hardware.cpu_flags(tmp_path / "absent") == ()
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=compute_cap" ] && printf "9.0\\n8.6\\n"\n')
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hardware._listed_capabilities.cache_clear()
    try:
        assert hardware.gpu_capabilities() == ((9, 0), (8, 6))
        for visible, expected in (("1", ((8, 6),)), ("0,1", ((9, 0), (8, 6))), ("", ()), ("-1", ()), ("7", ())):
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)  # a job uses only the GPUs it is shown
            assert hardware.gpu_capabilities() == expected, visible
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        smi.write_text("#!/bin/sh\nexit 9\n")  # a driver that fails: no GPU, not an error
        hardware._listed_capabilities.cache_clear()
        assert hardware.gpu_capabilities() == ()
    finally:
        hardware._listed_capabilities.cache_clear()
    monkeypatch.setenv("TPU_NAME", "v5e")
    assert hardware.has_tpu()
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert hardware.keras_backend() == "torch"
    monkeypatch.delenv("KERAS_BACKEND")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert hardware.keras_backend() == "jax"


def test_an_auto_run_computes_in_what_auto_resolves_to_and_records_it(tmp_path, config, monkeypatch):
    """The model is built under the resolved policy, the run says which and why, and the features cache is
    the explicit policy's (shared with it), never the other precision's."""
    monkeypatch.setattr(hardware, "_auto", lambda backend: Precision("mixed_bfloat16", "auto: CPU with amx_bf16"))
    data = make_dataset(tmp_path / "data", per_class=6)
    auto = config.replace(fit={"mode": "features"}, runtime={"precision": "auto"})
    result = tlkit.train(data, auto, run_dir=tmp_path / "run", verbose=0)
    record = json.loads((result.run_dir / "config.json").read_text())
    assert record["runtime"]["precision"] == "auto"
    assert record["provenance"]["precision"] == "mixed_bfloat16 (auto: CPU with amx_bf16)"
    assert keras.config.dtype_policy().name == "float32"  # restored after the run
    assert result.model.get_layer("vgg16").get_layer("block1_conv1").compute_dtype == "bfloat16"
    explicit = tlkit.extract(data, auto.replace(runtime={"precision": "mixed_bfloat16"}), verbose=0)
    assert explicit.reused and explicit.path == tlkit.extract(data, auto, verbose=0).path
    full = tlkit.extract(data, auto.replace(runtime={"precision": "float32"}), verbose=0)
    assert not full.reused and full.path != explicit.path
