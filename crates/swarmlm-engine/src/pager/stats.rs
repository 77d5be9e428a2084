//! What the pager did: per-layer hit/miss/prefetch counters and the residency high-water mark,
//! so a run under a budget can be judged (how much it read, how often it waited) and so tests
//! can check the policy against an offline simulation.

use std::fmt::Write as _;
use std::time::Duration;

use super::size::format_size;

/// Counters of one layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerStats {
    /// Demand requests (the router picked the expert) found resident or already loading.
    pub hits: u64,
    /// Demand requests that had to start a load.
    pub misses: u64,
    /// Of those misses, the experts computed piece by piece as their bytes arrived, without a
    /// slot (the policy kept its stable experts).
    pub streamed: u64,
    /// Hits that were resident only because the lookahead prefetched them.
    pub prefetch_hits: u64,
    /// Prefetched experts evicted before any demand used them.
    pub prefetch_wasted: u64,
    /// Prefetch loads started.
    pub prefetch_issued: u64,
    /// Experts the lookahead predicted for this layer (decode tokens only).
    pub predicted: u64,
    /// Of those, how many the router then actually picked.
    pub predicted_correct: u64,
    /// Bytes the I/O threads read for this layer's experts.
    pub bytes_read: u64,
    /// Time the compute thread waited for this layer's experts.
    pub stall: Duration,
    /// Demand requests per expert of the layer: the routing frequency distribution the
    /// stable set is chosen from.
    pub picks: Vec<u64>,
}

impl LayerStats {
    fn add(&mut self, o: &LayerStats) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.streamed += o.streamed;
        self.prefetch_hits += o.prefetch_hits;
        self.prefetch_wasted += o.prefetch_wasted;
        self.prefetch_issued += o.prefetch_issued;
        self.predicted += o.predicted;
        self.predicted_correct += o.predicted_correct;
        self.bytes_read += o.bytes_read;
        self.stall += o.stall;
        if self.picks.len() < o.picks.len() {
            self.picks.resize(o.picks.len(), 0);
        }
        for (a, b) in self.picks.iter_mut().zip(&o.picks) {
            *a += b;
        }
    }

    /// hits / (hits + misses), 0 when there were no requests.
    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }

    /// predicted_correct / predicted, 0 when nothing was predicted.
    pub fn prediction_accuracy(&self) -> f64 {
        if self.predicted == 0 {
            0.0
        } else {
            self.predicted_correct as f64 / self.predicted as f64
        }
    }
}

/// A snapshot of the pager's accounting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PagerStats {
    pub layers: Vec<LayerStats>,
    /// The budget for resident expert bytes.
    pub budget_bytes: u64,
    /// Bytes of one expert (w1 + w3 + w2).
    pub expert_bytes: u64,
    /// Experts that fit the budget at once.
    pub slots: usize,
    /// Expert bytes resident (or being loaded) now.
    pub resident_expert_bytes: u64,
    /// The most expert bytes ever resident (or being loaded) at once.
    pub resident_expert_bytes_peak: u64,
    /// Bytes of every non-expert tensor (always resident, outside the budget).
    pub non_expert_bytes: u64,
}

impl PagerStats {
    /// All layers summed.
    pub fn totals(&self) -> LayerStats {
        let mut t = LayerStats::default();
        for l in &self.layers {
            t.add(l);
        }
        t
    }

    /// A human-readable table (one row per layer, then totals), for `--stats`.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "expert pager: budget {} = {} experts of {}; resident now {}, peak {}; non-expert weights {} (always resident)",
            format_size(self.budget_bytes),
            self.slots,
            format_size(self.expert_bytes),
            format_size(self.resident_expert_bytes),
            format_size(self.resident_expert_bytes_peak),
            format_size(self.non_expert_bytes),
        );
        let _ = writeln!(
            s,
            "{:>6} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8} {:>9} {:>12} {:>9}",
            "layer",
            "hits",
            "misses",
            "streamed",
            "hit%",
            "pf_issued",
            "pf_hits",
            "pf_waste",
            "predict%",
            "read",
            "stall_ms"
        );
        let row = |s: &mut String, name: &str, l: &LayerStats| {
            let pred = if l.predicted == 0 {
                "-".to_string()
            } else {
                format!("{:.1}", 100.0 * l.prediction_accuracy())
            };
            let _ = writeln!(
                s,
                "{:>6} {:>8} {:>8} {:>8} {:>7.1} {:>9} {:>8} {:>8} {:>9} {:>12} {:>9.1}",
                name,
                l.hits,
                l.misses,
                l.streamed,
                100.0 * l.hit_rate(),
                l.prefetch_issued,
                l.prefetch_hits,
                l.prefetch_wasted,
                pred,
                format_size(l.bytes_read),
                l.stall.as_secs_f64() * 1e3,
            );
        };
        for (i, l) in self.layers.iter().enumerate() {
            row(&mut s, &i.to_string(), l);
        }
        row(&mut s, "all", &self.totals());
        // Share of each layer's requests per expert, most picked first (with its index).
        for (i, l) in self.layers.iter().enumerate() {
            let total: u64 = l.picks.iter().sum();
            if total == 0 {
                continue;
            }
            let mut order: Vec<usize> = (0..l.picks.len()).collect();
            order.sort_by_key(|&e| std::cmp::Reverse(l.picks[e]));
            let shares: Vec<String> = order
                .iter()
                .map(|&e| format!("{e}:{:.1}", 100.0 * l.picks[e] as f64 / total as f64))
                .collect();
            let _ = writeln!(s, "layer {i} picks% (expert:share) {}", shares.join(" "));
        }
        s
    }
}
