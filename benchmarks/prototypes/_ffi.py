"""Compiling and registering the C++ prototypes beside this file as XLA FFI custom calls."""

from __future__ import annotations

import ctypes
import os

import jax

from emrakul.masks import native


def build_and_register(source: str, symbol: str, target: str, openmp: bool = False) -> None:
    """Compiles ``benchmarks/prototypes/<source>`` as the library's native kernel is compiled
    (``emrakul.masks.native._compile``: ``$CXX`` or g++, ``-O3 -march=native``, cached) and
    registers its handler ``symbol`` as the CPU custom-call target ``target``; ``openmp`` links
    OpenMP's threads (``-fopenmp``) instead of only its SIMD pragmas."""
    src = os.path.join(os.path.dirname(__file__), source)
    flags = tuple(f for f in native._FLAGS if f != "-fopenmp-simd") if openmp else native._FLAGS
    try:
        path = native._compile(src, (*flags, "-fopenmp") if openmp else flags)
    except RuntimeError as e:
        raise SystemExit(str(e)) from e
    lib = ctypes.cdll.LoadLibrary(path)
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
