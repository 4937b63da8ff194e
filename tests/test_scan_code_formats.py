"""Static checks of the formats that carry code (issue 13, acceptance 3): each hostile model of hostile_models.py is
flagged with the right finding where reading the file can show it, its benign twin and ordinary exports are clean,
and the loaders refuse what the scan flags unless --trust is given.

Endless loops (ONNX `Loop` of 2^62 iterations, a TorchScript `while` that never ends) only compute: no static
reading can tell them from a long computation, so the sandbox's deadline stops them (tests/test_sandbox_deadline.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.core.data import Dataset, save_npz
from bastion.core.errors import ModelLoadError
from bastion.models import load_target
from bastion.models.export import save_model
from bastion.supplychain import scan_path
from bastion.supplychain.torchscript_source import judge_target, read_torchscript

from . import hostile_models as H

LOOPBACK = ("127.0.0.1", 9)


def findings(path: Path) -> dict[str, list]:
    """rule -> the findings of that rule."""
    out: dict[str, list] = {}
    for f in scan_path(path).findings:
        out.setdefault(f.metric, []).append(f)
    return out


def severities(path: Path) -> dict[str, str]:
    return {rule: max(f.severity for f in fs) for rule, fs in findings(path).items()}


@pytest.fixture()
def canary(tmp_path: Path) -> Path:
    return tmp_path / "canary.txt"


# ---- the hostile models are real -------------------------------------------------------------------------------

NAIVE = {
    "pt2-use_pickle": ("pt2", lambda d, c: H.pt2_use_pickle(d, c)),
    "pt2-opaque": ("pt2", lambda d, c: H.pt2_opaque_constant(d, c)),
    "pt2-pickled-constant": ("pt2", lambda d, c: H.pt2_pickled_constant(d, c)),
    "torchscript-setstate": ("torchscript", lambda d, c: H.torchscript_from_file(d, c, "setstate")),
    "torchscript-forward": ("torchscript-forward", lambda d, c: H.torchscript_from_file(d, c, "forward")),
    "skops-savetxt": ("skops", lambda d, c: H.skops_numpy_savetxt(d, c)),
    "arch": ("arch", lambda d, c: H.arch_factory(d, c, spawn=False)),
}


@pytest.mark.parametrize("name", list(NAIVE))
def test_each_hostile_model_writes_its_canary_when_loaded_naively(tmp_path: Path, canary: Path, name: str) -> None:
    """Without Bastion (torch.export.load, torch.jit.load, skops.io.load, importing the factory) the harm happens,
    so the tests that find these files flagged and contained prove something."""
    kind, build = NAIVE[name]
    if kind == "skops":
        pytest.importorskip("skops")
    H.harms(kind, build(tmp_path, canary))
    assert canary.exists()


# ---- .pt2 ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [H.Plain, H.Bare], ids=["constants-and-buffers", "weights-only"])
def test_a_pt2_saved_by_torch_export_is_clean_and_loads(tmp_path: Path, module: type) -> None:
    path = H.export_pt2(tmp_path / "model.pt2", module())
    assert scan_path(path).findings == []
    assert load_target(path).input_shape == (4,)


def test_a_pt2_saved_by_bastion_is_clean(tmp_path: Path) -> None:
    path = save_model(H.Bare(), tmp_path / "model.pt2", H.META)
    assert scan_path(path).findings == []


@pytest.mark.parametrize("build", [H.pt2_use_pickle, H.pt2_opaque_constant, H.pt2_pickled_constant])
def test_a_pickled_pt2_payload_is_reported_and_judged_by_the_pickle_machine(tmp_path: Path, canary: Path,
                                                                             build) -> None:
    path = build(tmp_path, canary, LOOPBACK)
    found = findings(path)
    assert [f.severity for f in found["pickled-payload"]] == ["high"]
    exec_call = next(f for f in found["unsafe-global"] if f.evidence["global"].endswith((".exec", ".eval")))
    assert exec_call.severity == "critical"
    assert "/data/" in exec_call.evidence["member"]
    with pytest.raises(ModelLoadError, match=r"refusing to load .*pass --trust"):
        load_target(path)
    assert not canary.exists()


def test_use_pickle_names_the_weight_and_its_member(tmp_path: Path, canary: Path) -> None:
    (payload,) = findings(H.pt2_use_pickle(tmp_path, canary))["pickled-payload"]
    assert "'lin.weight' is marked use_pickle" in payload.title
    assert payload.evidence["member"] == "use_pickle/data/weights/weight_0"


def test_a_clean_pickle_marked_use_pickle_is_still_refused_without_trust(tmp_path: Path) -> None:
    """A use_pickle weight that the pickle machine passes (a plain tensor) still runs a full unpickle."""
    import io

    path = H.export_pt2(tmp_path / "model.pt2", H.Bare())
    rel = "data/weights/model_weights_config.json"
    config = H._config(path, rel)
    config["config"]["lin.weight"]["use_pickle"] = True
    buffer = io.BytesIO()
    torch.save(torch.nn.Parameter(torch.zeros(3, 4)), buffer)
    H._rewrite(path, {rel: json.dumps(config).encode(), "data/weights/weight_0": buffer.getvalue()})
    assert severities(path) == {"pickled-payload": "high"}
    with pytest.raises(ModelLoadError, match="use_pickle"):
        load_target(path)


def test_a_custom_object_constant_is_a_pickled_payload(tmp_path: Path, canary: Path) -> None:
    """`custom_obj_*` constants go through TorchScript's unpickler, whatever use_pickle says."""
    path = H.export_pt2(tmp_path / "model.pt2")
    rel = "data/constants/model_constants_config.json"
    config = H._config(path, rel)
    entry = config["config"]["offset"]
    old, entry["path_name"], entry["use_pickle"] = entry["path_name"], "custom_obj_0", False
    H._rewrite(path, {rel: json.dumps(config).encode(), f"data/constants/{old}": None,
                      "data/constants/custom_obj_0": H.attacker_pickle(canary)})
    found = severities(path)
    assert found["pickled-payload"] == "high" and found["unsafe-global"] == "critical"


def test_sample_inputs_and_unlisted_members_are_read(tmp_path: Path, canary: Path) -> None:
    path = H.export_pt2(tmp_path / "model.pt2")
    H._rewrite(path, {"data/sample_inputs/model.pt": H.attacker_pickle(canary),
                      "data/weights/stray": H.attacker_pickle(canary)})
    members = {f.evidence["member"] for f in findings(path)["unsafe-global"]}
    assert any(m.startswith("model/data/sample_inputs/model.pt") for m in members)
    assert any(m.startswith("model/data/weights/stray") for m in members)


def test_native_members_of_a_pt2_are_flagged(tmp_path: Path) -> None:
    path = H.pt2_native_member(tmp_path)
    (native,) = findings(path)["native-code"]
    assert native.severity == "high" and native.evidence["member"].endswith("model.so")


def test_a_pt2_without_archive_format_is_still_scanned_as_torch_export(tmp_path: Path) -> None:
    """The loader picks torch.export from models/model.json; the sniffer reads the same member, so the scanner runs
    the pt2 checks on it (no format gap to slip a pickle through) and the broken archive is refused in one line."""
    from bastion.supplychain.detect import detect_format

    path = H.export_pt2(tmp_path / "model.pt2", H.Bare())
    H._rewrite(path, {"archive_format": None})
    assert detect_format(path) == "torch-export"
    with pytest.raises(ModelLoadError, match="corrupt torch.export file") as caught:
        load_target(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("config", [b"{not json", b'{"config": []}',
                                    b'{"config": {"w": {"path_name": "../sample_inputs/model.pt", "use_pickle": 0}}}'])
def test_unreadable_payload_config_fails_closed(tmp_path: Path, config: bytes) -> None:
    path = H.export_pt2(tmp_path / "model.pt2")
    H._rewrite(path, {"data/weights/model_weights_config.json": config})
    assert severities(path)["malformed"] == "high"


@pytest.mark.parametrize("target, rule, severity", [
    ("torch.serialization.os.system", "code-python-call", "critical"),
    ("torch.ops.evil.run.default", "code-native-op", "high"),
    ("torch.ops.aten.from_file.default", "code-file-access", "critical"),
])
def test_graph_call_targets_are_judged(tmp_path: Path, target: str, rule: str, severity: str) -> None:
    path = H.export_pt2(tmp_path / "model.pt2", H.Bare())
    with zipfile.ZipFile(path) as z:
        graph = z.read("model/models/model.json").decode()
    assert "torch.ops.aten.linear.default" in graph
    H._rewrite(path, {"models/model.json": graph.replace("torch.ops.aten.linear.default", target).encode()})
    (found,) = findings(path)[rule]
    assert found.severity == severity and found.evidence["op"] == target


def test_graph_targets_of_ordinary_exports_compute() -> None:
    for target in ("torch.ops.aten.linear.default", "_operator.getitem", "math.sqrt", "torch.sym_int",
                   "torch.ops.higher_order.cond", "torch.ops.quantized_decomposed.quantize_per_tensor.default"):
        assert judge_target(target) is None, target
    for target in ("builtins.exec", "torch.hub.load", "_operator.attrgetter", "#custom.op"):
        assert judge_target(target) is not None, target


# ---- TorchScript ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where, function", [("forward", "forward"), ("setstate", "__setstate__")])
def test_torchscript_from_file_is_flagged_with_op_and_member(tmp_path: Path, canary: Path, where: str,
                                                             function: str) -> None:
    path = H.torchscript_from_file(tmp_path, canary, where)
    (found,) = findings(path)["code-file-access"]
    assert found.severity == "critical"
    assert found.evidence["op"] == "torch.from_file" and found.evidence["function"].startswith(function)
    assert "/code/__torch__/" in found.evidence["member"] and found.evidence["member"].endswith(".py")
    if where == "setstate":
        assert "runs when the file is loaded" in found.title
    with pytest.raises(ModelLoadError, match="aten::from_file"):
        load_target(path)
    assert not canary.exists()


@pytest.mark.parametrize("old, new, rule", [
    ("torch.from_file(", "torch . from_file (", "code-file-access"),
    ("torch.from_file(", "torch.\\\n  from_file(", "code-file-access"),
    ("torch.from_file(", "ops.aten.from_file(", "code-file-access"),
    ("torch.from_file(", "torch.ops.aten.from_file(", "code-file-access"),
    ("touched = torch.from_file(", "t = torch\n    touched = t.from_file(", "code-file-access"),
    ("touched = torch.from_file(", "t = torch\n    touched = t.from_file(", "code-obfuscation"),
    ("touched = torch.from_file(", "o = ops.aten\n    touched = o.from_file(", "code-file-access"),
    ("touched = torch.from_file(", "touched = getattr(torch, \"from_file\")(", "code-file-access"),
    ("torch.from_file(path, True, 16, dtype=0)", "ops.evil.run(path)", "code-native-op"),
    ("def forward(", "def forward((", "malformed"),
])
def test_spelling_tricks_do_not_hide_an_op(tmp_path: Path, canary: Path, old: str, new: str, rule: str) -> None:
    path = H.patch_torchscript_code(H.torchscript_from_file(tmp_path, canary), old, new)
    found = severities(path)
    assert found.get(rule) in ("high", "critical"), found


def test_an_aliased_from_file_really_writes_when_loaded_naively(tmp_path: Path, canary: Path) -> None:
    """The spelling tricks above are not hypothetical: TorchScript compiles `t = torch; t.from_file(...)`."""
    path = H.patch_torchscript_code(H.torchscript_from_file(tmp_path, canary), "touched = torch.from_file(",
                                    "t = torch\n    touched = t.from_file(")
    H.harms("torchscript-forward", path)
    assert canary.exists()


def test_comments_and_strings_are_not_calls() -> None:
    source = ("class M(Module):\n  def forward(self, x: Tensor) -> Tensor:\n"
              "    # torch.from_file(path)\n    _0 = \"torch.from_file\"\n    return torch.relu(x)\n")
    assert read_torchscript(source) == []


def test_non_utf8_code_fails_closed(tmp_path: Path, canary: Path) -> None:
    path = H.torchscript_from_file(tmp_path, canary)
    with zipfile.ZipFile(path) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for name, body in members:
            z.writestr(name, body.replace(b"touched", b"touched\xff") if name.endswith(".py") else body)
    assert severities(path)["malformed"] == "high"


@pytest.mark.parametrize("where", ["forward", "setstate"])
def test_benign_torchscript_twins_are_clean_and_load(tmp_path: Path, where: str) -> None:
    path = H.torchscript_plain(tmp_path, where)
    assert scan_path(path).findings == []
    assert load_target(path).n_classes == 3


def test_endless_loops_are_left_to_the_sandbox(tmp_path: Path) -> None:
    """They only compute, so no static finding: the sandbox's deadline stops them."""
    pytest.importorskip("onnx")
    for path in (H.torchscript_endless(tmp_path), H.onnx_loop(tmp_path), H.torchscript_bounded(tmp_path)):
        assert scan_path(path).findings == [], path


def test_demo_models_are_clean(digits_demo, cancer_demo) -> None:
    for demo in (digits_demo, cancer_demo):
        assert scan_path(demo.model_path).findings == []
        load_target(demo.model_path)


# ---- skops -----------------------------------------------------------------------------------------------------

def test_skops_calls_are_judged_by_the_scanner_not_by_package_prefix(tmp_path: Path, canary: Path) -> None:
    pytest.importorskip("skops")
    secret = tmp_path / "secret.npy"
    np.save(secret, np.arange(3))
    reads, writes = H.skops_numpy_load(tmp_path, secret), H.skops_numpy_savetxt(tmp_path, canary)
    assert severities(reads)["unsafe-global"] == "critical"
    assert "numpy.savetxt" in {f.evidence["global"] for f in findings(writes)["unknown-global"]}
    for path in (reads, writes):
        with pytest.raises(ModelLoadError, match=r"refusing to load .*numpy\.(load|savetxt).*--trust"):
            load_target(path)
    assert not canary.exists()


def test_a_benign_skops_model_is_clean_and_loads(tmp_path: Path) -> None:
    pytest.importorskip("skops")
    path = H.skops_plain(tmp_path)
    assert scan_path(path).findings == []
    assert load_target(path).n_classes == 3


# ---- the command line ------------------------------------------------------------------------------------------

def _data(folder: Path) -> Path:
    path = folder / "data.npz"
    rng = np.random.default_rng(0)
    save_npz(Dataset(rng.random((6, 4), dtype=np.float32), np.array([0, 1, 2, 0, 1, 2])), path)
    return path


@pytest.mark.parametrize("command", [["attack", "evasion", "fgsm"], ["assess"]])
def test_attack_and_assess_refuse_a_use_pickle_pt2_without_trust(tmp_path: Path, canary: Path,
                                                                  command: list[str]) -> None:
    model = H.pt2_use_pickle(tmp_path, canary, LOOPBACK)
    args = [*command, str(model), "--data", str(_data(tmp_path))]
    if command == ["assess"]:
        args += ["--out", str(tmp_path / "report")]
    done = subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to load use_pickle.pt2" in lines[0] and "--trust" in lines[0]
    assert not canary.exists()


def test_scan_reports_the_code_findings(tmp_path: Path, canary: Path) -> None:
    model = H.torchscript_from_file(tmp_path, canary, "setstate")
    done = subprocess.run([sys.executable, "-m", "bastion", "scan", str(model), "--json"], capture_output=True,
                          text=True, timeout=300)
    report = json.loads(done.stdout)
    assert "code-file-access" in {f["metric"] for f in report["findings"]}
