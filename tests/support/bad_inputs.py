"""The bad-input corpus: what an unlucky operator or a hostile file can hand qtha, and what each must give.

Each :class:`BadInput` names its area (data, configuration, overrides, metrics, checkpoints, cli), the documented
exit status of the command that meets it (the README's table: 0 ok, 1 failure, 2 usage or bad configuration,
5 environment not ready) and a fragment of the one-line message. ``tests/agent/test_bad_inputs.py`` runs them all.

Data inputs go both through ``qtha ingest FILE`` (exit 1, one line) and into the inbox as the daemon's ingest job
meets them (quarantined with a reason, every line accounted for). Inputs are built by functions rather than stored
as files: FIFOs, symlinks, names that are not UTF-8 and 200 kB nestings do not live well in git.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Area = Literal["data", "configuration", "overrides", "metrics", "checkpoints", "cli"]

__all__ = ["CORPUS", "Area", "BadInput", "Maker"]

# A data maker creates the entry at the given path (file, FIFO, symlink, directory) and returns the path it made
# (it may differ, e.g. a name that is not UTF-8).
Maker = Callable[[Path], Path]


@dataclass(frozen=True)
class BadInput:
    """One corpus entry.

    Attributes:
        id: the test id.
        area: what it exercises.
        exit_code: the documented exit status of the command that meets it.
        needle: a fragment of the one-line message.
        make: data: builds the inbox entry; checkpoints: builds a model directory or file.
        args: configuration/overrides/metrics/cli: the ``qtha`` arguments (``{toml}`` is the corpus config file).
        toml: configuration: the file's text; env: extra environment.
        stored_override: overrides stored in the database (by an older qtha or a manual edit) before ``args`` run.
    """

    id: str
    area: Area
    exit_code: int
    needle: str
    make: Maker | None = None
    args: tuple[str, ...] = ()
    toml: str = ""
    env: tuple[tuple[str, str], ...] = ()
    stored_override: tuple[str, object] | None = None


GOOD_LINE = '{"prompt": "What is 2 plus 2?", "answer": "4"}'


def _file(content: str | bytes, name: str = "x.jsonl") -> Maker:
    def make(directory: Path) -> Path:
        path = directory / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        return path

    return make


def _lines(*lines: str) -> Maker:
    # A good line first: the whole file is refused, so the good line must come back in the quarantine too.
    return _file("\n".join((GOOD_LINE, *lines)) + "\n")


def _fifo(directory: Path) -> Path:
    path = directory / "pipe.jsonl"
    os.mkfifo(path)
    return path


def _directory(directory: Path) -> Path:
    path = directory / "dir.jsonl"
    path.mkdir()
    (path / "inner.jsonl").write_text(GOOD_LINE + "\n")
    return path


def _symlink_out(directory: Path) -> Path:
    outside = directory.parent / f"outside-{directory.name}"
    outside.mkdir(exist_ok=True)
    os.mkfifo(outside / "target.jsonl")  # `qtha ingest` follows a link it is given: a FIFO still must not hang it
    path = directory / "link.jsonl"
    path.symlink_to(outside / "target.jsonl")
    return path


def _latin1_name(directory: Path) -> Path:
    raw = os.fsencode(directory) + b"/caf\xe9.jsonl"
    with open(raw, "w", encoding="utf-8") as handle:
        handle.write(GOOD_LINE + "\n")
    return Path(os.fsdecode(raw))


DEEP = "[" * 100_000 + "]" * 100_000

_DATA = [
    BadInput("json-syntax", "data", 1, "line 2: not valid JSON", _lines('{"prompt": "x"')),
    BadInput("json-trailing-data", "data", 1, "Extra data", _lines('{"prompt": "a", "answer": "b"} {}')),
    BadInput("json-100k-nesting", "data", 1, "nested too deeply", _lines(DEEP)),
    BadInput("json-100k-nesting-in-value", "data", 1, "nested too deeply",
             _lines('{"prompt": ' + DEEP + ', "answer": "b"}')),
    BadInput("json-5000-digit-int", "data", 1, "a number with 5000 characters",
             _lines('{"prompt": "a", "answer": "b", "id": ' + "7" * 5000 + "}")),
    BadInput("json-huge-float", "data", 1, "1e99999 is not a finite number", _lines('{"prompt": "a", "answer": "b", "id": 1e99999}')),
    BadInput("json-nan", "data", 1, "NaN is not a JSON number", _lines('{"prompt": "a", "answer": "b", "id": NaN}')),
    BadInput("json-infinity", "data", 1, "Infinity is not a JSON number",
             _lines('{"prompt": "a", "answer": "b", "id": Infinity}')),
    BadInput("lone-high-surrogate", "data", 1, "lone surrogate", _lines('{"prompt": "\\ud800", "answer": "b"}')),
    BadInput("lone-low-surrogate", "data", 1, "lone surrogate", _lines('{"prompt": "a", "answer": "z\\udc00"}')),
    BadInput("raw-surrogate-bytes", "data", 1, "not UTF-8", _file(GOOD_LINE.encode() + b'\n{"prompt": "\xed\xa0\x80"}\n')),
    BadInput("latin1-bytes", "data", 1, "not UTF-8", _file(b'{"prompt": "caf\xe9", "answer": "y"}\n')),
    BadInput("utf16-bom", "data", 1, "not UTF-8", _file(GOOD_LINE.encode("utf-16"))),
    BadInput("control-char-raw", "data", 1, "Invalid control character", _lines('{"prompt": "a\tb", "answer": "c"}')),
    BadInput("not-an-object", "data", 1, "expected a JSON object", _lines("[1, 2, 3]")),
    BadInput("unknown-key", "data", 1, "unknown keys ['answr']", _lines('{"prompt": "a", "answr": "b"}')),
    BadInput("answer-and-response", "data", 1, "not both", _lines('{"prompt": "a", "answer": "b", "response": "c"}')),
    BadInput("blank-prompt", "data", 1, "'prompt' must be a non-empty string", _lines('{"prompt": " ", "answer": "b"}')),
    BadInput("number-answer", "data", 1, "'answer' must be a non-empty string", _lines('{"prompt": "a", "answer": 4}')),
    BadInput("overlong-prompt", "data", 1, "the limit is 8192",
             _lines(json.dumps({"prompt": "x" * 8193, "answer": "b"}))),
    BadInput("bool-id", "data", 1, "'id' must be a string or an integer", _lines('{"prompt": "a", "answer": "b", "id": false}')),
    BadInput("empty-file", "data", 1, "no examples", _file("\n \n")),
    BadInput("csv-name", "data", 1, "does not end in .jsonl", _file(GOOD_LINE + "\n", name="data.csv")),
    BadInput("fifo", "data", 1, "FIFO", _fifo),
    BadInput("directory", "data", 1, "directory", _directory),
    BadInput("symlink-out", "data", 1, "FIFO", _symlink_out),  # inbox: "symlink"; ingest: follows, then FIFO
    BadInput("non-utf8-name", "data", 1, "not UTF-8", _latin1_name),
]

_CONFIG = [
    BadInput("cooldown-inf", "configuration", 2, "policy.cooldown_s = inf", toml="[policy]\ncooldown_s = inf\n"),
    BadInput("cooldown-nan", "configuration", 2, "policy.cooldown_s = nan", toml="[policy]\ncooldown_s = nan\n"),
    BadInput("evaluate-interval-inf", "configuration", 2, "scheduler.evaluate_interval_s",
             toml="[scheduler]\nevaluate_interval_s = inf\n"),
    BadInput("interval-1e300", "configuration", 2, "at most 315360000 seconds",
             toml="[scheduler]\nconsider_interval_s = 1e300\n"),
    BadInput("quiet-hours-25-99", "configuration", 2, "policy.quiet_hours", toml="[policy]\nquiet_hours = [25, 99]\n"),
    BadInput("quiet-hours-empty-window", "configuration", 2, "start and end must differ",
             toml="[policy]\nquiet_hours = [3, 3]\n"),
    BadInput("drift-metric-empty", "configuration", 2, "policy.drift_metric", toml='[policy]\ndrift_metric = ""\n'),
    BadInput("port-zero", "configuration", 2, "metrics.port", toml="[metrics]\nport = 0\n"),
    BadInput("unknown-config-key", "configuration", 2, "unknown key", toml="[metrics]\nprot = 1\n"),
    BadInput("not-toml", "configuration", 2, "not valid TOML", toml="[metrics\n"),
    BadInput("huge-int", "configuration", 2, "policy.min_new_examples",
             toml="[policy]\nmin_new_examples = 99999999999999999999999\n"),
    BadInput("env-inf", "configuration", 2, "QTHA_POLICY__COOLDOWN_S", env=(("QTHA_POLICY__COOLDOWN_S", "inf"),)),
    BadInput("bad-database-url", "configuration", 2, "not a database URL", args=("daemon", "--config", "{toml}"),
             env=(("QTHA_DATABASE__URL", "garbage"),)),
    BadInput("unreachable-postgresql", "configuration", 5, "cannot reach PostgreSQL",
             args=("daemon", "--config", "{toml}"),
             env=(("QTHA_DATABASE__URL", "postgresql+psycopg://qtha:secret@127.0.0.1:1/qtha"),)),
    BadInput("state-dir-is-a-file", "configuration", 5, "is a file, not a directory",
             args=("daemon", "--config", "{toml}"), env=(("QTHA_STATE_DIR", "{file}"),)),
    BadInput("model-does-not-load", "configuration", 2, "does not load", args=("daemon", "--config", "{toml}"),
             env=(("QTHA_DAEMON__CHECK_MODEL", "true"), ("QTHA_MODEL__SOURCE", "/nonexistent/model.gguf"),
                  ("QTHA_METRICS__ENABLED", "false"))),
    BadInput("port-in-use", "configuration", 5, "is in use", args=("daemon", "--config", "{toml}"),
             env=(("QTHA_METRICS__PORT", "{busy_port}"),)),
]

_OVERRIDES = [
    BadInput("set-cooldown-inf", "overrides", 2, "finite number", args=("policy", "set", "cooldown_s=inf")),
    BadInput("set-cooldown-nan", "overrides", 2, "finite number", args=("policy", "set", "cooldown_s=NaN")),
    BadInput("set-cooldown-5000-digits", "overrides", 2, "chars)", args=("policy", "set", "cooldown_s=" + "9" * 5000)),
    BadInput("set-quiet-hours-25-99", "overrides", 2, "less than or equal to 23",
             args=("policy", "set", "quiet_hours=[25, 99]")),
    BadInput("set-quiet-hours-string", "overrides", 2, "quiet_hours", args=("policy", "set", "quiet_hours=night")),
    BadInput("set-drift-metric-empty", "overrides", 2, "at least 1 character", args=("policy", "set", "drift_metric=")),
    BadInput("set-unknown-key", "overrides", 2, "unknown policy key", args=("policy", "set", "cooldown=5")),
    BadInput("set-no-equals", "overrides", 2, "must look like KEY=VALUE", args=("policy", "set", "cooldown_s")),
    BadInput("set-deep-json", "overrides", 2, "quiet_hours", args=("policy", "set", "quiet_hours=" + "[" * 5000)),
    BadInput("stored-inf", "overrides", 0, "cooldown_s = inf is invalid", args=("policy", "show"),
             stored_override=("policy.cooldown_s", float("inf"))),
    BadInput("stored-quiet-hours", "overrides", 0, "quiet_hours = [25, 99] is invalid", args=("policy", "show"),
             stored_override=("policy.quiet_hours", [25, 99])),
    BadInput("stored-unknown-key", "overrides", 0, "not a policy key any more", args=("policy", "show"),
             stored_override=("policy.gone", 1)),
]

_METRICS = [
    BadInput("observe-inf", "metrics", 2, "not finite", args=("observe", "eval_mean", "inf")),
    BadInput("observe-minus-inf", "metrics", 2, "not finite", args=("observe", "eval_mean", "--", "-inf")),
    BadInput("observe-nan", "metrics", 2, "not finite", args=("observe", "eval_mean", "NaN")),
    BadInput("observe-overflow", "metrics", 2, "not finite", args=("observe", "eval_mean", "1e999")),
    BadInput("observe-text", "metrics", 2, "not a number", args=("observe", "eval_mean", "high")),
    BadInput("observe-empty-name", "metrics", 2, "metric name ''", args=("observe", "", "0.5")),
    BadInput("observe-name-with-space", "metrics", 2, "without spaces", args=("observe", "eval mean", "0.5")),
    BadInput("observe-name-u2028", "metrics", 2, "without spaces", args=("observe", "a\u2028b", "0.5")),
    BadInput("observe-long-label", "metrics", 2, "label", args=("observe", "x", "1", "--label", "k=" + "v" * 201)),
    BadInput("observe-empty-label", "metrics", 2, "must look like KEY=VALUE", args=("observe", "x", "1", "--label", "=v")),
]


def _hf(mutate: Callable[[Path], None]) -> Maker:
    def make(directory: Path) -> Path:
        from tests.fixtures.tiny_model import write_tiny_hf

        path = write_tiny_hf(directory / "ckpt")
        mutate(Path(path))
        return Path(path)

    return make


def _index_naming(shard: str) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        from safetensors.numpy import load_file

        names = list(load_file(str(path / "model.safetensors")))
        (path / "model.safetensors").unlink()
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, shard)}))

    return mutate


def _truncate(name: str, keep: int) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[:keep])

    return mutate


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda path: (path / name).write_text(text)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda path: (path / name).unlink()


def _pickle_only(path: Path) -> None:
    (path / "model.safetensors").rename(path / "pytorch_model.bin")


def _garbage_gguf(directory: Path) -> Path:
    path = directory / "model.gguf"
    path.write_bytes(b"GGUF" + os.urandom(64))
    return path


_CHECKPOINTS = [
    BadInput("index-escapes-dir", "checkpoints", 2, "not a file name inside", _hf(_index_naming("../../../etc/passwd"))),
    BadInput("index-absolute-path", "checkpoints", 2, "not a file name inside", _hf(_index_naming("/etc/passwd"))),
    BadInput("index-not-json", "checkpoints", 2, "not a valid safetensors index",
             _hf(lambda p: (_index_naming("model.safetensors")(p), _write("model.safetensors.index.json", "{")(p)))),
    BadInput("truncated-safetensors", "checkpoints", 2, "corrupt safetensors", _hf(_truncate("model.safetensors", 100))),
    BadInput("pickle-only", "checkpoints", 2, "never loads pickled", _hf(_pickle_only)),
    BadInput("no-config", "checkpoints", 2, "no config.json", _hf(_remove("config.json"))),
    BadInput("config-not-json", "checkpoints", 2, "config.json", _hf(_write("config.json", "{not json"))),
    BadInput("garbage-gguf", "checkpoints", 2, "model.gguf", _garbage_gguf),
    BadInput("missing-source", "checkpoints", 2, "no such file or directory", lambda d: d / "nowhere.gguf"),
]

_CLI = [
    BadInput("recipe-float-steps", "cli", 2, "'steps' = 1.5 must be an integer", args=("cycle", "--now", "--recipe", "steps=1.5")),
    BadInput("recipe-bool-steps", "cli", 2, "'steps' = True must be an integer", args=("cycle", "--now", "--recipe", "steps=true")),
    BadInput("recipe-zero-steps", "cli", 2, "steps = 0 must be >= 1", args=("cycle", "--now", "--recipe", "steps=0")),
    BadInput("recipe-qubits-99", "cli", 2, "qubits = 99", args=("cycle", "--now", "--recipe", "qubits=99")),
    BadInput("recipe-lr-inf", "cli", 2, "learning_rate", args=("cycle", "--now", "--recipe", "learning_rate=Infinity")),
    BadInput("recipe-lr-negative", "cli", 2, "learning_rate", args=("cycle", "--now", "--recipe", "learning_rate=-0.1")),
    BadInput("recipe-unknown-key", "cli", 2, "'stpes' is unknown", args=("cycle", "--now", "--recipe", "stpes=5")),
    BadInput("recipe-bad-adapter", "cli", 2, "adapter", args=("cycle", "--now", "--recipe", "adapter=gpt")),
    BadInput("recipe-no-equals", "cli", 2, "must look like KEY=VALUE", args=("cycle", "--now", "--recipe", "steps")),
    BadInput("recipe-5000-digit-seed", "cli", 2, "seed: the value has 5000 characters", args=("cycle", "--now", "--recipe", "seed=" + "1" * 5000)),
    BadInput("cycle-without-now", "cli", 2, "say --now", args=("cycle",)),
    BadInput("ingest-missing-file", "cli", 2, "does not exist", args=("ingest", "/nonexistent/x.jsonl")),
    BadInput("config-file-missing", "cli", 2, "does not exist", args=("status", "--config", "/nonexistent/qtha.toml")),
]

CORPUS: tuple[BadInput, ...] = (*_DATA, *_CONFIG, *_OVERRIDES, *_METRICS, *_CHECKPOINTS, *_CLI)
