"""JIT build and cache of fastsrnn's C++/CUDA extensions (torch.utils.cpp_extension + ninja).

An extension is compiled on first use into ``FASTSRNN_BUILD_DIR`` (fastsrnn.env.build_dir()),
in a folder keyed by the torch version, the sources' contents, the flags and, for CPU code,
the instruction-set level the flags target: a cache built on an AVX-512 machine is never
loaded on a CPU without AVX-512 (it would die of an illegal instruction). Results and failures
are cached per process, so a missing compiler costs one attempt and then a clear message.

The cache is location-independent: the sources are copied into the keyed folder and compiled
there, and a finished build (marked by ``complete.json``) is imported directly, without asking
ninja, whose build.ninja holds absolute paths (of the sources, of torch's headers) that differ
between checkouts and virtual environments and would make it rebuild. So every checkout and
environment with the same sources, flags, torch and Python shares one build. One process builds
a folder at a time: it holds an OS lock (``flock`` on ``build.lock``), which the kernel drops
however the process ends, so a killed build never blocks the next one; a process that waits says
for whom and where.

Ahead of time (e.g. in a Docker image): ``python -m fastsrnn.ops.build`` builds every extension
this machine can build and reports each one.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from fastsrnn import env
from fastsrnn.outlock import try_flock, wait_flock, write_holder

_LOADED: Dict[str, object] = {}
_FAILED: Dict[str, str] = {}

_CPU_SOURCES = ["cpu/sample_frame.cpp"]
# -fno-trapping-math -fno-math-errno (as torch's own build): lets the select/floor/exp loops
# vectorise; no -ffast-math, so sums keep their order and NaN/Inf keep their meaning.
_CPU_CFLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
_CPU_HINT = "install g++ and ninja (pip install ninja), or use backend='eager'"
_CUDA_SOURCES = ["cuda/binding.cpp", "cuda/sample_frame.cu"]
_CUDA_HINT = ("install the CUDA toolkit matching torch.version.cuda (nvcc, CUDA_HOME) and ninja, "
              "or use backend='triton'")


class BuildError(RuntimeError):
    """An extension could not be built; the message says why and what to do."""


def csrc_dir() -> Path:
    """The C++/CUDA sources as installed (``fastsrnn.csrc`` is the repository's csrc/)."""
    import fastsrnn.csrc

    return Path(fastsrnn.csrc.__file__).parent


def cpu_flags() -> frozenset:
    """The CPU's feature flags (from /proc/cpuinfo on Linux; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def isa_level(flags: Optional[frozenset] = None) -> Tuple[str, List[str]]:
    """(level, compiler flags) for the widest vector ISA this CPU has that the kernels use."""
    flags = cpu_flags() if flags is None else flags
    if platform.machine() not in ("x86_64", "AMD64"):
        return "generic", []
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return "avx512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]
    if {"avx2", "fma"} <= flags:
        return "avx2", ["-mavx2", "-mfma", "-mf16c"]
    return "generic", []


def missing_tools(cuda: bool = False) -> List[str]:
    """What a build needs and this machine lacks, as install hints (empty when all is there)."""
    from torch.utils import cpp_extension

    missing = []
    if not cpp_extension.is_ninja_available():
        missing.append("ninja (pip install ninja)")
    if shutil.which(env.cxx_compiler()) is None:
        missing.append(f"a C++ compiler: {env.cxx_compiler()!r} is not on PATH (install g++, or set CXX)")
    if cuda and cpp_extension.CUDA_HOME is None:
        missing.append("the CUDA toolkit (nvcc; set CUDA_HOME)")
    return missing


def _key(name: str, sources: Sequence[Path], flags: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in (name, torch.__version__, sys.version.split()[0], platform.machine(), *map(str, flags)):
        h.update(part.encode() + b"\0")
    for src in sources:
        h.update(src.name.encode() + b"\0" + src.read_bytes())
        for header in sorted(src.parent.glob("*.h")) + sorted(src.parent.glob("*.cuh")):
            h.update(header.name.encode() + b"\0" + header.read_bytes())
    return h.hexdigest()[:16]


def load_extension(name: str, sources: Sequence, extra_cflags: Sequence[str] = (),
                   extra_cuda_cflags: Optional[Sequence[str]] = None, extra_ldflags: Sequence[str] = (),
                   verbose: Optional[bool] = None):
    """Build (or load from the cache) the extension ``name`` from ``sources`` and import it.

    sources: paths (absolute, or relative to csrc_dir()); headers beside them are part of the
    cache key. Flags are part of the key too, so callers put ISA flags (isa_level()) in
    extra_cflags. extra_cuda_cflags: a CUDA extension (nvcc) when not None.
    Raises BuildError with an actionable message; a failure is remembered for the process.
    """
    srcs = [p if Path(p).is_absolute() else csrc_dir() / p for p in map(Path, sources)]
    for p in srcs:
        if not p.is_file():
            raise BuildError(f"extension {name}: source {p} is missing (is fastsrnn installed with its csrc/?)")
    cuda = extra_cuda_cflags is not None
    key = _key(name, srcs, _flag_parts(extra_cflags, extra_cuda_cflags, extra_ldflags))
    if key in _LOADED:
        return _LOADED[key]
    if key in _FAILED:
        raise BuildError(_FAILED[key])
    try:
        module = _build(name, srcs, key, extra_cflags, extra_cuda_cflags, extra_ldflags, cuda, verbose)
    except BuildError as e:
        _FAILED[key] = str(e)
        raise
    _LOADED[key] = module
    return module


def _flag_parts(cflags, cuda_cflags, ldflags) -> List[str]:
    return [*cflags, "|", *(cuda_cflags or []), "|", *ldflags]


def extension_folder(name: str, sources: Sequence[Path], extra_cflags: Sequence[str] = (),
                     extra_cuda_cflags: Optional[Sequence[str]] = None, extra_ldflags: Sequence[str] = ()) -> Path:
    """The cache folder load_extension(name, sources, flags...) builds into and loads from
    (sources absolute): keyed by contents, flags, torch and Python, never by location."""
    key = _key(name, sources, _flag_parts(extra_cflags, extra_cuda_cflags, extra_ldflags))
    return _folder_of(f"fastsrnn_{name}_{key}")


def _folder_of(mod_name: str) -> Path:
    return env.build_dir() / f"torch{torch.__version__.replace('+', '_')}" / mod_name


COMPLETE = "complete.json"  # written last: the folder holds a finished build
LOCK = "build.lock"  # flock'ed while a process builds into the folder


def _build(name, srcs, key, cflags, cuda_cflags, ldflags, cuda, verbose):
    mod_name = f"fastsrnn_{name}_{key}"  # unique per variant: one process may load several
    build_dir = _folder_of(mod_name)
    if _is_complete(build_dir, mod_name):
        return _import(mod_name, build_dir)
    missing = missing_tools(cuda)
    if missing:
        raise BuildError(f"cannot build the {name} extension: missing {'; '.join(missing)}")
    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(build_dir, name):
        if _is_complete(build_dir, mod_name):  # another process built it while this one waited
            return _import(mod_name, build_dir)
        staged = _stage_sources(srcs, build_dir / "src")
        # torch's own lock file: with the flock held, one found here was left by a killed build
        (build_dir / "lock").unlink(missing_ok=True)
        print(f"fastsrnn: compiling the {name} extension into {build_dir} (first use only, about a minute)",
              file=sys.stderr, flush=True)
        try:
            with _elapsed_line(f"fastsrnn: compiling the {name} extension"):
                module = cpp_extension.load(
                    name=mod_name, sources=[str(p) for p in staged], extra_cflags=list(cflags),
                    extra_cuda_cflags=list(cuda_cflags) if cuda else None, extra_ldflags=list(ldflags),
                    extra_include_paths=sorted({str(p.parent) for p in staged}), build_directory=str(build_dir),
                    verbose=env.build_verbose() if verbose is None else verbose, with_cuda=cuda or None)
        except Exception as e:  # compiler errors arrive as RuntimeError/CalledProcessError/ImportError
            detail = str(e).strip().splitlines()
            tail = "\n".join(detail[-15:])
            raise BuildError(f"building the {name} extension in {build_dir} failed "
                             f"(set FASTSRNN_BUILD_VERBOSE=1 for the compiler's output):\n{tail}") from e
        record = {"module": mod_name, "key": key, "torch": torch.__version__, "python": sys.version.split()[0],
                  "sources": [p.name for p in srcs], "cflags": list(cflags), "cuda_cflags": list(cuda_cflags or []),
                  "ldflags": list(ldflags), "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = build_dir / (COMPLETE + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, build_dir / COMPLETE)
        return module


def _is_complete(build_dir: Path, mod_name: str) -> bool:
    return (build_dir / COMPLETE).is_file() and (build_dir / f"{mod_name}.so").is_file()


def _import(mod_name: str, build_dir: Path):
    """Import a finished build's module from its file (no ninja: nothing is checked or rebuilt)."""
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, build_dir / f"{mod_name}.so")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        raise BuildError(f"the cached build {build_dir} cannot be loaded ({e}); delete that folder "
                         "to rebuild it") from e
    sys.modules[mod_name] = module
    return module


def _stage_sources(srcs: Sequence[Path], dest: Path) -> List[Path]:
    """Copy each source and the headers beside it (what the cache key hashed) into ``dest``,
    one subfolder per source folder; returns the copied sources, in order."""
    staged = []
    for src in srcs:
        folder = dest / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        for f in [src, *sorted(src.parent.glob("*.h")), *sorted(src.parent.glob("*.cuh"))]:
            shutil.copyfile(f, folder / f.name)
        staged.append(folder / src.name)
    return staged


@contextlib.contextmanager
def _build_lock(build_dir: Path, name: str):
    """Hold the OS lock of ``build_dir``; waiting for another process's build says so, with its pid."""
    path = build_dir / LOCK
    with open(path, "a+") as f:  # (Windows: no flock; concurrent first builds are not serialised)
        holder = try_flock(f)
        if holder is not None:
            print(f"fastsrnn: waiting for {holder}, which is compiling the {name} extension into {build_dir} "
                  f"(lock: {path}); it is used as soon as that build ends", file=sys.stderr, flush=True)
            with _elapsed_line(f"fastsrnn: waiting for the {name} extension's build"):
                wait_flock(f)
        write_holder(f, f"pid {os.getpid()} on {socket.gethostname()} (since {time.strftime('%H:%M:%S')})")
        yield  # closing the file releases the flock


@contextlib.contextmanager
def _elapsed_line(desc: str, delay: float = 3.0):
    """A progress line with the elapsed time, on a terminal, once the wait passes ``delay`` seconds."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", delay=delay, file=sys.stderr, disable=None, leave=False)
    stop, t0 = threading.Event(), time.monotonic()

    def tick():
        while not stop.wait(1.0):
            if time.monotonic() - t0 >= delay:
                bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


# (builder, arguments) -> the loaded module or the BuildError message: the launchers call the
# builders on every frame, and a cache key hashes every source file, so the outcome is kept here.
_RESOLVED: Dict[tuple, object] = {}


def _once(builder):
    """Run ``builder`` once per process and arguments; later calls return (or re-raise) its outcome."""
    def wrapper(*args):
        key = (builder.__name__, *args)
        if key not in _RESOLVED:
            try:
                _RESOLVED[key] = builder(*args)
            except BuildError as e:
                _RESOLVED[key] = e
        outcome = _RESOLVED[key]
        if isinstance(outcome, BuildError):
            raise BuildError(str(outcome))
        return outcome

    wrapper.__name__, wrapper.__doc__ = builder.__name__, builder.__doc__
    return wrapper


@_once
def cpu_extension(isa: Optional[str] = None):
    """Build (or load from the cache) the CPU extension (csrc/cpu/); raises BuildError with a hint.

    isa: 'avx512', 'avx2' or 'generic' to build a narrower variant than this CPU allows
    (tests of the fallbacks); default: the widest this CPU has.
    """
    level, flags = isa_level()
    if isa is not None and isa != level:
        order = ("generic", "avx2", "avx512")
        if isa not in order or order.index(isa) > order.index(level):
            raise BuildError(f"isa={isa!r}: this CPU supports at most {level!r}")
        flags = {"generic": [], "avx2": ["-mavx2", "-mfma", "-mf16c"]}[isa]
    try:
        return load_extension("cpu", _CPU_SOURCES, extra_cflags=[*_CPU_CFLAGS, *flags], extra_ldflags=["-fopenmp"])
    except BuildError as e:
        raise BuildError(f"{e}\nTo fix: {_CPU_HINT}.") from e


def cuda_arch_flags() -> list:
    """nvcc flags for the current GPU only (torch would otherwise build for every arch it knows);
    being flags, they also key the build cache per architecture."""
    major, minor = torch.cuda.get_device_capability()
    return [f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"]


@_once
def cuda_extension():
    """Build (or load from the cache) the CUDA extension (csrc/cuda/); raises BuildError with a hint."""
    if torch.version.cuda is None:
        raise BuildError(f"torch {torch.__version__} is a CPU-only build: the cuda backend needs a CUDA build of torch")
    if not torch.cuda.is_available():
        raise BuildError("torch sees no CUDA device: the cuda extension is built for the GPU it will run on")
    try:
        return load_extension("cuda", _CUDA_SOURCES, extra_cflags=["-O3"],
                              extra_cuda_cflags=["-O3", "-lineinfo", *cuda_arch_flags()])
    except BuildError as e:
        raise BuildError(f"{e}\nTo fix: {_CUDA_HINT}.") from e


# name -> builder: `python -m fastsrnn.ops.build` builds these.
EXTENSIONS = {"cpu": cpu_extension, "cuda": cuda_extension}


def build_all(names: Sequence[str] = tuple(EXTENSIONS)) -> Dict[str, Tuple[bool, str]]:
    """Build every extension in ``names``; {name: (ok, message)}."""
    report = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            EXTENSIONS[name]()
            report[name] = (True, f"ready in {time.perf_counter() - t0:.1f} s (built, or loaded from the cache)")
        except Exception as e:  # report every extension, whatever fails
            report[name] = (False, f"{type(e).__name__}: {e}")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fastsrnn.ops.build",
                                 description="Compile fastsrnn's C++/CUDA extensions now, into the cache "
                                             f"({env.build_dir()}; FASTSRNN_BUILD_DIR moves it).")
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"extensions to build, of {sorted(EXTENSIONS)} (default: all); "
                         "one that cannot be built here is reported, not fatal")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.names) - set(EXTENSIONS))
    if unknown:
        ap.error(f"unknown extension(s) {unknown}; choose from {sorted(EXTENSIONS)}")
    report = build_all(args.names or list(EXTENSIONS))
    for name, (ok, msg) in report.items():
        print(f"{name:6s} {'ok    ' if ok else 'FAILED'} {msg}")
    return 0 if any(ok for ok, _ in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
