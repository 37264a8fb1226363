"""An optional native CPU kernel for :func:`emrakul.masks.topk_mask`, compiled on first use.

On XLA:CPU an exact selection costs several vectorised count passes of XLA's own (each pass
materialises a 0/1 array and reduces it), which makes a mask update every step (RigL, Evci et
al. 2020) dominate a small model's train step. ``emrakul/masks/_native/topk.cc`` does the same
selection, bit for bit, as an XLA FFI custom call: two-threshold count passes vectorised by the
C++ compiler narrow a bracket around the k-th value, an AVX-512 compaction gathers the few
entries inside it and ``std::nth_element`` picks the threshold (the file's header has the
details). ``python -m benchmarks.topk_ffi --step`` times it against the XLA version.

The kernel is opt-in and never required:

* :func:`enable` compiles ``topk.cc`` with the system's C++ compiler (``$CXX``, else ``g++``,
  ``c++`` or ``clang++``; flags ``-O3 -march=native -fopenmp-simd``) into a cache directory
  (``$EMRAKUL_CACHE_DIR``, else ``$XDG_CACHE_HOME/emrakul`` or ``~/.cache/emrakul``), keyed by
  the sources, compiler, flags, CPU and jax/jaxlib versions, loads it, registers the custom
  call, and from
  then on :func:`emrakul.masks.topk_mask` uses it for float32 scores in programs compiled for the
  CPU (``jax.lax.platform_dependent``: the same program on a GPU or TPU uses the XLA version).
  Switching clears JAX's caches (``jax.clear_caches``), so every function traced afterwards,
  also by an existing ``jax.jit`` wrapper, uses the new setting; programs already compiled and
  held elsewhere (e.g. an AOT-compiled executable) keep theirs. Call it once, at start-up.
* Without a compiler, or if the build fails, :func:`enable` returns ``False`` (``strict=True``
  raises instead), :func:`status` says why, and everything keeps working on the XLA version.

The custom call handles ``jax.vmap`` (every batch member is one more row) and traced ``k``
(changing it does not recompile). ``jax.grad`` and ``jax.jvp`` through ``topk_mask`` work as
with the XLA version: the mask is boolean, and the scores enter the call behind
``stop_gradient``. A program exported with ``jax.export`` that contains the call needs the
kernel registered (``available()``) in the process that runs it. The call has no sharding
rule: inside a ``vmap`` whose batch is split over a mesh, XLA gathers its inputs onto every
device (still exact); under ``shard_map`` (``run.seed_loop="map"``) each device keeps its rows.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import jaxlib

TARGET = "emrakul_topk_mask_native"
_SOURCE = os.path.join(os.path.dirname(__file__), "_native", "topk.cc")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fopenmp-simd")

_lock = threading.Lock()
_state: dict[str, object] = {"built": None, "status": "not built yet", "enabled": False}


def _compiler() -> list[str]:
    """The compiler command (``$CXX`` may carry arguments, e.g. ``"ccache g++"``).

    Raises:
      RuntimeError: ``$CXX`` names no program on the PATH, or (without ``$CXX``) none of
        ``g++``, ``c++``, ``clang++`` is installed.
    """
    if os.environ.get("CXX"):
        cmd = shlex.split(os.environ["CXX"])
        if not cmd or shutil.which(cmd[0]) is None:
            raise RuntimeError(f"no C++ compiler: $CXX={os.environ['CXX']!r} is not on the PATH")
        return [shutil.which(cmd[0]), *cmd[1:]]
    for name in ("g++", "c++", "clang++"):
        if shutil.which(name):
            return [shutil.which(name)]
    raise RuntimeError("no C++ compiler found (set $CXX, or install g++ or clang++)")


def _cache_dir() -> str:
    if os.environ.get("EMRAKUL_CACHE_DIR"):
        return os.environ["EMRAKUL_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "emrakul")


def _cpu_signature() -> str:
    """The CPU model and feature flags (a ``-march=native`` library only runs on such CPUs)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compile(source: str, flags: tuple[str, ...]) -> str:
    """Compiles the C++ file ``source`` into a shared library with ``flags`` against jaxlib's
    FFI headers, or finds it in the cache; returns the library's path. The cache key covers the
    source, the headers beside the native kernel (``_native/``), compiler, flags, CPU and
    jax/jaxlib versions. (The benchmarks build their C++ prototypes with it too.)

    Raises:
      RuntimeError: no C++ compiler, or the compilation failed (the message has its output).
    """
    cxx = _compiler()
    version = subprocess.run([*cxx, "--version"], capture_output=True, errors="replace").stdout
    folder = os.path.dirname(_SOURCE)
    files = [source] + [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    code = b""
    for path in files:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                code += os.path.basename(path).encode() + b"\0" + f.read()
    key = hashlib.sha256(
        b"\0".join(
            s if isinstance(s, bytes) else s.encode()
            for s in (
                code,
                " ".join(cxx),
                version,
                " ".join(flags),
                _cpu_signature(),
                jax.__version__,
                jaxlib.__version__,  # the FFI headers come with jaxlib
            )
        )
    ).hexdigest()[:20]
    directory = _cache_dir()
    name = os.path.splitext(os.path.basename(source))[0]
    path = os.path.join(directory, f"{name}_{key}.so")
    if os.path.exists(path):
        return path
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    cmd = [*cxx, *flags, "-isystem", jax.ffi.include_dir(), source, "-o", tmp]
    try:
        out = subprocess.run(cmd, capture_output=True, errors="replace")
        if out.returncode != 0:
            raise RuntimeError(f"compiling {source} failed:\n$ {' '.join(cmd)}\n{out.stderr}")
        os.chmod(tmp, 0o755)  # mkstemp makes it private; a shared cache must be readable
        os.replace(tmp, path)  # atomic: concurrent processes never load a partial file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _build(flags: tuple[str, ...] = _FLAGS) -> str:
    """The native kernel's library (:func:`_compile` of ``_native/topk.cc``)."""
    return _compile(_SOURCE, flags)


def available() -> bool:
    """Whether the native kernel is built and registered (builds it on the first call; a
    failure is remembered for the rest of the process, :func:`status` says why)."""
    with _lock:
        if _state["built"] is None:
            try:
                path = _build()
                lib = ctypes.cdll.LoadLibrary(path)
                jax.ffi.register_ffi_target(
                    TARGET, jax.ffi.pycapsule(lib.EmrakulTopkMask), platform="cpu"
                )
                _state.update(built=True, status=f"built: {path}")
            except Exception as e:  # any failure means: use the XLA version
                _state.update(built=False, status=f"unavailable: {type(e).__name__}: {e}")
        return bool(_state["built"])


def enable(on: bool = True, strict: bool = False) -> bool:
    """Makes :func:`emrakul.masks.topk_mask` use the native kernel on the CPU (or stop using it).

    Args:
      on: ``True`` to use the kernel (building it if needed), ``False`` to go back to XLA.
      strict: raise if the kernel cannot be built, instead of returning ``False``.

    Returns:
      Whether the kernel is now in use.

    Raises:
      RuntimeError: with ``strict``, when the kernel is unavailable (the message says why).
    """
    ok = available() if on else False
    if on and not ok and strict:
        raise RuntimeError(f"the native top-k kernel is {_state['status']}")
    if ok != _state["enabled"]:
        _state["enabled"] = ok
        # JAX reuses traces of a function across jit wrappers; without this, a function traced
        # before the switch would keep the other implementation.
        jax.clear_caches()
    return ok


def enabled() -> bool:
    """Whether :func:`emrakul.masks.topk_mask` currently traces to the native kernel on CPU."""
    return bool(_state["enabled"])


def status() -> str:
    """``"not built yet"``, ``"built: <path>"`` or ``"unavailable: <reason>"``."""
    return str(_state["status"])


def topk_rows(x: jax.Array, k: jax.Array) -> jax.Array:
    """The custom call: per row of the sanitised float32 ``x`` (``[..., n]``, see
    ``emrakul.masks.topk._as_float``) a mask of its ``k`` largest entries (``k``: int32, one
    count per row, clipped into ``[0, n]``). CPU only; :func:`available` must be true."""
    call = jax.ffi.ffi_call(
        TARGET, jax.ShapeDtypeStruct(x.shape, jnp.bool_), vmap_method="broadcast_all"
    )
    return call(x, jnp.asarray(k, jnp.int32))
