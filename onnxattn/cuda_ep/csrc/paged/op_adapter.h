#pragma once
// The onnxruntime adapter of PagedAttention shared by the CPU (op.cc) and CUDA (op_cuda.cc) kernels:
// attributes at session creation; per call, shapes through make_params and the tensors' pointers (the
// output pools when the node asks for them); the op's signature, including the in-place declaration of
// the pools. Each provider adds only its Compute.
//
// In place: GetMayInplace lets onnxruntime hand the output pools the input pools' buffers, and I/O binding
// of each output to its input's OrtValue does the same explicitly (the serving pattern); the kernels then
// write only the new tokens. Other output buffers first receive a copy of the pools.
#include <tuple>

#include "common/custom_op.h"
#include "gqa/attributes.h"
#include "paged/params.h"

namespace onnxattn::paged::adapter {

inline ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
  switch (index) {
    case kBlockTable:
    case kCuSeqlensQ:
    case kSeqLens: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case kPositionIds: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case kInvFreq: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    default: return t;
  }
}

// One call's checked shapes and pointers; key_cache_out/value_cache_out are null when the node does not ask
// for the pools (the kernel then needs its own copies).
template <typename T>
struct Call {
  Params params;
  Tensors<T> tensors;
};

template <typename T>
Call<T> prepare(const gqa::Attributes& attrs, Ort::KernelContext& ctx) {
  Ort::ConstValue in[kNumInputs];
  Shapes shapes;
  ort::read_inputs(ctx, in, shapes);
  Call<T> call{make_params(shapes, attrs), {}};
  const Params& p = call.params;
  Tensors<T>& t = call.tensors;
  t.query = ort::data_of<T>(in[kQuery]);
  t.key = ort::data_of<T>(in[kKey]);
  t.value = ort::data_of<T>(in[kValue]);
  t.key_cache = ort::data_of<T>(in[kKeyCache]);
  t.value_cache = ort::data_of<T>(in[kValueCache]);
  t.block_table = ort::data_of<int32_t>(in[kBlockTable]);
  t.cu_seqlens_q = ort::data_of<int32_t>(in[kCuSeqlensQ]);
  t.seq_lens = ort::data_of<int32_t>(in[kSeqLens]);
  t.position_ids = ort::data_of<int64_t>(in[kPositionIds]);
  t.q_norm_weight = ort::data_of<T>(in[kQNorm]);
  t.k_norm_weight = ort::data_of<T>(in[kKNorm]);
  t.inv_freq = ort::data_of<float>(in[kInvFreq]);
  t.sinks = ort::data_of<T>(in[kSinks]);
  Ort::UnownedValue output = ctx.GetOutput(kOutput, p.output_shape());
  t.output = ort::data_of<T>(output);
  std::tie(t.key_cache_out, t.value_cache_out) =
      ort::paired_outputs<T>(ctx, kOpName, kKeyCacheOut, "key_cache_out", p.pool_shape(p.head_dim), "value_cache_out",
                             p.pool_shape(p.v_head_dim));
  return call;
}

// The op's signature, shared by every provider (common/custom_op.h): the output pools may reuse the input
// pools' buffers (in-place update).
struct Signature : ort::SignatureBase<Signature> {
  static constexpr const char* kName = kOpName;
  static constexpr size_t kInputs = kNumInputs, kOutputs = kNumOutputs, kRequiredInputs = kSeqLens + 1;
  static constexpr int kCacheInputs[2] = {int(kKeyCache), int(kValueCache)};
  static constexpr int kCacheOutputs[2] = {int(kKeyCacheOut), int(kValueCacheOut)};
  static ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
    return adapter::input_type(index, t);
  }
  static gqa::Attributes read_attributes(const OrtKernelInfo* info) { return gqa::read_attributes(info, kOpName); }
};

}  // namespace onnxattn::paged::adapter
