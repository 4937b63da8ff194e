"""Supply-chain scanning of model files (THREATS.md section 5).

`scan_path` finds every known way a model file can run code when loaded; `load_pickled` is the only door through
which Bastion unpickles anything; `detect_format` names a file's format from its bytes.
"""

from bastion.supplychain.convert import CONVERTIBLE, convert_to_safetensors
from bastion.supplychain.detect import PICKLE_FORMATS, detect_format
from bastion.supplychain.file_scan import scan_bytes, scan_file, scan_path, scan_paths
from bastion.supplychain.limits import DEFAULT_LIMITS, Limits
from bastion.supplychain.load import load_pickled
from bastion.supplychain.manifest import manifest, write_manifest
from bastion.supplychain.scan_report import ScannedFile, ScanReport

__all__ = [
    "CONVERTIBLE", "DEFAULT_LIMITS", "Limits", "PICKLE_FORMATS", "ScanReport", "ScannedFile", "convert_to_safetensors",
    "detect_format", "load_pickled", "manifest", "scan_bytes", "scan_file", "scan_path", "scan_paths",
    "write_manifest",
]
