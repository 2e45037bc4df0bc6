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
