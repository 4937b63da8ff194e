"""Model loaders: the format is found from the file's bytes, and every model becomes a Target."""

from bastion.models.loader import load_target, sniff_format

__all__ = ["load_target", "sniff_format"]
