//! Rotary position embedding with a precomputed cos/sin table.
//!
//! HF checkpoints permute q/k weights so rotation pairs are `(i, i + d/2)` ("rotate half");
//! Mistral's original `.pth` checkpoints pair neighbours `(2i, 2i + 1)`. Both layouts share one
//! table. Angles are computed in f64 so long positions keep full f32 accuracy.

use std::sync::OnceLock;

use crate::error::{check_len, KernelError};

/// Which elements of a head vector form a rotation pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(i, i + d/2)` (HF "rotate_half").
    HalfSplit,
    /// Pairs `(2i, 2i + 1)` (Mistral reference / Meta layout).
    Interleaved,
}

/// Positions per lazily computed block of the table.
const BLOCK: usize = 256;

/// `cos`/`sin` of `pos * theta^(-2i/d)` for `pos < max_pos`, `i < d/2`, computed in blocks of
/// [`BLOCK`] positions on first use: a model's table spans max_position_embeddings (32768
/// positions × 64 pairs for Mixtral, ~4M `f64` sin/cos, ~0.1 s), while a session touches only
/// the positions it reaches, and building it all would sit in every load.
#[derive(Clone, Debug)]
pub struct RopeTable {
    head_dim: usize,
    max_pos: usize,
    inv_freq: Vec<f64>,
    /// Block `b`: for each of its positions, `d/2` cos then `d/2` sin.
    blocks: Vec<OnceLock<Box<[f32]>>>,
}

impl RopeTable {
    /// Table for `head_dim` (pairs `d/2`; an odd last element is never rotated), base `theta`,
    /// positions `0..max_pos`. Positions beyond `max_pos` still work (computed on the fly).
    pub fn new(head_dim: usize, theta: f64, max_pos: usize) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64))
            .collect();
        RopeTable {
            head_dim,
            max_pos,
            inv_freq,
            blocks: (0..max_pos.div_ceil(BLOCK))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The block holding `pos` (< max_pos), computed on first use.
    fn block(&self, b: usize) -> &[f32] {
        self.blocks[b].get_or_init(|| {
            let half = self.inv_freq.len();
            let end = ((b + 1) * BLOCK).min(self.max_pos);
            let mut v = Vec::with_capacity((end - b * BLOCK) * 2 * half);
            for p in b * BLOCK..end {
                v.extend(self.inv_freq.iter().map(|f| (p as f64 * f).cos() as f32));
                v.extend(self.inv_freq.iter().map(|f| (p as f64 * f).sin() as f32));
            }
            v.into_boxed_slice()
        })
    }

    /// The head dimension this table was built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Positions covered by the precomputed table.
    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    /// Rotates `x` in place for position `pos`. `x` is one head vector (`head_dim` long) or
    /// several heads back to back (a multiple of `head_dim`), each rotated the same way.
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of `head_dim` (see [`RopeTable::try_apply`]).
    #[track_caller]
    pub fn apply(&self, layout: RopeLayout, x: &mut [f32], pos: usize) {
        if let Err(e) = self.try_apply(layout, x, pos) {
            panic!("{e}");
        }
    }

    /// [`RopeTable::apply`] returning an error when `x` is not whole heads.
    pub fn try_apply(
        &self,
        layout: RopeLayout,
        x: &mut [f32],
        pos: usize,
    ) -> Result<(), KernelError> {
        let d = self.head_dim;
        if d == 0 {
            return check_len("rope", "x", 0, x.len());
        }
        if !x.len().is_multiple_of(d) {
            return Err(KernelError::Invalid {
                kernel: "rope",
                arg: "x",
                what: format!("length {} is not a multiple of head_dim {d}", x.len()),
            });
        }
        let half = d / 2;
        if pos >= self.max_pos {
            // Beyond the table (rare): compute this position's angles pair by pair, no allocation.
            for head in x.chunks_exact_mut(d) {
                for (i, f) in self.inv_freq.iter().enumerate() {
                    let a = pos as f64 * f;
                    rotate_pair(head, layout, half, i, a.cos() as f32, a.sin() as f32);
                }
            }
            return Ok(());
        }
        let off = (pos % BLOCK) * 2 * half;
        let (cos, sin) = self.block(pos / BLOCK)[off..off + 2 * half].split_at(half);
        for head in x.chunks_exact_mut(d) {
            for i in 0..half {
                rotate_pair(head, layout, half, i, cos[i], sin[i]);
            }
        }
        Ok(())
    }
}

#[inline(always)]
fn rotate_pair(head: &mut [f32], layout: RopeLayout, half: usize, i: usize, c: f32, s: f32) {
    let (a, b) = match layout {
        RopeLayout::HalfSplit => (i, i + half),
        RopeLayout::Interleaved => (2 * i, 2 * i + 1),
    };
    let (x0, x1) = (head[a], head[b]);
    head[a] = x0 * c - x1 * s;
    head[b] = x1 * c + x0 * s;
}
