"""Hostile inputs on every command: each ends in exit code 2 and one clear line, never a traceback or an
"internal error"; outputs never overwrite inputs; an empty scan has its own exit code."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.cli.main import run
from bastion.core.data import Dataset, save_npz
from bastion.models.export import save_model
from bastion.models.metadata import METADATA_KEY, ModelMetadata
from bastion.report.markdown import md_code, md_escape
from bastion.store.sqlite import RunStore

NO_SANDBOX_WARNING = "bastion: --no-sandbox:"


def cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        run(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith(NO_SANDBOX_WARNING)]
    return done.value.code, "\n".join(lines)


def assert_one_clear_line(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err and "internal error" not in err, err
    assert message in err, err


# -- builders of hostile files ---------------------------------------------------------------------------------
def npy_bytes(shape: tuple[int, ...], descr: str = "<f4", payload: bytes = b"\0" * 64) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


def npz_declaring(tmp: Path, shape: tuple[int, ...]) -> Path:
    path = tmp / "declares.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", npy_bytes(shape))
        archive.writestr("y.npy", npy_bytes((4,), "<i8", b"\0" * 32))
    return path


def idx_overflow(tmp: Path) -> Path:
    images = tmp / "t-images-idx3-ubyte"
    images.write_bytes(b"\0\0\x08\x03" + struct.pack(">III", 2**32 - 1, 2**32 - 1, 2**32 - 1))
    (tmp / "t-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 2) + b"\0\1")
    return images


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height (decoders allocate from it before reading any pixel)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def image_folder(tmp: Path, width: int, height: int) -> Path:
    from PIL import Image

    folder = tmp / "images"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        Image.new("L", (2, 2)).save(folder / cls / "ok.png")
    png_header_only(folder / "a" / "bomb.png", width, height)
    return folder


def model_with_metadata(tmp: Path, meta: object) -> Path:
    path = tmp / "meta.pt"
    traced = torch.jit.trace(torch.nn.Linear(4, 2).eval(), torch.zeros(2, 4))
    torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: json.dumps(meta)})
    return path


def safetensors_with_header(tmp: Path, header: object) -> Path:
    path = tmp / "w.safetensors"
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 8)
    return path


def foreign_sqlite(tmp: Path) -> Path:
    path = tmp / "foreign.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (a, b)")
    return path


def corrupt_run(tmp: Path) -> Path:
    path = tmp / "runs.sqlite"
    with RunStore(path) as store, store.conn:
        store.conn.execute("INSERT INTO runs (id, created, status, model, inputs, plan) "
                           "VALUES ('run1', 'now', 'complete', 'm', '{not json', '{}')")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "d.npz"
    save_npz(Dataset(np.random.default_rng(0).random((6, 4)), np.arange(6) % 2), data)
    model = tmp_path / "m.pt"
    save_model(torch.nn.Linear(4, 2), model, ModelMetadata(n_classes=2, input_shape=[4], bounds=[0, 1]))
    return {"data": data, "model": model, "tmp": tmp_path}


# (id, build(tmp) -> path, argv with {path}, {model}, {data}, {tmp}, expected words)
Builder = Callable[[Path], object]
CASES: list[tuple[str, Builder, list[str], str]] = [
    ("npz declaring 37 GiB", lambda t: npz_declaring(t, (100_000, 100_000)),
     ["attack", "evasion", "fgsm", "{model}", "--data", "{path}"], "above the 2 GiB limit"),
    ("npz declaring more than it holds", lambda t: npz_declaring(t, (4, 1000)),
     ["attack", "evasion", "fgsm", "{model}", "--data", "{path}"], "declares 16000 bytes"),
    ("IDX dims that overflow", idx_overflow,
     ["attack", "evasion", "fgsm", "{model}", "--data", "{path}"], "IDX header declares"),
    ("PNG decompression bomb", lambda t: image_folder(t, 30_000, 30_000),
     ["attack", "evasion", "fgsm", "{model}", "--data", "{path}"], "decompression bomb"),
    ("PNG above the pixel cap", lambda t: image_folder(t, 8_000, 8_000),
     ["attack", "evasion", "fgsm", "{model}", "--data", "{path}"], "pixel limit"),
    ("CSV label that overflows", lambda t: (t / "l.csv").write_text("a,b,y\n1,2," + "9" * 30 + "\n") and t / "l.csv",
     ["attack", "evasion", "fgsm", "{model}", "--data", "{path}"], "labels must be whole numbers"),
    ("a pipe as data", lambda t: os.mkfifo(t / "pipe") or t / "pipe",
     ["attack", "evasion", "fgsm", "{model}", "--data", "{path}"], "not a regular file"),
    ("bastion.json input_shape abc", lambda t: model_with_metadata(t, {"n_classes": 2, "input_shape": "abc"}),
     ["attack", "evasion", "fgsm", "{path}", "--data", "{data}", "--no-sandbox"], "input_shape must be"),
    ("bastion.json n_classes text", lambda t: model_with_metadata(t, {"n_classes": "ten", "input_shape": [4]}),
     ["attack", "evasion", "fgsm", "{path}", "--data", "{data}", "--no-sandbox"], "n_classes must be"),
    ("bastion.json bounds reversed", lambda t: model_with_metadata(t, {"n_classes": 2, "bounds": [1, 0]}),
     ["attack", "evasion", "fgsm", "{path}", "--data", "{data}", "--no-sandbox"], "bounds must be"),
    ("bastion.json a list", lambda t: model_with_metadata(t, [1, 2]),
     ["attack", "evasion", "fgsm", "{path}", "--data", "{data}", "--no-sandbox"], "not an object"),
    ("safetensors __metadata__ not an object", lambda t: safetensors_with_header(t, {"__metadata__": "x"}),
     ["attack", "evasion", "fgsm", "{path}", "--data", "{data}", "--arch", "torch.nn:Linear", "--no-sandbox"],
     "corrupt safetensors header"),
    ("seed 10**29 (attack)", lambda t: None,
     ["attack", "evasion", "square", "{model}", "--data", "{data}", "--seed", str(10**29)], "--seed must be"),
    ("seed -1 (defend)", lambda t: None,
     ["defend", "neural-cleanse", "{model}", "--data", "{data}", "--seed", "-1"], "--seed must be"),
    ("seed 10**29 (assess)", lambda t: None,
     ["assess", "{model}", "--data", "{data}", "--no-store", "--seed", str(10**29)], "--seed must be"),
    ("seed 10**29 (demo)", lambda t: None, ["demo", "--seed", str(10**29)], "--seed must be"),
    ("n-samples -1", lambda t: None,
     ["attack", "evasion", "fgsm", "{model}", "--data", "{data}", "--n-samples", "-1"], "--n-samples"),
    ("foreign SQLite as the run store", foreign_sqlite, ["report", "list", "--store", "{path}"],
     "not a Bastion run store"),
    ("foreign SQLite for assess", foreign_sqlite,
     ["assess", "{model}", "--data", "{data}", "--store", "{path}", "--out", "{tmp}/r"], "not a Bastion run store"),
    ("corrupt run in the store", corrupt_run, ["report", "show", "run1", "--store", "{path}"], "is corrupt"),
    ("run reference last~10**23", corrupt_run, ["report", "show", "last~" + "9" * 23, "--store", "{path}"],
     "bad run"),
    ("scan --sarif in an unwritable place", lambda t: None, ["scan", "{model}", "--sarif", "/proc/none/x.sarif"],
     "cannot be written"),
    ("scan --sarif onto the model", lambda t: None, ["scan", "{model}", "--sarif", "{model}"],
     "would destroy the input"),
    ("scan --manifest onto a scanned model", lambda t: None, ["scan", "{tmp}", "--manifest", "{model}"],
     "would destroy the input"),
    ("scan --sarif is --manifest", lambda t: None,
     ["scan", "{model}", "--sarif", "{tmp}/o.json", "--manifest", "{tmp}/o.json"], "same file"),
    ("assess --out onto the model", lambda t: None,
     ["assess", "{model}", "--data", "{data}", "--no-store", "--out", "{model}"], "is an input"),
    ("assess --out inside the data folder", lambda t: image_folder(t, 2, 2),
     ["assess", "{model}", "--data", "{path}", "--no-store", "--out", "{path}/report"], "inside the input folder"),
    ("assess --out under a file", lambda t: None,
     ["assess", "{model}", "--data", "{data}", "--no-store", "--out", "{data}/report"], "cannot be written"),
    ("demo --out a file", lambda t: None, ["demo", "--out", "{data}"], "is a file"),
    ("defend --out onto the model", lambda t: None,
     ["defend", "adv-train", "{model}", "--train-data", "{data}", "--out", "{model}"], "would destroy the input"),
]


@pytest.mark.parametrize("build, argv, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_clear_line(files, capsys, build, argv, message):
    path = build(files["tmp"])
    before = {p: p.read_bytes() for p in (files["model"], files["data"])}
    values = {"path": str(path), "model": str(files["model"]), "data": str(files["data"]), "tmp": str(files["tmp"])}
    code, err = cli([arg.format(**values) for arg in argv], capsys)
    assert_one_clear_line(code, err, message)
    assert {p: p.read_bytes() for p in before} == before  # no input was touched


def test_conversions_that_collide_are_refused(files, capsys):
    for folder, value in (("a", 1.0), ("b", 2.0)):
        (files["tmp"] / folder).mkdir()
        torch.save({"w": torch.full((2,), value)}, files["tmp"] / folder / "w.pt")
    out = files["tmp"] / "converted"
    code, err = cli(["scan", str(files["tmp"] / "a"), str(files["tmp"] / "b"), "--convert-to-safetensors",
                     "--out-dir", str(out)], capsys)
    assert_one_clear_line(code, err, "would both be written to")
    assert not list(out.glob("*"))
    torch.save({"w": torch.zeros(3)}, files["tmp"] / "a" / "w.bin")  # same stem, same folder
    code, err = cli(["scan", str(files["tmp"] / "a"), "--convert-to-safetensors"], capsys)
    assert_one_clear_line(code, err, "would both be written to")


def test_conversion_never_overwrites_a_scanned_file_but_redoes_its_own(files, capsys):
    folder = files["tmp"] / "c"
    folder.mkdir()
    torch.save({"w": torch.ones(2)}, folder / "w.pt")
    assert cli(["scan", str(folder), "--convert-to-safetensors"], capsys)[0] == 0
    assert cli(["scan", str(folder), "--convert-to-safetensors"], capsys)[0] == 0  # its own earlier conversion
    (folder / "w.safetensors").write_bytes(b"someone else's file")
    code, err = cli(["scan", str(folder), "--convert-to-safetensors"], capsys)
    assert_one_clear_line(code, err, "would overwrite the scanned file")
    assert (folder / "w.safetensors").read_bytes() == b"someone else's file"


def test_a_scan_with_nothing_to_scan_has_its_own_exit_code(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    code, err = cli(["scan", str(tmp_path / "empty")], capsys)
    assert code == 3 and err.startswith("error: nothing to scan") and len(err.splitlines()) == 1


def test_resume_refuses_changed_data(files, capsys):
    store_path = files["tmp"] / "runs.sqlite"
    inputs = {"model": str(files["model"]), "data": {"path": str(files["data"])}, "train_data": None}
    with RunStore(store_path) as store:
        store.create_run("run1", inputs, {}, None, "local", 0)
        assert store.run("run1")["inputs"]["data"]["sha256"]
    save_npz(Dataset(np.ones((6, 4)), np.arange(6) % 2), files["data"])
    code, err = cli(["assess", "--resume", "run1", "--store", str(store_path)], capsys)
    assert_one_clear_line(code, err, "changed since run run1 started")


def test_report_folder_is_checked_and_created_before_the_run(files, capsys, monkeypatch):
    from bastion.assess import runner

    def must_not_run(*args, **kwargs):
        raise AssertionError("the run started before --out was checked")

    monkeypatch.setattr(runner.Runner, "run", must_not_run)
    blocker = files["tmp"] / "blocker"
    blocker.write_text("a file")
    code, err = cli(["assess", str(files["model"]), "--data", str(files["data"]), "--no-store",
                     "--out", str(blocker / "r")], capsys)
    assert_one_clear_line(code, err, "cannot be written")


def test_markdown_and_html_in_names_are_escaped():
    from bastion.assess.assessment import Assessment
    from bastion.core.results import Finding
    from bastion.families.base import FamilyReport
    from bastion.report import render

    evil = "x](https://evil.example)<img src=x onerror=alert(1)> **bold** @team |col| `code`\n# heading"
    finding = Finding(title=f"pickle imports os.system in member {evil}", family="supply_chain", severity="high",
                      metric="m", evidence={"member": evil})
    family = FamilyReport("supply_chain", "Supply chain", "assessed", grade="D", reason=evil, findings=[finding])
    a = Assessment(run_id="r", created="2024-01-01T00:00:00+00:00", status="complete", families=[family],
                   inputs={"model": evil}, model={"name": evil}, grade="D")
    text = render(a, "md")
    heading = f"## Bastion assessment of {md_code(a.title)}: grade **D**"
    assert text.startswith(heading + "\n")  # names sit in a code span they cannot close: shown literally
    rest = text[len(heading):]
    assert "<img" not in rest and "\n# heading" not in rest
    for raw in (r"\]\(https", r"\*\*bold", r"@team", r"\|col", r"`code"):  # each only in its escaped form
        assert not re.search(r"(?<!\\)" + raw, rest), raw
    assert "&lt;img" in text and "\\*\\*bold\\*\\*" in text and "\\@team" in text
    assert md_escape("a\nb|c") == "a b\\|c"
    assert md_code("a``b") == "```a``b```" and md_code("`x") == "`` `x ``"
