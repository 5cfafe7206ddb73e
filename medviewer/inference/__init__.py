"""AI runtime: model packages, ONNX Runtime sessions, class activation maps and flagged regions (Qt-free)."""
