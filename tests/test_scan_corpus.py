"""Every known way for a model file to run code is flagged; ordinary model files are not."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.core.results import severity_rank
from bastion.supplychain import detect_format, scan_path

from .scan_corpus import benign_cases, bypass_cases, malicious_cases, write_cases

MALICIOUS = malicious_cases() + bypass_cases()
GROUPS = sorted({c.group for c in MALICIOUS})


@pytest.fixture(scope="module")
def benign_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("benign")
    write_cases(list(benign_cases()), folder)
    return folder


def _mentions(report, needle: str) -> bool:
    return any(needle in f.title or needle == f.metric or needle in str(f.evidence.get("global"))
               for f in report.findings)


@pytest.mark.parametrize("group", GROUPS)
def test_malicious_files_are_flagged(group: str, tmp_path: Path) -> None:
    cases = [c for c in MALICIOUS if c.group == group]
    for case, path in zip(cases, write_cases(cases, tmp_path), strict=True):
        report = scan_path(path)
        worst = report.worst_severity()
        assert worst is not None and severity_rank(worst) >= severity_rank(case.min_severity), \
            f"{case.name}: worst {worst}, expected at least {case.min_severity}"
        assert not report.is_clean(min_severity="high"), case.name
        assert case.expect is None or _mentions(report, case.expect), f"{case.name}: {case.expect} not reported"


def test_findings_locate_the_opcode(tmp_path: Path) -> None:
    case = next(c for c in MALICIOUS if c.name == "torch_data_pkl.pt")
    path = write_cases([case], tmp_path)[0]
    finding = next(f for f in scan_path(path).findings if f.evidence.get("global") == "os.system")
    assert finding.family == "supply_chain" and finding.severity == "critical"
    assert finding.evidence["file"] == str(path)
    assert finding.evidence["member"] == "archive/data.pkl"
    assert finding.evidence["offset"] == 2 and finding.evidence["opcode"] == "GLOBAL"
    assert finding.evidence["argument"] == "echo pwned"
    assert "AML.T0010.003" in finding.atlas and finding.owasp


def test_nested_payload_names_the_inner_member(tmp_path: Path) -> None:
    case = next(c for c in MALICIOUS if c.name == "nested_loads_b64_zlib.pkl")
    report = scan_path(write_cases([case], tmp_path)[0])
    inner = [f for f in report.findings if f.evidence.get("global") == "os.system"]
    assert inner and inner[0].evidence["member"].startswith("<pickle.loads@")


def test_ordinary_model_files_are_clean(benign_folder: Path) -> None:
    report = scan_path(benign_folder)
    flagged = [f.title for f in report.findings if severity_rank(f.severity) >= severity_rank("low")]
    assert flagged == []
    assert report.is_clean() and not report.errors
    assert len(report.files) == len(benign_cases()) >= 40
    assert all(len(s.sha256) == 64 for s in report.files)


def test_bypass_corpus_covers_every_class_of_issue_14() -> None:
    assert {"parity", "archive", "template", "bounds"} <= set(GROUPS)
    assert {"chatml_tokenizer_config.json", "llama3_tokenizer_config.json", "ckpt_adam.pt", "quantized.pt",
            "sparse.pt", "args_paths.pkl", "sk_forest.joblib"} <= {c.name for c in benign_cases()}


@pytest.mark.parametrize(("name", "fmt"), [
    ("state_dict.pt", "pytorch-zip"), ("legacy_state_dict.pt", "pytorch-legacy"), ("sk_forest.joblib", "joblib"),
    ("sk_logreg.joblib.xz", "joblib"), ("sk_svc_p5.pkl", "pickle"), ("floats.npy", "numpy"), ("dataset.npz", "npz"),
    ("weights.safetensors", "safetensors"), ("model.onnx", "onnx"), ("dense.keras", "keras"),
    ("dense_legacy.h5", "h5"), ("sk_logreg.skops", "skops"), ("traced.torchscript.pt", "torchscript"),
    ("chat.gguf", "gguf"), ("README.md", "unknown"),
])
def test_detect_format_reads_bytes_not_names(benign_folder: Path, tmp_path: Path, name: str, fmt: str) -> None:
    renamed = tmp_path / "model.bin"  # the name says nothing
    renamed.write_bytes((benign_folder / name).read_bytes())
    assert detect_format(renamed) == fmt
