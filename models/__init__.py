"""Reference models built only from onnxattn.nn (installed as onnxattn.models)."""
