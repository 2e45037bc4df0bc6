"""docs/ops.md is generated from the op specs and must be current."""

from onnxattn.ops import SPECS, docs


def test_ops_reference_is_up_to_date():
    assert docs.DOCS_PATH.read_text() == docs.render(), "run: python -m onnxattn.ops.docs"


def test_every_op_is_documented_with_every_attribute():
    text = docs.render()
    for spec in SPECS.values():
        assert f"## onnxattn::{spec.name}" in text
        for attr in spec.attrs:
            assert f"`{attr.name}`" in text


def test_huggingface_guide_lists_every_supported_architecture():
    """docs/huggingface.md's table has one row per model_type from_transformers converts, with its class."""
    from pathlib import Path

    from onnxattn.models.hf import SUPPORTED

    rows = [line for line in (Path(__file__).parents[1] / "docs" / "huggingface.md").read_text().splitlines()
            if line.startswith("| `")]
    listed = {row.split("|")[1].strip().strip("`"): row.split("|")[2].strip() for row in rows}
    assert listed == SUPPORTED
