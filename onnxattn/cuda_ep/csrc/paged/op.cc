// The onnxruntime adapter of PagedAttention: attributes at session creation; per call, shapes through
// make_params, the output pools (which may be the input pools: MayInplace), then the kernel.
#include "paged/op.h"

#include "common/ort_adapter.h"
#include "gqa/attributes.h"
#include "paged/cpu_kernel.h"
#include "paged/params.h"

namespace onnxattn::paged {
namespace {

ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
  switch (index) {
    case kBlockTable:
    case kCuSeqlensQ:
    case kSeqLens: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case kPositionIds: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case kInvFreq: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    default: return t;
  }
}

template <typename T>
struct CpuKernel {
  gqa::Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      Ort::ConstValue in[kNumInputs];
      Shapes shapes;
      for (size_t i = 0; i < kNumInputs; ++i) {
        in[i] = ort::optional_input(ctx, i);
        if (in[i]) shapes.inputs[i] = ort::shape_of(in[i]);
      }
      const Params p = make_params(shapes, attrs);
      Tensors<T> t;
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
      Ort::UnownedValue output = ctx.GetOutput(kOutput, p.output_shape());
      t.output = ort::data_of<T>(output);
      // Without the cache outputs the node still writes the new tokens: into scratch copies of the pools.
      std::unique_ptr<T[]> scratch_key, scratch_value;
      if (ctx.GetOutputCount() > kValueCacheOut) {
        Ort::UnownedValue key_out = ctx.GetOutput(kKeyCacheOut, p.pool_shape(p.head_dim));
        Ort::UnownedValue value_out = ctx.GetOutput(kValueCacheOut, p.pool_shape(p.v_head_dim));
        t.key_cache_out = ort::data_of<T>(key_out);
        t.value_cache_out = ort::data_of<T>(value_out);
      } else {
        scratch_key.reset(new T[size_t(p.num_blocks * p.block_size * p.kv_heads * p.head_dim)]);
        scratch_value.reset(new T[size_t(p.num_blocks * p.block_size * p.kv_heads * p.v_head_dim)]);
        t.key_cache_out = scratch_key.get();
        t.value_cache_out = scratch_value.get();
      }
      run_cpu<T>(p, t, ort::intra_op_parallel_for(ctx));
    });
  }
};

template <typename T>
struct CpuOp : Ort::CustomOpBase<CpuOp<T>, CpuKernel<T>, /*WithStatus=*/true> {
  CpuOp() {
    // The output pools may reuse the input pools' buffers (in-place update).
    OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
      *input_index = new int[2]{int(kKeyCache), int(kValueCache)};
      *output_index = new int[2]{int(kKeyCacheOut), int(kValueCacheOut)};
      return 2;
    };
    OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
      delete[] input_index;
      delete[] output_index;
    };
  }
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return ort::guarded([&] { *kernel = new CpuKernel<T>{gqa::read_attributes(info, kOpName)}; });
  }
  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const { return input_type(index, ort::TypeOf<T>::value); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index <= kSeqLens ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return kNumOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ort::TypeOf<T>::value; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == kOutput ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

}  // namespace

template <typename T>
const OrtCustomOp* cpu_op() {
  static const CpuOp<T> op;
  return &op;
}

template const OrtCustomOp* cpu_op<float>();
template const OrtCustomOp* cpu_op<Float16>();
template const OrtCustomOp* cpu_op<BFloat16>();

}  // namespace onnxattn::paged
