//! The expert pager: outputs are bit-identical under any budget, the budget holds (by the
//! pager's accounting and by the kernel's `mincore`), an LRU of c experts per layer reproduces
//! the reference hit rates of shakespeare-moe, and a failed load is a typed error.

mod common;

use std::path::Path;

use common::*;
use swarmlm_engine::pager::{PagerConfig, PagerError, Policy, Prefetch, Residency};
use swarmlm_engine::{EngineError, Model, Pager, Session};
use swarmlm_forge::{ForgeSpec, Overrides, Preset};
use swarmlm_weights::{page_size, Checkpoint};

/// A forged model whose experts (24 MiB: 2 layers × 8 experts × 1.5 MiB) are 8× the smallest
/// budget, spread over several shards.
fn forge_big_experts(dir: &Path) {
    let overrides = Overrides {
        hidden_size: Some(256),
        intermediate_size: Some(1024),
        num_hidden_layers: Some(2),
        num_attention_heads: Some(4),
        num_key_value_heads: Some(2),
        num_local_experts: Some(8),
        num_experts_per_tok: Some(2),
        vocab_size: Some(512),
        ..Overrides::default()
    };
    let mut spec = ForgeSpec::with_overrides(Preset::Tiny, &overrides);
    spec.seed = 11;
    spec.shard_size = 10 << 20;
    swarmlm_forge::forge(&spec, dir).expect("forge");
    // Dirty pages cannot be dropped from the page cache; write them back first.
    for entry in std::fs::read_dir(dir).unwrap() {
        let f = std::fs::File::open(entry.unwrap().path()).unwrap();
        f.sync_all().unwrap();
    }
}

fn greedy(model: &Model<'_>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = Session::new(model, prompt.len() + n);
    let mut next = argmax(s.prefill(prompt).unwrap()) as u32;
    let mut out = vec![next];
    while out.len() < n {
        next = argmax(s.decode_step(next).unwrap()) as u32;
        out.push(next);
    }
    out
}

fn teacher_forced(model: &Model<'_>, ids: &[u32]) -> Vec<u32> {
    let mut s = Session::new(model, ids.len());
    let l = s.prefill_all(ids).unwrap();
    l.data.iter().map(|v| v.to_bits()).collect()
}

/// Decode-step logits (bits) of `ids` fed one at a time.
fn stepwise(model: &Model<'_>, ids: &[u32]) -> Vec<u32> {
    let mut s = Session::new(model, ids.len());
    let mut out = Vec::new();
    for &id in ids {
        out.extend(s.decode_step(id).unwrap().iter().map(|v| v.to_bits()));
    }
    out
}

/// Page-cache bytes (mincore) of every expert tensor.
fn mincore_expert_bytes(ckpt: &Checkpoint, pager: &Pager<'_>) -> usize {
    let c = ckpt.config();
    let mut total = 0;
    for l in 0..c.num_hidden_layers {
        for e in 0..c.num_local_experts {
            for name in pager.tensor_names(l, e) {
                total += ckpt.resident_bytes(name).unwrap();
            }
        }
    }
    total
}

/// Page-cache bytes (mincore) of the experts the pager does not hold.
fn absent_expert_bytes(ckpt: &Checkpoint, pager: &Pager<'_>) -> usize {
    let c = ckpt.config();
    let mut total = 0;
    for l in 0..c.num_hidden_layers {
        for e in 0..c.num_local_experts {
            if pager.residency(l, e) != Residency::Ready {
                for name in pager.tensor_names(l, e) {
                    total += ckpt.resident_bytes(name).unwrap();
                }
            }
        }
    }
    total
}

struct Outputs {
    greedy: Vec<u32>,
    forced: Vec<u32>,
    steps: Vec<u32>,
}

fn outputs(model: &Model<'_>, prompt: &[u32], text: &[u32], n: usize) -> Outputs {
    Outputs {
        greedy: greedy(model, prompt, n),
        forced: teacher_forced(model, text),
        steps: stepwise(model, text),
    }
}

/// Decodes `tokens` one by one under a pager of `budget_bytes` with `policy` (no prefetch, page
/// cache kept), checks the budget held, and returns the expert hit rate.
fn hit_rate(model: &mut Model<'_>, budget_bytes: u64, policy: Policy, tokens: &[u32]) -> f64 {
    let cfg = PagerConfig {
        budget_bytes,
        policy,
        prefetch: Prefetch::Off,
        drop_page_cache: false,
    };
    model.attach_pager(cfg).unwrap();
    let mut s = Session::new(model, tokens.len());
    for &id in tokens {
        s.decode_step(id).unwrap();
    }
    let st = model.pager().unwrap().stats();
    eprintln!("{policy:?}\n{}", st.table());
    assert!(st.resident_expert_bytes_peak <= budget_bytes);
    st.totals().hit_rate()
}

fn assert_same(what: &str, a: &Outputs, b: &Outputs) {
    assert_eq!(a.greedy, b.greedy, "{what}: greedy tokens differ");
    assert!(a.forced == b.forced, "{what}: teacher-forced logits differ");
    assert!(a.steps == b.steps, "{what}: step-by-step logits differ");
}

#[test]
fn forged_outputs_identical_and_budget_held() {
    let tmp = tempfile::tempdir().unwrap();
    forge_big_experts(tmp.path());
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    let prompt: Vec<u32> = vec![1, 17, 300, 42, 99, 7];
    let text: Vec<u32> = (0..40u32).map(|i| (i * 37 + 5) % 512).collect();

    let want = outputs(&Model::load(&ckpt, 2).unwrap(), &prompt, &text, 24);
    drop(ckpt);
    // A fresh map for the paged runs: the unpaged run left pages mapped that no drop can evict.
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    let mut model = Model::load(&ckpt, 2).unwrap();

    // The smallest legal budget is one layer's top-2 experts; one byte less is refused with
    // the minimum in the message.
    model.attach_pager(PagerConfig::new(1 << 30)).unwrap();
    let expert_bytes = model.pager().unwrap().expert_bytes();
    let min = model.pager().unwrap().minimum_budget();
    assert_eq!(expert_bytes, 3 * 256 * 1024 * 2);
    assert_eq!(min, 2 * expert_bytes);
    match model.attach_pager(PagerConfig::new(min - 1)) {
        Err(EngineError::Pager(e @ PagerError::BudgetTooSmall { .. })) => {
            let msg = e.to_string();
            assert!(msg.contains(&min.to_string()), "{msg}");
        }
        other => panic!("expected BudgetTooSmall, got {:?}", other.err()),
    }

    // mincore counts whole pages: a resident expert's tensors count the pages they share with
    // their neighbours (twice when both are resident), and pages shared with non-expert
    // tensors stay cached. Evicted experts' edge pages go when no resident expert shares them,
    // so nothing else may remain: the slack is a few dozen pages, far below one expert.
    let kernel_slack = 3 * 2 * page_size() * 16;
    assert!(kernel_slack < expert_bytes as usize / 2);
    for (policy, prefetch) in [
        (Policy::LayerLru, Prefetch::Lookahead),
        (Policy::Lru, Prefetch::Off),
        (Policy::LayerLru, Prefetch::Off),
        (Policy::LayerFreq, Prefetch::Lookahead),
    ] {
        for budget in [min, min + expert_bytes] {
            let what = format!("{policy:?}/{prefetch:?}/budget {budget}");
            let cfg = PagerConfig {
                budget_bytes: budget,
                policy,
                prefetch,
                drop_page_cache: true,
            };
            model.attach_pager(cfg).unwrap();
            let start = mincore_expert_bytes(&ckpt, model.pager().unwrap());
            assert!(
                start <= kernel_slack,
                "{what}: {start} expert bytes cached at start"
            );
            let got = outputs(&model, &prompt, &text, 24);
            assert_same(&what, &want, &got);

            // Budget held, step by step, by accounting and by the kernel.
            let mut s = Session::new(&model, text.len());
            for &id in &text {
                s.decode_step(id).unwrap();
                let p = model.pager().unwrap();
                let st = p.stats();
                assert!(st.resident_expert_bytes <= budget, "{what}: {st:?}");
                let cached = mincore_expert_bytes(&ckpt, p);
                assert!(
                    cached <= budget as usize + kernel_slack,
                    "{what}: mincore says {cached} expert bytes cached, budget {budget}"
                );
                // Evicted experts leave nothing cached but pages shared with non-expert
                // tensors; keeping each evicted tensor's edge pages would leave up to two pages
                // per tensor ever used (~90 here).
                let absent = absent_expert_bytes(&ckpt, p);
                assert!(
                    absent <= 16 * page_size(),
                    "{what}: {absent} bytes of evicted experts still cached"
                );
            }
            let st = model.pager().unwrap().stats();
            assert!(st.resident_expert_bytes_peak <= budget, "{what}: {st:?}");
            let t = st.totals();
            assert!(
                t.misses > 0 && t.bytes_read >= t.misses * expert_bytes,
                "{what}: {t:?}"
            );
            // 2 or 3 slots for 2 layers × top-2: the layer-aware policies stream what their
            // layer's share cannot hold (computed piece by piece, no slot), and keep hits.
            if policy != Policy::Lru {
                assert!(t.streamed > 0 && t.hits > 0, "{what}: {t:?}");
            } else {
                assert_eq!(t.streamed, 0, "{what}: {t:?}");
            }
            eprintln!("{what}\n{}", st.table());
        }
    }
}

#[test]
fn failed_load_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    forge_big_experts(tmp.path());
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    let pager = Pager::new(&ckpt, PagerConfig::new(u64::MAX)).unwrap();
    // Explicit residency: absent → loading → ready, through the I/O thread.
    match pager.request(0, 3).unwrap() {
        Residency::Loading | Residency::Ready => {}
        r => panic!("unexpected {r:?}"),
    }
    // Borrowed views only: nothing below reads through the map after the file shrinks.
    let (w03, w15) = {
        let m = Model::load(&ckpt, 1).unwrap();
        (m.experts().get(0, 3), m.experts().get(1, 5))
    };
    drop(pager.acquire(0, 3, w03).unwrap());
    assert_eq!(pager.residency(0, 3), Residency::Ready);
    assert_eq!(pager.stats().totals().bytes_read, pager.expert_bytes());

    // Shorten the shard holding layer 1's experts: the pager reads with pread, so the load
    // fails cleanly (nothing touches the mapping).
    let loc = ckpt
        .location(&pager.tensor_names(1, 5)[0])
        .expect("location");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&loc.file)
        .unwrap();
    f.set_len(loc.offset).unwrap();
    match pager.acquire(1, 5, w15) {
        Err(PagerError::LoadFailed {
            layer: 1,
            expert: 5,
            reason,
        }) => {
            assert!(reason.contains("end of file"), "{reason}");
        }
        Err(e) => panic!("expected LoadFailed, got {e}"),
        Ok(_) => panic!("expected LoadFailed, got a pinned expert"),
    }
    assert!(matches!(pager.residency(1, 5), Residency::Failed(_)));
}

#[test]
fn shakespeare_outputs_identical_at_smallest_budget() {
    let dir = shakespeare_dir();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let reference = read_json(&dir.join("reference/reference.json"));
    let prompt = ids(&reference["prompts"][0]["input_ids"]);
    let held = ids(&read_json(&dir.join("reference/heldout_ids.json")));
    let mut text = vec![1u32];
    text.extend_from_slice(&held[..96]);

    let mut model = Model::load(&ckpt, 2).unwrap();
    let want = outputs(&model, &prompt, &text, 32);
    model.attach_pager(PagerConfig::new(1 << 40)).unwrap();
    let min = model.pager().unwrap().minimum_budget();
    for prefetch in [Prefetch::Lookahead, Prefetch::Off] {
        let cfg = PagerConfig {
            prefetch,
            ..PagerConfig::new(min)
        };
        model.attach_pager(cfg).unwrap();
        let got = outputs(&model, &prompt, &text, 32);
        assert_same(&format!("shakespeare {prefetch:?}"), &want, &got);
        let st = model.pager().unwrap().stats();
        assert!(st.resident_expert_bytes_peak <= min);
        eprintln!("{}", st.table());
    }
}

/// reference/routing_stats.json: `lru_hit_rate[c]` is the hit rate of a per-layer LRU of c
/// experts over the 2048 held-out tokens (4 chunks of 512, each token requesting its top-2 in
/// order, the cache carried across chunks, `<s>` not counted). Run exactly that through the
/// pager: prefetch off, budget = layers × c experts, each chunk as `[<s>] + chunk` token by
/// token, and the `<s>` step's requests subtracted from the counts.
#[test]
fn shakespeare_layer_lru_reproduces_reference_hit_rates() {
    let dir = shakespeare_dir();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let stats = read_json(&dir.join("reference/routing_stats.json"));
    let held = ids(&read_json(&dir.join("reference/heldout_ids.json")));
    assert!(held.len() >= 2048);
    let mut model = Model::load(&ckpt, 1).unwrap();
    let layers = ckpt.config().num_hidden_layers;
    let mut worst = 0f64;
    for c in 2..=8usize {
        model.attach_pager(PagerConfig::new(1 << 40)).unwrap();
        let eb = model.pager().unwrap().expert_bytes();
        let cfg = PagerConfig {
            budget_bytes: (layers * c) as u64 * eb,
            policy: Policy::LayerLru,
            prefetch: Prefetch::Off,
            drop_page_cache: false,
        };
        model.attach_pager(cfg).unwrap();
        let pager = model.pager().unwrap();
        let mut hits = vec![0u64; layers];
        let mut reqs = vec![0u64; layers];
        let mut s = Session::new(&model, 513);
        for chunk in held[..2048].chunks(512) {
            s.reset();
            s.decode_step(1).unwrap();
            let before = pager.stats();
            for &id in chunk {
                s.decode_step(id).unwrap();
            }
            let after = pager.stats();
            for l in 0..layers {
                let (a, b) = (&after.layers[l], &before.layers[l]);
                hits[l] += a.hits - b.hits;
                reqs[l] += (a.hits + a.misses) - (b.hits + b.misses);
            }
        }
        for l in 0..layers {
            assert_eq!(reqs[l], 2 * 2048);
            let got = hits[l] as f64 / reqs[l] as f64;
            let want = stats["layers"][l]["lru_hit_rate"][c.to_string()]
                .as_f64()
                .unwrap();
            eprintln!("c={c} layer {l}: hit rate {got:.4} reference {want:.4}");
            worst = worst.max((got - want).abs());
        }
    }
    eprintln!("largest |Δ hit rate| = {worst:.4}");
    assert!(worst <= 0.01, "largest |Δ hit rate| {worst} > 0.01");
}

/// Lookahead on shakespeare-moe: how often layer L+1's router, applied during layer L, names
/// the experts L+1 then picks; and what prefetching does to hits at a tight budget.
#[test]
fn shakespeare_lookahead_prediction_accuracy() {
    let dir = shakespeare_dir();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let held = ids(&read_json(&dir.join("reference/heldout_ids.json")));
    let mut model = Model::load(&ckpt, 1).unwrap();
    model.attach_pager(PagerConfig::new(1 << 40)).unwrap();
    let eb = model.pager().unwrap().expert_bytes();
    for (policy, prefetch) in [
        (Policy::LayerLru, Prefetch::Lookahead),
        (Policy::LayerLru, Prefetch::Off),
        (Policy::Lru, Prefetch::Lookahead),
        (Policy::Lru, Prefetch::Off),
    ] {
        // 12 slots for 4 layers × top-2 = 8 in use per token: tight but above one token.
        let cfg = PagerConfig {
            budget_bytes: 12 * eb,
            policy,
            prefetch,
            drop_page_cache: false,
        };
        model.attach_pager(cfg).unwrap();
        let mut s = Session::new(&model, 513);
        s.decode_step(1).unwrap();
        for (i, &id) in held[..512].iter().enumerate() {
            if i == 3 {
                // The accuracy gate starts closed: the first 4 tokens (8 scored guesses per
                // layer) prefetch nothing, whatever the routers.
                let t = model.pager().unwrap().stats().totals();
                assert_eq!(t.prefetch_issued, 0, "{policy:?} / {prefetch:?}");
            }
            s.decode_step(id).unwrap();
        }
        let st = model.pager().unwrap().stats();
        eprintln!("{policy:?} / {prefetch:?}\n{}", st.table());
        let t = st.totals();
        if prefetch == Prefetch::Lookahead {
            // Layers 1..3 are predicted, 2 experts per token.
            assert_eq!(t.predicted, 3 * 2 * 513);
            assert!(
                t.prediction_accuracy() > 0.6,
                "lookahead accuracy {:.3}",
                t.prediction_accuracy()
            );
            assert!(t.prefetch_hits > 0);
        } else {
            // Predictions are still scored (that is how accuracy is measured without
            // prefetching), but nothing is loaded for them.
            assert_eq!(t.predicted, 3 * 2 * 513);
            assert_eq!(t.prefetch_issued + t.prefetch_hits + t.prefetch_wasted, 0);
        }
    }
}

/// Fewer slots than one token's layers × top-k: a global LRU evicts every expert just before
/// its next use, and lending slots between per-layer shares (1 slot each here, below top-2)
/// cascades the same way; LayerLru and LayerFreq keep every slot as a stable per-layer expert
/// and stream the rest.
#[test]
fn layer_lru_keeps_hits_when_one_token_needs_more_than_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let overrides = Overrides {
        hidden_size: Some(64),
        intermediate_size: Some(128),
        num_hidden_layers: Some(4),
        num_attention_heads: Some(4),
        num_key_value_heads: Some(2),
        num_local_experts: Some(8),
        num_experts_per_tok: Some(2),
        vocab_size: Some(512),
        ..Overrides::default()
    };
    let mut spec = ForgeSpec::with_overrides(Preset::Tiny, &overrides);
    spec.seed = 5;
    swarmlm_forge::forge(&spec, tmp.path()).expect("forge");
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    let mut model = Model::load(&ckpt, 1).unwrap();
    model.attach_pager(PagerConfig::new(1 << 40)).unwrap();
    let eb = model.pager().unwrap().expert_bytes();
    let tokens: Vec<u32> = (0..300u32).map(|i| (i * 37 + 11) % 512).collect();
    let rate: Vec<f64> = [Policy::Lru, Policy::LayerLru, Policy::LayerFreq]
        .into_iter()
        .map(|policy| hit_rate(&mut model, 4 * eb, policy, &tokens))
        .collect();
    // 4 stable experts for 4 layers: ~12.5% on uniform routing (2 requests per layer a token,
    // 1/4 chance each that the kept expert is picked; 2 slots stable before streaming: ~6%);
    // the global LRU gets none.
    assert!(rate[0] < 0.01, "lru hit rate {}", rate[0]);
    assert!(rate[1] > 0.09, "layer-lru hit rate {}", rate[1]);
    assert!(rate[2] > 0.09, "layer-freq hit rate {}", rate[2]);
}

/// Trained routers are skewed (shakespeare-moe's reference/routing_stats.json: each layer's
/// most picked expert takes 34–46% of the picks, uniform would be 12.5%). With one stable
/// expert per layer (4 slots, 4 layers, top-2: the rest streamed), keeping the most often
/// routed expert (LayerFreq) hits far more often than keeping the most recent one (LayerLru).
#[test]
fn shakespeare_frequency_beats_recency_with_one_stable_expert_per_layer() {
    let dir = shakespeare_dir();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let held = ids(&read_json(&dir.join("reference/heldout_ids.json")));
    let mut model = Model::load(&ckpt, 1).unwrap();
    model.attach_pager(PagerConfig::new(1 << 40)).unwrap();
    let eb = model.pager().unwrap().expert_bytes();
    let mut tokens = vec![1u32];
    tokens.extend_from_slice(&held[..512]);
    let rate: Vec<f64> = [Policy::LayerLru, Policy::LayerFreq]
        .into_iter()
        .map(|policy| hit_rate(&mut model, 4 * eb, policy, &tokens))
        .collect();
    eprintln!(
        "hit rate: layer-lru {:.3}, layer-freq {:.3}",
        rate[0], rate[1]
    );
    assert!(rate[1] > 0.3, "layer-freq hit rate {}", rate[1]);
    assert!(
        rate[1] > rate[0] + 0.05,
        "layer-freq {} vs layer-lru {}",
        rate[1],
        rate[0]
    );
}
