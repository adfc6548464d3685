"""The demo pipeline end to end at a tiny step count, and its re-run behaviour."""
import pytest
import soundfile as sf

from fastsrnn.tools.demo import demo


@pytest.mark.slow
def test_demo_pipeline_and_rerun(tmp_path, capsys):
    out = tmp_path / "demo"
    clips = demo(out, steps=2, seconds=0.05, n_clips=2, backend="eager", progress=False)
    assert [p.name for p in clips] == ["clip_00.wav", "clip_01.wav"]
    for p in clips:
        info = sf.info(str(p))
        assert info.samplerate == 16000 and info.frames == 800
    text = capsys.readouterr().out
    for phase in ("synthesize album", "prepare", "train", "generate", "report"):
        assert f"[demo] {phase}: " in text
    assert (out / "run" / "report.html").is_file() and "report of the run: " in text
    assert (out / "run" / "checkpoints" / "best.pt").is_file()
    # A re-run with more steps continues the same run instead of starting over.
    demo(out, steps=3, seconds=0.05, n_clips=1, backend="eager", progress=False)
    assert "from step 2" in capsys.readouterr().out


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("not a demo")
    with pytest.raises(FileExistsError, match="not a fastsrnn demo folder"):
        demo(tmp_path, steps=1, progress=False)


def test_demo_cli_help_runs():
    from fastsrnn.cli import main

    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0


@pytest.mark.slow
def test_demo_with_the_3tier_preset(tmp_path):
    from fastsrnn.checkpoint import load_checkpoint

    clips = demo(tmp_path / "demo3", steps=2, seconds=0.05, n_clips=1, backend="cpu", progress=False,
                 preset="tiny-3tier")
    assert sf.info(str(clips[0])).frames == 800
    assert load_checkpoint(tmp_path / "demo3" / "run" / "checkpoints" / "best.pt")["config"]["frame_sizes"] == [16, 4]
    with pytest.raises(ValueError, match="preset"):
        demo(tmp_path / "other", steps=1, progress=False, preset="dadabots-2tier")
