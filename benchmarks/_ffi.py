"""Compiling and registering the C++ prototypes of the benchmarks as XLA FFI custom calls."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile

import jax


def build_and_register(
    source: str, symbol: str, target: str, cxx: str = "g++", openmp: bool = False
) -> None:
    """Compiles ``benchmarks/<source>`` with ``cxx`` and registers its handler ``symbol`` as the
    CPU custom-call target ``target`` (``-O3 -march=native``: the library is built for this
    machine only)."""
    if shutil.which(cxx) is None:
        raise SystemExit(f"no C++ compiler {cxx!r} on PATH (pass --cxx)")
    src = os.path.join(os.path.dirname(__file__), source)
    cmd = [cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-Wall"]
    cmd += ["-fopenmp"] if openmp else []
    with tempfile.TemporaryDirectory() as tmp:
        lib_path = os.path.join(tmp, "lib.so")
        subprocess.run([*cmd, "-isystem", jax.ffi.include_dir(), src, "-o", lib_path], check=True)
        lib = ctypes.cdll.LoadLibrary(lib_path)  # stays mapped after the file is removed
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
