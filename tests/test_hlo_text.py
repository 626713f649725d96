"""benchmarks._hlo on hand-written program texts whose traffic is known."""

from __future__ import annotations

from benchmarks import _hlo

# bf16 (4, 8) logits: a max + capped-logits fusion that also writes the capped logits in f32
# (a temporary), a sum of exp reading them, a label gather (not a read), and the gradient
# inside a loop body, written as bf16.
PROGRAM = """
HloModule step, is_scheduled=true

%fused_max (p0: bf16[4,8]) -> (f32[4], f32[4,8]) {
  %p0 = bf16[4,8]{1,0} parameter(0)
  %c = f32[4,8]{1,0} convert(%p0)
  %t = f32[4,8]{1,0} tanh(%c)
  %z = f32[] constant(-inf)
  %m = f32[4]{0} reduce(%t, %z), dimensions={1}, to_apply=%max
  ROOT %out = (f32[4]{0}, f32[4,8]{1,0}) tuple(%m, %t)
}

%fused_sum (p0.1: f32[4,8], p1.1: f32[4]) -> f32[4] {
  %p0.1 = f32[4,8]{1,0} parameter(0)
  %p1.1 = f32[4]{0} parameter(1)
  %b = f32[4,8]{1,0} broadcast(%p1.1), dimensions={0}
  %s = f32[4,8]{1,0} subtract(%p0.1, %b)
  %e = f32[4,8]{1,0} exponential(%s)
  %z.1 = f32[] constant(0)
  ROOT %r = f32[4]{0} reduce(%e, %z.1), dimensions={1}, to_apply=%add
}

%fused_pick (p0.2: bf16[4,8], p1.2: s32[4,2]) -> bf16[4,1] {
  %p0.2 = bf16[4,8]{1,0} parameter(0)
  %p1.2 = s32[4,2]{1,0} parameter(1)
  %bc = bf16[4,8]{1,0} bitcast(%p0.2)
  ROOT %g = bf16[4,1]{1,0} gather(%bc, %p1.2), offset_dims={1}, slice_sizes={1,1}
}

%fused_grad (p0.3: f32[4,8]) -> bf16[4,8] {
  %p0.3 = f32[4,8]{1,0} parameter(0)
  %e.3 = f32[4,8]{1,0} exponential(%p0.3)
  ROOT %d = bf16[4,8]{1,0} convert(%e.3)
}

%body (state: (f32[4,8], bf16[4,8])) -> (f32[4,8], bf16[4,8]) {
  %state = (f32[4,8]{1,0}, bf16[4,8]{1,0}) parameter(0)
  %xs.b = f32[4,8]{1,0} get-tuple-element(%state), index=0
  %grad = bf16[4,8]{1,0} fusion(%xs.b), kind=kLoop, calls=%fused_grad
  ROOT %next = (f32[4,8]{1,0}, bf16[4,8]{1,0}) tuple(%xs.b, %grad)
}

%cond (state.1: (f32[4,8], bf16[4,8])) -> pred[] {
  %state.1 = (f32[4,8]{1,0}, bf16[4,8]{1,0}) parameter(0)
  ROOT %f = pred[] constant(false)
}

ENTRY %main (x: bf16[4,8], idx: s32[4,2]) -> bf16[4,8] {
  %x = bf16[4,8]{1,0} parameter(0)
  %idx = s32[4,2]{1,0} parameter(1)
  %mx = (f32[4]{0}, f32[4,8]{1,0}) fusion(%x), kind=kInput, calls=%fused_max
  %m.0 = f32[4]{0} get-tuple-element(%mx), index=0
  %xs = f32[4,8]{1,0} get-tuple-element(%mx), index=1
  %se = f32[4]{0} fusion(%xs, %m.0), kind=kInput, calls=%fused_sum
  %pick = bf16[4,1]{1,0} fusion(%x, %idx), kind=kLoop, calls=%fused_pick
  %init = (f32[4,8]{1,0}, bf16[4,8]{1,0}) tuple(%xs, %x)
  %loop = (f32[4,8]{1,0}, bf16[4,8]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %dx = bf16[4,8]{1,0} get-tuple-element(%loop), index=1
}
"""


def test_kernels_in_program_order_with_reads_writes_and_producers():
    ks = _hlo.kernels(PROGRAM, 32)
    assert [(k.name, k.reads, k.writes) for k in ks] == [
        ("mx", (("bf16", "x"),), ("f32",)),
        ("se", (("f32", "mx"),), ()),
        ("grad", (("f32", "state"),), ("bf16",)),  # found inside the while body
    ]
    assert ks[0].ops == {"convert", "tanh"} and ks[0].dtypes == {"f32"}
    assert [k.transcendentals for k in ks] == [1, 1, 1]


def test_traffic_in_units_of_the_logits():
    t = _hlo.traffic(PROGRAM, 32, "bfloat16")
    assert (t.reads, t.writes) == (1 + 2 + 2, 2 + 1)  # f32 arrays are 2 bf16 logits
    assert t.temporaries == ("f32",)
    assert t.bound == 2 and t.x_bound == 4
    assert t.transcendental_passes == 3


def test_stablehlo_inspection():
    mlir = """
    %0 = stablehlo.constant dense<1.0> : tensor<f64>
    %1 = stablehlo.exponential %arg0 : tensor<4x8xf32>
    %2 = stablehlo.optimization_barrier %1 : tensor<4x8xf32>
    %3 = stablehlo.reshape %arg0 : (tensor<4x8xf32>) -> tensor<4x2x4xf32>
    %4 = stablehlo.convert %arg0 : (tensor<4x8xf32>) -> tensor<4x8xf64>
    %5 = stablehlo.custom_call @xla_ffi_python_cpu_callback(%arg0) : (tensor<4x8xf32>) -> ()
    """
    assert _hlo.custom_call_targets(mlir) == {"xla_ffi_python_cpu_callback"}
    assert _hlo.float64_arrays(mlir) == {(4, 8)}
    assert _hlo.resized_logits(mlir, (4, 8)) == {(4, 2, 4)}
    assert _hlo.barrier_operands(mlir) == {"exponential"}
