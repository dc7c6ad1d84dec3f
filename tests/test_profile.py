"""The training-step profile's arithmetic: what it reads from a trace and counts in a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from pronlora.devtools.profile import (
    kernel_category,
    language_model_linear_params,
    summarize_trace,
    training_flops_per_token,
)


def _kernel(name: str, ts: float, dur: float, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_kernel_names_fall_into_the_categories_the_tables_show() -> None:
    assert kernel_category("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128") == "matmul"
    assert kernel_category("nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert kernel_category("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == (
        "attention"
    )
    assert kernel_category("void kDequantizeBlockwise<__nv_bfloat16, 512, 64, 8, 2>") == (
        "nf4 dequantize"
    )
    assert kernel_category("ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL") == "communication"
    assert kernel_category("triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0") == (
        "compiled (triton)"
    )
    assert kernel_category("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == (
        "optimizer"
    )
    elementwise = "void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add>"
    assert kernel_category(elementwise) == "elementwise"
    binary = "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::n"
    assert kernel_category(binary) == "elementwise"  # "nocast" is no cast
    assert kernel_category("void at::native::direct_copy_kernel_cuda") == "copy/cast/gather"
    assert kernel_category("something_new") == "other"


def test_trace_summary_counts_overlapping_streams_once_and_per_step() -> None:
    trace = {
        "traceEvents": [
            _kernel("sm90_xmma_gemm_x", 0, 600),
            _kernel("vectorized_elementwise_kernel", 500, 200),  # overlaps the gemm by 100
            _kernel("Memcpy DtoH (Device -> Pinned)", 1000, 100, cat="gpu_memcpy"),
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": 0, "dur": 5},
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 0, "dur": 5},
            {"ph": "i", "cat": "kernel", "name": "instant, not a span", "ts": 0},
        ]
    }
    s = summarize_trace(trace, wall_s=0.002, steps=2)
    assert s["gpu_busy_s"] == pytest.approx(0.0008)  # 0-700 and 1000-1100 microseconds
    assert s["gpu_busy_share"] == pytest.approx(0.4)
    assert s["categories"]["matmul"] == {"s": 0.0006, "share": pytest.approx(0.667, abs=1e-3)}
    assert s["categories"]["memcpy"]["s"] == pytest.approx(0.0001)
    assert s["kernels_per_step"] == 1
    assert s["host_syncs_per_step"] == 0.5
    assert s["dtoh_copies_per_step"] == 0.5
    assert s["sync_sources"] == {"-": 1}  # no frame around it in this trace
    # a trace without runtime calls cannot say how many syncs there were
    no_runtime = {"traceEvents": trace["traceEvents"][:3]}
    assert summarize_trace(no_runtime, 0.002, 2)["host_syncs_per_step"] is None


def test_model_flops_count_the_decoder_layers_linear_weights_only(tiny_model: Path) -> None:
    from pronlora.core.config import load_config
    from pronlora.model.load import load_model

    model = load_model(load_config("smoke"), tiny_model).model
    cfg = model.config
    text = getattr(cfg, "text_config", cfg)
    h, inter, layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    heads, kv = text.num_attention_heads, text.num_key_value_heads
    head = h // heads
    base = h * (h + 2 * kv * head) + h * h + h * 2 * inter + inter * h  # qkv, o, gate_up, down
    counted = language_model_linear_params(model)
    lora = counted - layers * base
    r = 8  # smoke's LoRA rank
    assert 0 < lora < layers * r * 2 * (4 * h + 2 * inter)  # the adapters, nothing else
    assert training_flops_per_token(counted, recompute=False) == {
        "useful": 4 * counted,
        "executed": 4 * counted,
    }
    assert training_flops_per_token(counted, recompute=True)["executed"] == 6 * counted


def test_syncs_are_attributed_to_the_innermost_python_frame_around_them() -> None:
    def span(cat: str, name: str, ts: float, dur: float, tid: int = 1) -> dict:
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid}

    trace = {
        "traceEvents": [
            span("python_function", "model.py(10): forward", 0, 1000),
            span("python_function", "audio.py(50): encode", 100, 300),
            span("python_function", "audio.py(60): helper", 120, 10),  # over before the sync
            span("cpu_op", "aten::nonzero", 200, 50),
            span("cuda_runtime", "cudaStreamSynchronize", 210, 5),
            span("cuda_runtime", "cudaStreamSynchronize", 600, 5),
            span("cuda_runtime", "cudaStreamSynchronize", 50, 5, tid=2),  # no frames there
            span("cpu_op", "aten::item", 40, 20, tid=2),
            span("user_annotation", "enumerate(DataLoader)#_MultiProcessingDataLoaderIter", 0, 300),
        ]
    }
    s = summarize_trace(trace, wall_s=0.001, steps=1)
    assert s["sync_sources"] == {
        "audio.py(50): encode": 1,
        "model.py(10): forward": 1,
        "[op] aten::item": 1,
    }
    assert s["dataloader_wait_s_per_step"] == 0.0003


def test_profile_tables_show_each_stage_and_name_failures() -> None:
    from pronlora.devtools.profile import markdown

    summary = summarize_trace({"traceEvents": [_kernel("sm90_gemm", 0, 500)]}, 0.001, 1)
    train = {
        "step_s": 1.5,
        "tokens_per_s": 18000.0,
        "projected_3_epochs_min": 5.9,
        "peak_gb": 53.1,
        "model_tflops": 238.1,
        "mfu": 0.29,
        **summary,
    }
    infer = {
        "batch_size": 128,
        "cache": "dynamic",
        "instances_per_s": 36.2,
        "projected_test_set_s": 150.0,
        "load_s": 12.5,
        "answers_unlike_first_setup": 3,
        "peak_gb": 35.0,
        **summary,
    }
    results = {
        "device": "H100",
        "date": "2026-11-26",
        "command": "python jobs/bench_profile.py",
        "warmup": 2,
        "steps": 2,
        "runs": [
            {"setup": "a", "profile": train, "infer": infer},
            {"setup": "b", "profile": {"error": "OutOfMemoryError: CUDA out of memory"}},
        ],
    }
    md = markdown(results)
    assert "| a | 1.5 | 18,000 | 5.9 | 53.1 | 50% | 238.1 | 29% | None | 1 |" in md
    assert "| b | failed: OutOfMemoryError: CUDA out of memory |" in md
    assert "| a | 128 | dynamic | 36.2 | 150.0 | 12.5 | 3 | 35.0 | 50% | None | 1 |" in md
    assert md.count("| a | 100% |") == 2  # the category tables: all of it matmul


def test_gpu_idle_is_charged_to_what_the_host_ran_when_it_launched_the_next_kernel() -> None:
    def span(cat: str, name: str, ts: float, dur: float, tid: int = 1, corr=None) -> dict:
        # milliseconds here, microseconds in a trace
        e = {"ph": "X", "cat": cat, "name": name, "ts": ts * 1e3, "dur": dur * 1e3, "tid": tid}
        if corr is not None:
            e["args"] = {"correlation": corr}
        return e

    trace = {
        "traceEvents": [
            span("python_function", "nn.Module: Phi4MultimodalAudioConvModule_3", 0, 500),
            span("python_function", "nn.Module: Linear_7", 100, 50),
            span("cpu_op", "autograd::engine::evaluate_function: MulBackward0", 600, 300, tid=2),
            span("cuda_runtime", "cudaLaunchKernel", 120, 5, corr=1),  # in Linear
            span("cuda_runtime", "cudaLaunchKernel", 400, 5, corr=2),  # in the conv module
            span("cuda_runtime", "cudaLaunchKernel", 700, 5, tid=2, corr=3),  # backward thread
            span("kernel", "gemm", 130, 100, corr=1),
            span("kernel", "conv", 410, 50, tid=7, corr=2),  # 180 ms after the gemm
            span("kernel", "mul", 710, 40, tid=7, corr=3),  # 250 ms after the conv
            # two calls of one method: one name, whatever the object's address
            span("python_function", "<built-in method to of Tensor object at 0x7f01>", 1000, 5),
            span("python_function", "<built-in method to of Tensor object at 0x7f02>", 1100, 5),
            span("cuda_runtime", "cudaMemcpyAsync", 1001, 1, corr=4),
            span("cuda_runtime", "cudaLaunchKernel", 1101, 1, corr=5),
            span("gpu_memcpy", "Memcpy HtoD", 1010, 10, tid=7, corr=4),  # 260 ms after the mul
            span("kernel", "cast", 1110, 10, tid=7, corr=5),  # 90 ms after the copy
        ]
    }
    s = summarize_trace(trace, wall_s=1.0, steps=2)
    assert s["idle_s_per_step"] == {
        "<built-in method to of Tensor>": 0.175,
        "[backward] MulBackward": 0.125,
        "Phi4MultimodalAudioConvModule": 0.09,
    }
