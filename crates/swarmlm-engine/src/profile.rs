//! Opt-in per-op wall-clock timing of decode steps, so the next gap to the memory roofline is
//! visible (issue 9: "record per-op time").
//!
//! Off by default: [`OpProfile::from_env`] turns it on only when `SWARMLM_PROFILE` is set to a
//! non-empty value other than `0`. When off, every timing point is one predictable branch on a
//! plain `bool` and no clock is read, so the default path is not slowed. Only single-token
//! forwards (decode) are timed; prefill is reported as a whole by the generation timings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The parts of a decode step that are timed separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Input norm, q/k/v projections, RoPE, KV-cache write, attention over the cache, o_proj.
    Attention,
    /// Router matvec, softmax / top-k.
    Router,
    /// The chosen experts' FFNs (including the pager's bookkeeping, if attached).
    Experts,
    /// Final norm and lm_head.
    LmHead,
    /// Embedding lookup, post-attention norm, residual adds (and the pager's lookahead).
    Other,
}

const OPS: [Op; 5] = [
    Op::Attention,
    Op::Router,
    Op::Experts,
    Op::LmHead,
    Op::Other,
];

impl Op {
    /// Stable name used in reports (`--json` keys).
    pub fn name(self) -> &'static str {
        match self {
            Op::Attention => "attention",
            Op::Router => "router",
            Op::Experts => "experts",
            Op::LmHead => "lm_head",
            Op::Other => "other",
        }
    }
}

/// Accumulated per-op wall time over the timed decode steps.
#[derive(Debug, Default)]
pub struct OpProfile {
    enabled: bool,
    nanos: [AtomicU64; 5],
    steps: AtomicU64,
}

/// A snapshot of an [`OpProfile`]: seconds per op (in [`Op`] order) and the number of steps.
#[derive(Debug, Clone, PartialEq)]
pub struct OpProfileReport {
    pub steps: u64,
    pub seconds: Vec<(&'static str, f64)>,
}

impl OpProfile {
    /// Enabled when `SWARMLM_PROFILE` is set (and not empty or `0`).
    pub fn from_env() -> OpProfile {
        let enabled = std::env::var("SWARMLM_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
        OpProfile::new(enabled)
    }

    /// A profile that records only if `enabled`.
    pub fn new(enabled: bool) -> OpProfile {
        OpProfile {
            enabled,
            ..OpProfile::default()
        }
    }

    /// Whether timing points record anything.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A timing point: `Some(now)` when `on` and the profile is enabled, else `None` (no clock
    /// read).
    #[inline]
    pub(crate) fn mark(&self, on: bool) -> Option<Instant> {
        if self.enabled && on {
            Some(Instant::now())
        } else {
            None
        }
    }

    /// Charges the time since `since` to `op` and returns a fresh mark for the next op.
    #[inline]
    pub(crate) fn lap(&self, since: Option<Instant>, op: Op) -> Option<Instant> {
        let since = since?;
        let now = Instant::now();
        let ns = now.duration_since(since).as_nanos() as u64;
        self.nanos[op as usize].fetch_add(ns, Ordering::Relaxed);
        Some(now)
    }

    /// Counts one timed step.
    #[inline]
    pub(crate) fn step(&self, on: bool) {
        if self.enabled && on {
            self.steps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The totals so far, or `None` when profiling is off.
    pub fn report(&self) -> Option<OpProfileReport> {
        if !self.enabled {
            return None;
        }
        Some(OpProfileReport {
            steps: self.steps.load(Ordering::Relaxed),
            seconds: OPS
                .iter()
                .map(|&op| {
                    let ns = self.nanos[op as usize].load(Ordering::Relaxed);
                    (op.name(), ns as f64 * 1e-9)
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_profile_reads_no_clock_and_reports_nothing() {
        let p = OpProfile::new(false);
        assert!(p.mark(true).is_none());
        assert!(p.lap(None, Op::Experts).is_none());
        p.step(true);
        assert!(p.report().is_none());
    }

    #[test]
    fn enabled_profile_charges_laps_to_their_ops() {
        let p = OpProfile::new(true);
        assert!(p.mark(false).is_none(), "prefill batches are not timed");
        let t = p.mark(true);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let t = p.lap(t, Op::Experts);
        let _ = p.lap(t, Op::LmHead);
        p.step(true);
        let r = p.report().unwrap();
        assert_eq!(r.steps, 1);
        let names: Vec<_> = r.seconds.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            ["attention", "router", "experts", "lm_head", "other"]
        );
        assert!(r.seconds[2].1 >= 0.005, "{r:?}");
        assert!(r.seconds[3].1 < r.seconds[2].1, "{r:?}");
        assert_eq!(r.seconds[0].1, 0.0);
    }
}
