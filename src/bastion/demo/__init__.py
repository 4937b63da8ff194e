"""The embedded demo: scikit-learn's bundled datasets and small models trained on first use, then cached."""
