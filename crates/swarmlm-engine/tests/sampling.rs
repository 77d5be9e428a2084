//! Sampling: reproducibility, the filters' guarantees, the repeat penalty, greedy.

use std::collections::HashMap;

use swarmlm_engine::sampling::{
    splitmix64, Sampler, SamplingError, SamplingParams, Xoshiro256PlusPlus,
};

fn params(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k: None,
        top_p: None,
        min_p: None,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 1234,
    }
}

/// Deterministic, varied logits over `n` tokens (a fixed pseudo-random walk).
fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n)
        .map(|_| (rng.next_f64() * 8.0 - 4.0) as f32)
        .collect()
}

fn softmax(l: &[f32], t: f32) -> Vec<f64> {
    let max = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = l
        .iter()
        .map(|&x| (f64::from((x - max) / t)).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn prob_of(dist: &[(u32, f32)], id: u32) -> f32 {
    dist.iter().find(|(i, _)| *i == id).map_or(0.0, |(_, p)| *p)
}

#[test]
fn prng_matches_published_reference_values() {
    // xoshiro256++ from state [1, 2, 3, 4] (reference outputs of xoshiro256plusplus.c).
    let mut rng = Xoshiro256PlusPlus::from_state([1, 2, 3, 4]);
    let want: [u64; 10] = [
        41943041,
        58720359,
        3588806011781223,
        3591011842654386,
        9228616714210784205,
        9973669472204895162,
        14011001112246962877,
        12406186145184390807,
        15849039046786891736,
        10450023813501588000,
    ];
    for w in want {
        assert_eq!(rng.next_u64(), w);
    }
    // SplitMix64 from 0: first output of splitmix64.c.
    let mut s = 0u64;
    assert_eq!(splitmix64(&mut s), 0xe220_a839_7b1d_cdaf);
    // The seeding used by Sampler: seed 42, pinned so a change of stream cannot go unnoticed.
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(42);
    assert_eq!(rng.next_u64(), 15021278609987233951);
    assert_eq!(rng.next_u64(), 5881210131331364753);
    assert_eq!(rng.next_u64(), 18149643915985481100);
}

#[test]
fn seeded_runs_repeat_exactly() {
    let l = logits(1000, 1);
    let run = |seed: u64| -> Vec<u32> {
        let mut s = Sampler::new(SamplingParams {
            seed,
            top_k: Some(50),
            top_p: Some(0.9),
            ..params(0.9)
        })
        .unwrap();
        let mut history = Vec::new();
        for _ in 0..300 {
            let id = s.sample(&l, &history);
            history.push(id);
        }
        history
    };
    let a = run(7);
    assert_eq!(a, run(7));
    assert_ne!(a, run(8), "a different seed gives a different stream");
    // Pinned: the first draws for seed 7 on these logits (guards cross-machine drift).
    assert_eq!(&a[..8], &PINNED_SEED7[..]);
}

/// Reproduced by an independent Python (numpy float32) implementation of the same pipeline
/// (SplitMix64 + xoshiro256++, temperature, top-k, top-p, f64 softmax and cumulative draw).
/// Any change to the PRNG, the filters' arithmetic or their order shows up here.
const PINNED_SEED7: [u32; 8] = [479, 992, 548, 211, 579, 327, 853, 276];

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9], &[]), 1);
    assert_eq!(s.sample(&[0.5, 3.0, 3.0, 3.0], &[]), 1, "tie → lowest id");
    assert_eq!(
        s.sample(&[f32::NAN, -1.0, f32::NAN], &[]),
        1,
        "NaN never wins"
    );
    let l = logits(32000, 3);
    let argmax = l
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0 as u32;
    assert_eq!(s.sample(&l, &[]), argmax);
    assert_eq!(s.distribution(&l, &[]), vec![(argmax, 1.0)]);
}

#[test]
fn invalid_params_are_typed_errors() {
    let bad = |p: SamplingParams| Sampler::new(p).unwrap_err();
    assert_eq!(bad(params(-0.1)), SamplingError::Temperature(-0.1));
    assert!(matches!(
        bad(params(f32::NAN)),
        SamplingError::Temperature(_)
    ));
    assert!(matches!(
        bad(params(f32::INFINITY)),
        SamplingError::Temperature(_)
    ));
    assert_eq!(
        bad(SamplingParams {
            top_k: Some(0),
            ..params(1.0)
        }),
        SamplingError::TopK
    );
    for p in [0.0, -0.5, 1.01, f32::NAN] {
        let e = bad(SamplingParams {
            top_p: Some(p),
            ..params(1.0)
        });
        assert!(matches!(e, SamplingError::TopP(_)), "{p}: {e}");
    }
    for m in [-0.1, 1.5, f32::NAN] {
        let e = bad(SamplingParams {
            min_p: Some(m),
            ..params(1.0)
        });
        assert!(matches!(e, SamplingError::MinP(_)), "{m}: {e}");
    }
    for r in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let e = bad(SamplingParams {
            repeat_penalty: r,
            ..params(1.0)
        });
        assert!(matches!(e, SamplingError::RepeatPenalty(_)), "{r}: {e}");
    }
    assert!(bad(params(-1.0)).to_string().contains("temperature"));
    // Boundaries that are valid.
    for p in [
        SamplingParams {
            top_p: Some(1.0),
            min_p: Some(0.0),
            top_k: Some(1),
            ..params(0.0)
        },
        SamplingParams {
            min_p: Some(1.0),
            ..params(2.0)
        },
        SamplingParams::default(),
    ] {
        Sampler::new(p).unwrap();
    }
}

/// Draws many samples and returns how often each id came up.
fn histogram(s: &mut Sampler, l: &[f32], history: &[u32], n: usize) -> HashMap<u32, usize> {
    let mut h = HashMap::new();
    for _ in 0..n {
        *h.entry(s.sample(l, history)).or_default() += 1;
    }
    h
}

#[test]
fn top_k_keeps_exactly_the_k_most_likely() {
    let l = logits(500, 11);
    let mut order: Vec<u32> = (0..500).collect();
    order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
    let top: Vec<u32> = order[..10].to_vec();
    let mut s = Sampler::new(SamplingParams {
        top_k: Some(10),
        ..params(1.0)
    })
    .unwrap();
    let dist = s.distribution(&l, &[]);
    let mut ids: Vec<u32> = dist.iter().map(|d| d.0).collect();
    ids.sort();
    let mut want = top.clone();
    want.sort();
    assert_eq!(ids, want);
    let sum: f32 = dist.iter().map(|d| d.1).sum();
    assert!((sum - 1.0).abs() < 1e-5);
    // Renormalised softmax over the k kept tokens.
    let kept: Vec<f32> = top.iter().map(|&i| l[i as usize]).collect();
    for (p, &id) in softmax(&kept, 1.0).iter().zip(&top) {
        assert!((prob_of(&dist, id) as f64 - p).abs() < 1e-6);
    }
    let h = histogram(&mut s, &l, &[], 5000);
    assert!(h.keys().all(|id| top.contains(id)), "{h:?}");
    assert!(h.len() >= 8, "most of the 10 should appear in 5000 draws");
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    let l = logits(300, 5);
    for p in [0.1f32, 0.5, 0.9, 0.99] {
        let mut s = Sampler::new(SamplingParams {
            top_p: Some(p),
            ..params(0.7)
        })
        .unwrap();
        let full = softmax(&l, 0.7);
        let dist = s.distribution(&l, &[]);
        // The kept set is a prefix of the tokens by probability...
        let min_kept = dist
            .iter()
            .map(|d| full[d.0 as usize])
            .fold(f64::INFINITY, f64::min);
        let dropped_max = (0..300u32)
            .filter(|id| !dist.iter().any(|d| d.0 == *id))
            .map(|id| full[id as usize])
            .fold(0.0, f64::max);
        assert!(min_kept >= dropped_max, "p={p}");
        // ...whose mass reaches p, and without its least likely token would not.
        let mass: f64 = dist.iter().map(|d| full[d.0 as usize]).sum();
        assert!(mass >= f64::from(p) - 1e-9, "p={p}: mass {mass}");
        assert!(
            mass - min_kept < f64::from(p),
            "p={p}: not the smallest set"
        );
        let h = histogram(&mut s, &l, &[], 3000);
        assert!(h.keys().all(|id| dist.iter().any(|d| d.0 == *id)), "p={p}");
    }
    // A tiny p keeps exactly one token (at least one is always kept).
    let s = Sampler::new(SamplingParams {
        top_p: Some(1e-9),
        ..params(1.0)
    })
    .unwrap();
    assert_eq!(s.distribution(&l, &[]).len(), 1);
}

#[test]
fn min_p_drops_tokens_below_the_fraction_of_the_best() {
    let l = logits(400, 9);
    let min_p = 0.2f32;
    let mut s = Sampler::new(SamplingParams {
        min_p: Some(min_p),
        ..params(1.0)
    })
    .unwrap();
    let full = softmax(&l, 1.0);
    let best = full.iter().cloned().fold(0.0, f64::max);
    let want: Vec<u32> = (0..400u32)
        .filter(|&i| full[i as usize] >= f64::from(min_p) * best)
        .collect();
    let mut got: Vec<u32> = s.distribution(&l, &[]).iter().map(|d| d.0).collect();
    got.sort();
    assert_eq!(got, want);
    assert!(want.len() > 3 && want.len() < 100, "{} kept", want.len());
    let h = histogram(&mut s, &l, &[], 3000);
    assert!(h.keys().all(|id| want.contains(id)));
}

#[test]
fn filters_compose_in_order_and_samples_follow_the_distribution() {
    let l = logits(2000, 21);
    let mut s = Sampler::new(SamplingParams {
        top_k: Some(40),
        top_p: Some(0.8),
        min_p: Some(0.05),
        ..params(0.8)
    })
    .unwrap();
    let dist = s.distribution(&l, &[]);
    assert!(dist.len() <= 40 && !dist.is_empty());
    for w in dist.windows(2) {
        assert!(w[0].1 >= w[1].1, "most likely first");
    }
    let n = 40_000;
    let h = histogram(&mut s, &l, &[], n);
    for &(id, p) in &dist {
        let freq = *h.get(&id).unwrap_or(&0) as f64 / n as f64;
        // 4.5 standard deviations: a deterministic stream, but a meaningful bound.
        let sd = (f64::from(p) * (1.0 - f64::from(p)) / n as f64).sqrt();
        assert!(
            (freq - f64::from(p)).abs() < 4.5 * sd + 1e-4,
            "id {id}: p {p}, freq {freq}"
        );
    }
    assert!(h.keys().all(|id| dist.iter().any(|d| d.0 == *id)));
}

#[test]
fn repeat_penalty_lowers_penalised_tokens_only() {
    let l = vec![2.0, 1.0, -1.0, 0.5, 0.0];
    let base = Sampler::new(params(1.0)).unwrap();
    let pen = Sampler::new(SamplingParams {
        repeat_penalty: 1.5,
        repeat_last_n: 3,
        ..params(1.0)
    })
    .unwrap();
    // Token 0 (positive logit) and 2 (negative) are in the last 3; token 4 only earlier.
    let history = [4, 0, 2, 0];
    let d0 = base.distribution(&l, &history);
    let d1 = pen.distribution(&l, &history);
    assert!(prob_of(&d1, 0) < prob_of(&d0, 0));
    assert!(prob_of(&d1, 2) < prob_of(&d0, 2));
    // Exact: logits 2/1.5 and -1*1.5, the rest unchanged.
    let want = softmax(&[2.0 / 1.5, 1.0, -1.5, 0.5, 0.0], 1.0);
    for id in 0..5u32 {
        assert!((f64::from(prob_of(&d1, id)) - want[id as usize]).abs() < 1e-6);
    }
    // Unpenalised tokens keep their relative odds; token 4 is outside the window.
    let ratio = |d: &[(u32, f32)], a, b| prob_of(d, a) / prob_of(d, b);
    assert!((ratio(&d0, 1, 3) - ratio(&d1, 1, 3)).abs() < 1e-5);
    assert!((ratio(&d0, 1, 4) - ratio(&d1, 1, 4)).abs() < 1e-5);
    // Greedy also sees the penalty: 0 would win, 1 wins once 0 is penalised enough.
    let mut g = Sampler::new(SamplingParams {
        repeat_penalty: 3.0,
        ..SamplingParams::greedy()
    })
    .unwrap();
    assert_eq!(g.sample(&l, &[]), 0);
    assert_eq!(g.sample(&l, &[0]), 1);
    // repeat_last_n = 0 turns the penalty off.
    let off = Sampler::new(SamplingParams {
        repeat_penalty: 3.0,
        repeat_last_n: 0,
        ..params(1.0)
    })
    .unwrap();
    assert_eq!(off.distribution(&l, &[0, 0]), d0);
}

#[test]
fn temperature_sharpens_and_flattens() {
    let l = logits(50, 2);
    let at = |t: f32| {
        Sampler::new(params(t))
            .unwrap()
            .distribution(&l, &[])
            .first()
            .unwrap()
            .1
    };
    assert!(at(0.3) > at(1.0) && at(1.0) > at(3.0));
    let d = Sampler::new(params(0.5)).unwrap().distribution(&l, &[]);
    let want = softmax(&l, 0.5);
    for (id, p) in d {
        assert!((f64::from(p) - want[id as usize]).abs() < 1e-6);
    }
}

#[test]
fn degenerate_logits_do_not_panic() {
    let mut s = Sampler::new(params(1.0)).unwrap();
    assert_eq!(s.sample(&[], &[]), 0);
    assert!(s.distribution(&[], &[]).is_empty());
    let l = [f32::NEG_INFINITY, 1.0, f32::NAN, f32::NEG_INFINITY];
    for _ in 0..100 {
        assert_eq!(s.sample(&l, &[]), 1);
    }
    assert_eq!(s.sample(&[f32::NEG_INFINITY; 3], &[]), 0);
    let l = [0.0, f32::INFINITY, 5.0];
    assert_eq!(s.sample(&l, &[]), 1);
    // History ids beyond the vocabulary are ignored by the penalty.
    let mut p = Sampler::new(SamplingParams {
        repeat_penalty: 2.0,
        ..params(1.0)
    })
    .unwrap();
    p.sample(&[1.0, 2.0], &[7, 99_999]);
}
