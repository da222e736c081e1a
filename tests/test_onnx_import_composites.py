"""ONNX ops that graphdl imports as compositions of its own ops (no registry entry of their
own): each is checked on cases of ONNX's backend node suite, imported and run by the NumPy
executor against the suite's expected outputs. The full suite, with its exclusion list,
runs elsewhere; these keep the composite import rules honest on their own.

Inputs named in ``FROZEN`` (axes, repeats, depth, k: shape-giving inputs the node suite feeds
at run time) are turned into initializers with the case's values, as exporters write them."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx.backend.test.loader import load_model_tests

from graphdl.backends.numpy_executor import NumpyExecutor
from graphdl.backends.onnx_import import from_onnx

COMPOSITE_CASES = [
    # elementwise compositions
    "test_mean_example", "test_castlike_FLOAT_to_DOUBLE", "test_size_example",
    "test_gelu_tanh_1",
    # reductions
    "test_reduce_l1_do_not_keepdims_example", "test_reduce_l2_keep_dims_random",
    "test_reduce_sum_square_default_axes_keepdims_random",
    "test_reduce_log_sum_exp_negative_axes_keepdims_random", "test_reduce_log_sum_asc_axes",
    # layout, one-hot, top-k
    "test_tile", "test_onehot_with_axis", "test_onehot_negative_indices", "test_top_k_smallest", "test_depthtospace_example", "test_depthtospace_crd_mode_example",
    "test_spacetodepth_example", "test_hardmax_axis_1", "test_eyelike_with_dtype",
    # losses
    "test_nllloss_NCd1d2_with_weight_reduction_mean", "test_nllloss_NCd1_ii",
    "test_sce_mean_weight_ii_3d_log_prob", "test_sce_NCd1d2d3_none_no_weight_negative_ii",
    "test_sce_mean",
    # ConvTranspose (as ConvGradInput) and 1-D conv/pool (as 2-D)
    "test_convtranspose", "test_convtranspose_1d", "test_convtranspose_output_shape",
    "test_convtranspose_autopad_same", "test_convtranspose_group_2_image_3",
    "test_maxpool_1d_default", "test_averagepool_1d_default",
    # Resize and Upsample
    "test_resize_upsample_scales_cubic_A_n0p5_exclude_outside",
    "test_resize_downsample_sizes_linear_antialias", "test_resize_tf_crop_and_resize_axes_3_2",
    "test_resize_upsample_sizes_nearest_not_smaller",
    "test_resize_downsample_scales_linear_half_pixel_symmetric", "test_upsample_nearest",
    # normalizations, Lp pools, 1-D MatMul
    "test_instancenorm_example", "test_group_normalization_epsilon",
    "test_mvn", "test_lpnormalization_default", "test_lrn",
    "test_lppool_2d_same_upper", "test_lppool_1d_default",
    "test_matmul_1d_1d", "test_matmul_1d_3d",
    # quantization
    "test_quantizelinear_axis", "test_quantizelinear_blocked_asymmetric",
    "test_quantizelinear_e4m3fn", "test_dequantizelinear_int4", "test_dynamicquantizelinear",
    "test_matmulinteger", "test_qlinearmatmul_3D_int8_float16", "test_convinteger_with_padding",
    "test_qlinearconv",
    # recurrent ops, unrolled
    "test_rnn_seq_length", "test_gru_with_initial_bias", "test_lstm_with_peepholes",
    "test_simple_rnn_batchwise", "test_gru_batchwise", "test_lstm_batchwise",
    "test_causal_conv_with_state_with_bias_and_past_state",
    "test_causal_conv_with_state_kernel_size_one", "test_causal_conv_with_state_silu",
    # DFT as matmuls
    "test_dft_opset19", "test_dft_axis_opset19", "test_dft_rfft_opset19",
    "test_dft_irfft_opset19", "test_dft", "test_dft_irfft",
    # control flow, inlined and unrolled
    "test_if", "test_scan_sum", "test_scan9_sum", "test_loop11",
    # attention, rotary embeddings and RMS norm
    "test_rotary_embedding_3d_input", "test_rotary_embedding_with_interleaved_rotary_dim",
    "test_rotary_embedding_no_position_ids_rotary_dim",
    "test_attention_4d", "test_attention_3d_gqa_causal", "test_attention_4d_attn_mask_bool",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_4d_mask_causal",
    "test_attention_4d_softcap", "test_attention_local_window_with_past",
    "test_rms_normalization_4d_axis_negative_2", "test_rms_normalization_3d_axis0_epsilon",
]
FROZEN = {"axes", "y", "depth", "k", "scales", "sizes", "roi", "trip_count", "cond",
          "axis"}
_CASES = {t.name: t for t in load_model_tests(kind="node") if t.name in COMPOSITE_CASES}


def _array(x) -> np.ndarray:
    """A data-set entry as an array (the loader gives some as TensorProtos)."""
    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)


def _freeze(model: onnx.ModelProto, inputs: list) -> tuple[onnx.ModelProto, list]:
    """The model with its FROZEN inputs made initializers (values from the first data set)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    keep, feeds = [], []
    for vi, value in zip(list(model.graph.input), inputs):
        if vi.name in FROZEN:
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), vi.name))
        else:
            keep.append(vi)
            feeds.append(value)
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model, feeds


@pytest.mark.parametrize("name", COMPOSITE_CASES)
def test_composite_import_matches_node_suite(name):
    case = _CASES.get(name)
    assert case is not None, f"{name} is not in this onnx version's node suite"
    for inputs, expected in case.data_sets:
        inputs, expected = [_array(x) for x in inputs], [_array(x) for x in expected]
        model, feeds = _freeze(case.model, list(inputs))
        got = NumpyExecutor(from_onnx(model, as_params=False)).run(feeds)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            g, e = np.asarray(g), np.asarray(e)
            assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, g.dtype, e.shape, e.dtype)
            np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol,
                                       err_msg=name)


def test_global_lp_pool_matches_its_definition():
    # not in the node suite: (sum over spatial dims of |x|^p)^(1/p), per (n, c)
    from onnx import TensorProto, helper

    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    node = helper.make_node("GlobalLpPool", ["x"], ["y"], p=3)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, x.shape)], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, (2, 3, 1, 1))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    (got,) = NumpyExecutor(from_onnx(model)).run([x])
    want = (np.abs(x) ** 3).sum(axis=(2, 3), keepdims=True) ** (1 / 3)
    np.testing.assert_allclose(got, want, rtol=1e-5)
