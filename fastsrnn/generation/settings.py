"""GenerationSettings: what one generation makes, in one frozen value.

Each field carries its default, its ``fastsrnn generate`` flag and its help (the CLI's flags are
built from them); ``__post_init__`` checks the values with errors that name the flag; ``to_dict``
and ``from_dict`` are the settings part of generation.json (docs/DESIGN.md §6), so that a resume
reads back exactly what was started, and ``differences`` is the resume's comparison. Where a run
runs (backend, device) and what it finds on the way (checkpoint hash, sample counts, the precision
guard's numbers) are the run's record, written beside the settings by longgen.py and rundir.py.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from fastsrnn.generation.generator import check_int, check_temperature
from fastsrnn.generation.precision import MAX_NLL_DELTA_BITS, PRECISIONS
from fastsrnn.generation.preflight import _check_float, _check_precision_name
from fastsrnn.ops.sampling import check_top_k, check_top_p

H0S = ("learned", "random", "zeros")
AUDIO_FORMATS = ("wav", "flac")
NORMALIZE = ("peak", "none")


def parse_temperature(text: str):
    """argparse type of --temperature: '0.9' or '0.8,0.9,1.0' (one per sequence)."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--temperature: expected a number or a comma-separated list, got {text!r}")
    return vals[0] if len(vals) == 1 else vals


def _opt(default, help: str, *, flag: Optional[str] = None, key: Optional[str] = None, in_samples: bool = False,
         since_v1: bool = True, path: bool = False, default_text: Optional[str] = None, **argparse_kw):
    """A GenerationSettings field. flag: its option (default: --name-with-dashes); key: its name in
    generation.json (default: the field's); in_samples: a length in seconds, stored as samples at the
    model's rate; since_v1: every generation.json has it (else older ones read as the default);
    path: a file or folder, stored resolved; default_text: the help's [default: ...] (None: the
    default itself, left out when it is None or False); argparse_kw: type, choices, action, metavar."""
    return field(default=default, metadata={"help": help, "flag": flag, "key": key, "in_samples": in_samples,
                                            "since_v1": since_v1, "path": path, "default_text": default_text,
                                            "argparse": argparse_kw})


PRECISION_HELP = (
    "weights of the generation backends (cpu, folded; triton and cuda take fp32 and bf16). "
    "fp32: the reference, no check. bf16: frame and sample tiers in bf16, half the weight bytes "
    "per frame. int8: the frame tier's weights in int8 with a scale per row (a quarter of fp32's "
    "bytes), sample tier in bf16. dadabots-2tier at one sequence on a 2-core CPU, cpu backend: "
    "fp32 6.4, bf16 3.5, int8 1.9 ms per frame (2.5 k, 4.5 k, 8.5 k samples/s; BENCHMARKS.md); "
    "on a model trained on real music both cost under 0.0002 bits/sample of test NLL. Before bf16 or int8 "
    "generate, a guard measures the teacher-forced NLL with fp32 and with the lower precision on the same data, "
    f"same backend, and refuses a loss over {MAX_NLL_DELTA_BITS:g} bits/sample (it prints both NLLs; bf16 on the "
    "cpu backend: about 0.5 s for 'tiny', 15 s for 'dadabots-2tier' on a 2-core CPU; once per run)")


@dataclass(frozen=True)
class GenerationSettings:
    """The options that define a generation: stored in generation.json, kept by a resume (given
    again with --resume, each must agree with the stored value)."""

    seconds: float = _opt(30.0, "seconds of audio per sequence", type=float)
    n_seq: int = _opt(1, "sequences generated in parallel, one file each", type=int)
    temperature: Union[float, Tuple[float, ...]] = _opt(
        1.0, "sampling temperature, or one per sequence: 0.9,1.0,1.1", type=parse_temperature)
    argmax: bool = _opt(False, "take the most likely sample instead of sampling", action="store_true")
    top_k: int = _opt(0, "sample only among the K most likely levels (every level tied with the K-th kept; "
                      "0: all)", since_v1=False, type=int, metavar="K")
    top_p: float = _opt(1.0, "then only among the fewest most likely levels that hold a fraction P of their "
                        "probability (nucleus sampling; 1: all)", since_v1=False, type=float, metavar="P")
    h0: str = _opt("learned", "initial RNN state: the learned one, or random U[-0.5, 0.5] (more varied music)",
                   choices=H0S)
    seed: int = _opt(0, "random seed: same seed, same audio", type=int)
    prime: Optional[str] = _opt(None, "continue this recording (any format soundfile reads)", since_v1=False,
                                path=True, metavar="AUDIO")
    prime_seconds: Optional[float] = _opt(None, "use only the last N seconds of --prime", since_v1=False, type=float)
    audio_format: str = _opt("wav", "final audio format", flag="--format", choices=AUDIO_FORMATS)
    normalize: str = _opt("peak", "peak-normalize each finished file to 0.9 (gain capped at 10x) or keep the "
                          "model's level", choices=NORMALIZE)
    chunk_seconds: float = _opt(1.0, "audio copied to the host and written per chunk", key="chunk_samples",
                                in_samples=True, type=float)
    save_every: float = _opt(10.0, "save the resumable state every N seconds of audio", key="save_every_samples",
                             in_samples=True, type=float)
    precision: str = _opt("fp32", PRECISION_HELP, since_v1=False, choices=PRECISIONS)
    precision_data: Optional[str] = _opt(
        None, "prepared dataset whose test split the --precision guard measures on", since_v1=False, path=True,
        default_text="the dataset recorded in the checkpoint's run folder (RUN/config.json) when it still exists, "
                     "else 4 x 1 s of audio the fp32 model generates itself (seed 0): how far the precision moves "
                     "the model's own distribution", metavar="DATA")

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        for name in ("seconds", "chunk_seconds", "save_every"):
            put(name, _check_float(flag(name), getattr(self, name)))
        if self.prime_seconds is not None:
            if self.prime is None:
                raise ValueError("--prime-seconds needs --prime (the recording to continue)")
            put("prime_seconds", _check_float("--prime-seconds", self.prime_seconds))
        put("n_seq", check_int("--n-seq", self.n_seq, 1))
        check_int("--seed", self.seed)
        check_temperature(self.temperature, "--temperature", "--argmax")
        if isinstance(self.temperature, (list, tuple)):
            if len(self.temperature) != self.n_seq:
                raise ValueError(f"--temperature gives {len(self.temperature)} values for --n-seq {self.n_seq}: "
                                 "give one, or one per sequence")
            put("temperature", tuple(float(t) for t in self.temperature))
        if not isinstance(self.argmax, bool):
            raise TypeError(f"--argmax must be true or false, got {self.argmax!r}")
        put("top_k", check_top_k(self.top_k, "--top-k"))
        put("top_p", check_top_p(self.top_p, "--top-p"))
        _check_precision_name(self.precision)
        for f in fields(self):
            choices = f.metadata["argparse"].get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(f"{flag(f.name)} must be {' or '.join(map(repr, choices))}, "
                                 f"got {getattr(self, f.name)!r}")
            if f.metadata["path"] and isinstance(getattr(self, f.name), Path):
                put(f.name, str(getattr(self, f.name)))

    def generator_options(self) -> Dict[str, Any]:
        """The Generator's keyword arguments these settings fix."""
        t = list(self.temperature) if isinstance(self.temperature, tuple) else self.temperature
        return dict(temperature=t, argmax=self.argmax, top_k=self.top_k, top_p=self.top_p, h0=self.h0,
                    seed=self.seed, precision=self.precision, precision_data=self.precision_data)

    def to_dict(self, sample_rate: int) -> Dict[str, Any]:
        """The settings as generation.json stores them: lengths in samples at ``sample_rate``, paths resolved."""
        return {_key(f): _stored(f, getattr(self, f.name), sample_rate) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GenerationSettings":
        """Read back from a generation.json dict (its ``sample_rate`` converts the lengths stored in
        samples); a key an older file lacks takes its field's default."""
        kw = {}
        for f in fields(cls):
            if _key(f) in d:
                v = d[_key(f)]
                kw[f.name] = v / d["sample_rate"] if f.metadata["in_samples"] else v
        return cls(**kw)

    @classmethod
    def v1_keys(cls) -> Tuple[str, ...]:
        """The keys every generation.json holds (the others were added since)."""
        return tuple(_key(f) for f in fields(cls) if f.metadata["since_v1"])

    def differences(self, given: Dict[str, Any], sample_rate: int) -> List[str]:
        """'--flag value (stored: x)' for each option in ``given`` (field name -> value, None = not
        given) that would store something else than these settings."""
        wrong = []
        for f in fields(self):
            value = given.get(f.name)
            if value is not None and _stored(f, value, sample_rate) != _stored(f, getattr(self, f.name), sample_rate):
                shown = ",".join(f"{t:g}" for t in value) if isinstance(value, (list, tuple)) else value
                mine = getattr(self, f.name)
                mine = ",".join(f"{t:g}" for t in mine) if isinstance(mine, tuple) else mine
                wrong.append(f"{flag(f.name)} {shown} (stored: {mine:g})" if isinstance(mine, float) else
                             f"{flag(f.name)} {shown} (stored: {mine})")
        return wrong


def flag(name: str) -> str:
    """The command-line option of a GenerationSettings field."""
    f = _FIELDS[name]
    return f.metadata["flag"] or "--" + name.replace("_", "-")


def _key(f) -> str:
    return f.metadata["key"] or f.name


def _stored(f, value, sample_rate: int):
    """One field's value as generation.json holds it."""
    if value is None:
        return None
    if f.metadata["in_samples"]:
        return _samples(value, sample_rate)
    if f.metadata["path"]:
        return str(Path(value).resolve())
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return value


def _samples(seconds: float, sample_rate: int) -> int:
    """Whole samples in ``seconds`` (rounded down, as before GenerationSettings), except that a
    product within float noise of a whole count is that count: from_dict's samples / rate read back
    (e.g. 131062 / 800 * 800 = 131061.99999999999) stores the same number again."""
    x = seconds * sample_rate
    n = round(x)
    return n if abs(x - n) <= 1e-9 * max(1.0, abs(x)) else int(x)


_FIELDS = {f.name: f for f in fields(GenerationSettings)}


def add_flags(p: argparse.ArgumentParser) -> None:
    """One option per GenerationSettings field, default None (= not given: the field's default, or
    on --resume the stored value)."""
    for f in fields(GenerationSettings):
        text = f.metadata["default_text"]
        if text is None and f.default is not None and f.default is not False:
            text = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
        help_text = f.metadata["help"] + (f" [default: {text}]" if text is not None else "")
        p.add_argument(flag(f.name), dest=f.name, default=None, help=help_text, **f.metadata["argparse"])


def given_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The GenerationSettings options given on the command line (field name -> value)."""
    return {f.name: getattr(args, f.name) for f in fields(GenerationSettings) if getattr(args, f.name) is not None}
