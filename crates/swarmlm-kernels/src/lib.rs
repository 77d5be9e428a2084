//! swarmlm-kernels: the CPU hot loops of batch-1 Mixtral decode (and prefill).
//!
//! At batch 1 a token costs one pass over the active weights, so decode speed is memory read
//! bandwidth divided by bytes per token. These kernels exist to run at that roofline: bf16
//! weights (straight from a memory map, only 2-byte aligned) times f32 activations, with the
//! SIMD path (AVX-512 / AVX2+FMA / scalar) chosen once at run time, and work split over a
//! persistent [`Pool`] of threads sized to physical cores.
//!
//! Layout conventions: weights row-major `[out, in]`; activations f32; every function that
//! takes a `&Pool` splits by output rows (or KV heads) and never allocates per call, except
//! [`expert_ffn_bf16_batch`] growing its caller-owned scratch `Vec` when it is too small.
//! Plain functions panic on mismatched lengths (a caller bug); `try_*` twins return
//! [`KernelError`]; `*_with` twins take an explicit [`Isa`] (tests, benchmarks).
//!
//! Numerics: products are exact (bf16 widens exactly to f32) and accumulated in f32 with
//! several independent accumulators, so results differ from a sequential sum by rounding only;
//! the tests bound the error against an f64 reference by `1e-6 · sqrt(cols) · Σ|wᵢxᵢ|`. A row's
//! summation order is fixed per ISA and does not depend on the thread split, so matvec output
//! is bitwise identical for any pool size (but differs in the last bits between ISAs).
//!
//! Threading: [`Pool::run`] / [`Pool::run_chunks`] inside a pool job run inline on that thread,
//! so callers may parallelise an outer loop and still call the kernels. Ops smaller than ~64K
//! weight elements run on the calling thread (waking workers would cost more).
//!
//! ISA: [`isa()`] reports the path; `SWARMLM_KERNELS_ISA=avx2|scalar|…` forces a supported one
//! for A/B measurements.

// Kernels index several parallel arrays by the same lane/row number; iterator chains would hide
// that correspondence rather than clarify it.
#![allow(clippy::needless_range_loop)]

mod attention;
mod backend;
mod error;
mod isa;
mod linear;
mod math;
mod pool;
mod rope;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use half::bf16;

pub use attention::{
    attention_decode, try_attention_decode, try_attention_decode_with, KvCacheLayer,
};
pub use error::KernelError;
pub use isa::{isa, Isa};
pub use linear::{
    expert_down_rows_bf16, expert_down_rows_bf16_batch, expert_ffn_bf16, expert_ffn_bf16_batch,
    expert_gate_up_rows_bf16, expert_gate_up_rows_bf16_batch, matmul_bf16, matvec_bf16,
    matvec_bf16_bf16act, round_to_bf16, try_expert_ffn_bf16, try_expert_ffn_bf16_batch,
    try_expert_ffn_bf16_batch_with, try_expert_ffn_bf16_with, try_matmul_bf16,
    try_matmul_bf16_with, try_matvec_bf16, try_matvec_bf16_bf16act, try_matvec_bf16_bf16act_with,
    try_matvec_bf16_with,
};
pub use math::{rms_norm, rms_norm_bf16, silu, softmax_in_place, try_rms_norm, try_rms_norm_bf16};
pub use pool::{split_range, Pool};
pub use rope::{RopeLayout, RopeTable};
