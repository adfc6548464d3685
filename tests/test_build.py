"""The C++ build machinery (fastsrnn/ops/build.py): the ISA levels and the cache key, clear and
cached failures, missing tools, and `python -m fastsrnn.ops.build` (the shared cache and its lock:
tests/test_build_cache.py). The CPU extension must build here: a failed build fails these tests
(CI installs g++ and ninja)."""
import pytest

from fastsrnn.ops.build import (
    BuildError,
    _key,
    cpu_extension,
    csrc_dir,
    isa_level,
    load_extension,
    main,
)


def test_isa_levels_and_cache_key():
    assert isa_level(frozenset({"avx2", "fma", "sse2"}))[0] in ("avx2", "generic")  # generic off x86
    assert isa_level(frozenset({"sse2"}))[0] == "generic"
    src = [csrc_dir() / "cpu" / "sample_frame.cpp"]
    # a cache built with AVX-512 flags must not be found by a build without them
    assert _key("cpu", src, isa_level(frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"}))[1]) \
        != _key("cpu", src, isa_level(frozenset({"avx2", "fma"}))[1])


def test_wider_isa_than_the_cpu_is_refused(monkeypatch):
    """Building AVX-512 code for an AVX2 CPU would die of an illegal instruction: refused."""
    monkeypatch.setattr("fastsrnn.ops.build.isa_level", lambda flags=None: ("avx2", ["-mavx2", "-mfma", "-mf16c"]))
    for isa in ("avx512", "sse9"):
        with pytest.raises(BuildError, match=f"isa='{isa}': this CPU supports at most 'avx2'"):
            cpu_extension(isa)


def test_build_errors_are_clear_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSRNN_BUILD_DIR", str(tmp_path / "build"))
    with pytest.raises(BuildError, match="nope.cpp is missing"):
        load_extension("t_missing", [tmp_path / "nope.cpp"])
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    with pytest.raises(BuildError, match="building the t_broken extension .* failed"):
        load_extension("t_broken", [bad])
    monkeypatch.setattr("fastsrnn.ops.build._build", lambda *a, **k: pytest.fail("a failed build was retried"))
    with pytest.raises(BuildError, match="failed"):
        load_extension("t_broken", [bad])


def test_build_reports_missing_tools(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.utils.cpp_extension.is_ninja_available", lambda: False)
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    src = tmp_path / "a.cpp"
    src.write_text("int x;\n")
    with pytest.raises(BuildError, match=r"ninja \(pip install ninja\).*no-such-compiler-xyz"):
        load_extension("t_tools", [src])


def test_build_cli(capsys):
    cpu_extension()  # raises BuildError (the test fails) when the build fails
    assert main(["cpu"]) == 0
    assert "cpu    ok     ready" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["nonsense"])

