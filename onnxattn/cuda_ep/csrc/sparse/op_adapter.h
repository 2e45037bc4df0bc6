#pragma once
// The onnxruntime adapters of NativeSparseAttention and SparseRoutedAttention shared by the CPU (op.cc) and
// CUDA (op_cuda.cc) kernels: attribute reading (at session creation), the input checks that fill the params
// through the shared validation, and the ops' signatures. Each provider adds only its Compute.
#include "common/custom_op.h"
#include "sparse/params.h"

namespace onnxattn::sparse::adapter {

namespace nsa_io {
enum Input : size_t { kQ = 0, kK, kV, kGates, kCompressedKey, kCompressedValue, kNumInputs };
enum Output : size_t { kY = 0, kBlocks, kTokens, kNumOutputs };
}  // namespace nsa_io
namespace routed_io {
enum Input : size_t { kQ = 0, kK, kV, kPositions, kNumInputs };
enum Output : size_t { kY = 0, kSegments, kNumOutputs };
}  // namespace routed_io

inline NsaAttributes read_nsa_attributes(const OrtKernelInfo* info) {
  NsaAttributes a;
  const char* op = kNsaName;
  a.block_size = ort::int_attribute(info, op, "block_size", a.block_size);
  a.top_blocks = ort::int_attribute(info, op, "top_blocks", a.top_blocks);
  a.top_tokens = ort::int_attribute(info, op, "top_tokens", a.top_tokens);
  a.window = ort::int_attribute(info, op, "window", a.window);
  a.causal = ort::int_attribute(info, op, "causal", a.causal);
  a.shared_selection = ort::int_attribute(info, op, "shared_selection", a.shared_selection);
  a.sink_blocks = ort::int_attribute(info, op, "sink_blocks", a.sink_blocks);
  a.local_blocks = ort::int_attribute(info, op, "local_blocks", a.local_blocks);
  a.scale = ort::float_attribute(info, op, "scale", a.scale);
  return a;  // checked per call, with the inputs (some rules depend on which are present)
}

inline RoutedAttributes read_routed_attributes(const OrtKernelInfo* info) {
  RoutedAttributes a;
  const char* op = kRoutedName;
  a.segment_size = ort::int_attribute(info, op, "segment_size", a.segment_size);
  a.top_k = ort::int_attribute(info, op, "top_k", a.top_k);
  a.causal = ort::int_attribute(info, op, "causal", a.causal);
  a.cosine = ort::int_attribute(info, op, "cosine", a.cosine);
  a.rope = ort::int_attribute(info, op, "rope", a.rope);
  a.rope_before_routing = ort::int_attribute(info, op, "rope_before_routing", a.rope_before_routing);
  a.rope_base = ort::float_attribute(info, op, "rope_base", a.rope_base);
  a.rotary_dim = ort::int_attribute(info, op, "rotary_dim", a.rotary_dim);
  a.rope_interleaved = ort::int_attribute(info, op, "rope_interleaved", a.rope_interleaved);
  a.rope_attention_scaling = ort::float_attribute(info, op, "rope_attention_scaling", a.rope_attention_scaling);
  a.scale = ort::float_attribute(info, op, "scale", a.scale);
  check_attributes(a);
  return a;
}

template <typename T>
struct NsaCall {
  NsaParams params;
  NsaTensors<T> tensors;
};

template <typename T>
NsaCall<T> prepare_nsa(const NsaAttributes& attrs, Ort::KernelContext& ctx) {
  using namespace nsa_io;
  const Ort::ConstValue q = ctx.GetInput(kQ), k = ctx.GetInput(kK), v = ctx.GetInput(kV);
  const Ort::ConstValue gates = ort::optional_input(ctx, kGates);
  const Ort::ConstValue ckey = ort::optional_input(ctx, kCompressedKey);
  const Ort::ConstValue cvalue = ort::optional_input(ctx, kCompressedValue);
  NsaShapes shapes{ort::shape_of(q), ort::shape_of(k), ort::shape_of(v), std::nullopt, std::nullopt, std::nullopt};
  if (gates) shapes.gates = ort::shape_of(gates);
  if (ckey) shapes.compressed_key = ort::shape_of(ckey);
  if (cvalue) shapes.compressed_value = ort::shape_of(cvalue);
  const size_t outputs = ctx.GetOutputCount();
  NsaCall<T> call{make_nsa_params(shapes, attrs, outputs > kBlocks, outputs > kTokens), {}};
  Ort::UnownedValue y = ctx.GetOutput(kY, nsa_output_shape(call.params));
  Ort::UnownedValue blocks{nullptr}, tokens{nullptr};
  if (call.params.want_blocks) blocks = ctx.GetOutput(kBlocks, nsa_blocks_shape(call.params));
  if (call.params.want_tokens) tokens = ctx.GetOutput(kTokens, nsa_tokens_shape(call.params));
  call.params.want_blocks = bool(blocks);
  call.params.want_tokens = bool(tokens);
  NsaTensors<T>& t = call.tensors;
  t.q = ort::data_of<T>(q);
  t.k = ort::data_of<T>(k);
  t.v = ort::data_of<T>(v);
  t.gates = ort::data_of<T>(gates);
  t.compressed_key = ort::data_of<T>(ckey);
  t.compressed_value = ort::data_of<T>(cvalue);
  t.y = ort::data_of<T>(y);
  t.selected_blocks = ort::data_of<int64_t>(blocks);
  t.selected_tokens = ort::data_of<int64_t>(tokens);
  return call;
}

template <typename T>
struct RoutedCall {
  RoutedParams params;
  RoutedTensors<T> tensors;
};

template <typename T>
RoutedCall<T> prepare_routed(const RoutedAttributes& attrs, Ort::KernelContext& ctx) {
  using namespace routed_io;
  const Ort::ConstValue q = ctx.GetInput(kQ), k = ctx.GetInput(kK), v = ctx.GetInput(kV);
  const Ort::ConstValue positions = ort::optional_input(ctx, kPositions);
  RoutedShapes shapes{ort::shape_of(q), ort::shape_of(k), ort::shape_of(v), std::nullopt};
  if (positions) {
    if (ort::element_type_of(positions) != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
      fail(kRoutedName, ": input 'position_ids' must be int64, got ", ort::type_name(ort::element_type_of(positions)));
    }
    shapes.position_ids = ort::shape_of(positions);
  }
  RoutedCall<T> call{make_routed_params(shapes, attrs, ctx.GetOutputCount() > kSegments), {}};
  Ort::UnownedValue y = ctx.GetOutput(kY, routed_output_shape(call.params));
  Ort::UnownedValue segments{nullptr};
  if (call.params.want_segments) segments = ctx.GetOutput(kSegments, routed_segments_shape(call.params));
  call.params.want_segments = bool(segments);
  RoutedTensors<T>& t = call.tensors;
  t.q = ort::data_of<T>(q);
  t.k = ort::data_of<T>(k);
  t.v = ort::data_of<T>(v);
  t.position_ids = ort::data_of<int64_t>(positions);
  t.y = ort::data_of<T>(y);
  t.selected_segments = ort::data_of<int64_t>(segments);
  return call;
}

// The ops' signatures, shared by every provider (common/custom_op.h).
struct NsaSignature : ort::SignatureBase<NsaSignature> {
  static constexpr const char* kName = kNsaName;
  static constexpr size_t kInputs = nsa_io::kNumInputs, kOutputs = nsa_io::kNumOutputs;
  static constexpr size_t kRequiredInputs = nsa_io::kGates;
  static ONNXTensorElementDataType input_type(size_t /*index*/, ONNXTensorElementDataType t) { return t; }
  static ONNXTensorElementDataType output_type(size_t index, ONNXTensorElementDataType t) {
    return index == nsa_io::kY ? t : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;  // the selections
  }
  static NsaAttributes read_attributes(const OrtKernelInfo* info) { return read_nsa_attributes(info); }
};

struct RoutedSignature : ort::SignatureBase<RoutedSignature> {
  static constexpr const char* kName = kRoutedName;
  static constexpr size_t kInputs = routed_io::kNumInputs, kOutputs = routed_io::kNumOutputs;
  static constexpr size_t kRequiredInputs = routed_io::kPositions;
  static ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
    return index == routed_io::kPositions ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : t;
  }
  static ONNXTensorElementDataType output_type(size_t index, ONNXTensorElementDataType t) {
    return index == routed_io::kY ? t : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;  // the selections
  }
  static RoutedAttributes read_attributes(const OrtKernelInfo* info) { return read_routed_attributes(info); }
};

}  // namespace onnxattn::sparse::adapter
