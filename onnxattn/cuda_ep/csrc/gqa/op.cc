// The onnxruntime adapter of GroupQueryAttention: attributes at session creation; per call, shapes through
// make_params, the present outputs (scratch when the node does not ask for them), then the kernel.
#include "gqa/op.h"

#include <memory>

#include "common/ort_adapter.h"
#include "gqa/cpu_kernel.h"
#include "gqa/params.h"

namespace onnxattn::gqa {
namespace {

Attributes read_attributes(const OrtKernelInfo* info) {
  Attributes a;
  a.num_heads = ort::int_attribute(info, kOpName, "num_heads", a.num_heads);
  a.kv_num_heads = ort::int_attribute(info, kOpName, "kv_num_heads", a.kv_num_heads);
  a.causal = ort::int_attribute(info, kOpName, "causal", a.causal);
  a.window = ort::int_attribute(info, kOpName, "window", a.window);
  a.softcap = ort::float_attribute(info, kOpName, "softcap", a.softcap);
  a.scale = ort::float_attribute(info, kOpName, "scale", a.scale);
  a.rope = ort::int_attribute(info, kOpName, "rope", a.rope);
  a.rope_base = ort::float_attribute(info, kOpName, "rope_base", a.rope_base);
  a.rotary_dim = ort::int_attribute(info, kOpName, "rotary_dim", a.rotary_dim);
  a.rope_interleaved = ort::int_attribute(info, kOpName, "rope_interleaved", a.rope_interleaved);
  a.rope_attention_scaling = ort::float_attribute(info, kOpName, "rope_attention_scaling", a.rope_attention_scaling);
  a.qk_norm_epsilon = ort::float_attribute(info, kOpName, "qk_norm_epsilon", a.qk_norm_epsilon);
  check_attributes(a);
  return a;
}

ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
  switch (index) {
    case kPastLengths:
    case kPositionIds: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case kInvFreq: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case kMask: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
    default: return t;
  }
}

template <typename T>
struct CpuKernel {
  Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      Ort::ConstValue inputs[kNumInputs];
      Shapes shapes;
      for (size_t i = 0; i < kNumInputs; ++i) {
        inputs[i] = ort::optional_input(ctx, i);
        if (inputs[i]) shapes.inputs[i] = ort::shape_of(inputs[i]);
      }
      const Params p = make_params(shapes, attrs);

      Tensors<T> t;
      t.query = ort::data_of<T>(inputs[kQuery]);
      t.key = ort::data_of<T>(inputs[kKey]);
      t.value = ort::data_of<T>(inputs[kValue]);
      t.past_key = ort::data_of<T>(inputs[kPastKey]);
      t.past_value = ort::data_of<T>(inputs[kPastValue]);
      t.past_lengths = ort::data_of<int64_t>(inputs[kPastLengths]);
      t.position_ids = ort::data_of<int64_t>(inputs[kPositionIds]);
      t.q_norm_weight = ort::data_of<T>(inputs[kQNorm]);
      t.k_norm_weight = ort::data_of<T>(inputs[kKNorm]);
      t.inv_freq = ort::data_of<float>(inputs[kInvFreq]);
      t.attention_mask = ort::data_of<bool>(inputs[kMask]);

      Ort::UnownedValue output = ctx.GetOutput(kOutput, p.output_shape());
      t.output = ort::data_of<T>(output);
      // present_* may be the past buffers themselves (shared-buffer mode with I/O binding, or onnxruntime
      // reusing them in place as GetMayInplace allows); the kernel then writes only the new tokens.
      std::unique_ptr<T[]> scratch_key, scratch_value;
      Ort::UnownedValue present_key{nullptr}, present_value{nullptr};
      if (ctx.GetOutputCount() > kPresentValue) {
        present_key = ctx.GetOutput(kPresentKey, p.present_shape(p.head_dim));
        present_value = ctx.GetOutput(kPresentValue, p.present_shape(p.v_head_dim));
      }
      t.present_key = ort::data_of<T>(present_key);
      t.present_value = ort::data_of<T>(present_value);
      if (!t.present_key) {
        scratch_key.reset(new T[size_t(p.batch * p.kv_heads * p.total * p.head_dim)]);
        t.present_key = scratch_key.get();
      }
      if (!t.present_value) {
        scratch_value.reset(new T[size_t(p.batch * p.kv_heads * p.total * p.v_head_dim)]);
        t.present_value = scratch_value.get();
      }
      run_cpu<T>(p, t, ort::intra_op_parallel_for(ctx));
    });
  }
};

template <typename T>
struct CpuOp : Ort::CustomOpBase<CpuOp<T>, CpuKernel<T>, /*WithStatus=*/true> {
  CpuOp() {
    // present_key/present_value may reuse past_key/past_value's buffers (shared-buffer mode).
    OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
      *input_index = new int[2]{int(kPastKey), int(kPastValue)};
      *output_index = new int[2]{int(kPresentKey), int(kPresentValue)};
      return 2;
    };
    OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
      delete[] input_index;
      delete[] output_index;
    };
  }
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return ort::guarded([&] { *kernel = new CpuKernel<T>{read_attributes(info)}; });
  }
  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const { return input_type(index, ort::TypeOf<T>::value); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index <= kValue ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
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

}  // namespace onnxattn::gqa
