//! The mixture kernel against a plain f64 evaluation of its definition, its AVX2 and portable
//! builds against each other, and `score_runs` against `score_points` whatever the layout.

use super::*;

#[test]
fn exp_neg_is_accurate_on_its_range() {
    let mut worst = 0.0f64;
    let mut x = 0.0f32;
    while x > -87.0 {
        let e = (x as f64).exp();
        worst = worst.max(((exp_neg(x) as f64) - e).abs() / e);
        x -= 0.001_3;
    }
    assert!(worst < 5e-7, "relative error {worst}");
    assert_eq!(exp_neg(0.0), 1.0);
    assert!(exp_neg(-1e4) > 0.0 && exp_neg(-1e4) < 1e-37);
}

#[test]
fn dispatch_and_portable_build_agree_bit_for_bit() {
    let c = MixtureConsts {
        k: 3,
        d: 2,
        amu: vec![1.0, -1.0, -2.0, 0.5, 0.0, 3.0],
        inv_v: vec![2.0, 0.7, 0.3, 0.3, 1.1, 9.0],
        log_norm: vec![-0.2, -1.5, 0.3],
    };
    let x: Vec<f32> = (0..2 * 37)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37)
        .collect();
    let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let mut s = Scratch::default();
    s.resize(c.k);
    points(&x, &mut a, None, &c, &mut s);
    points_dispatch(&x, &mut b, None, &c);
    assert_eq!(a, b);
    let v: Vec<f32> = (0..x.len()).map(|i| (i % 5) as f32 - 2.0).collect();
    let (mut ja, mut jb) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    points(&x, &mut a, Some((&v, &mut ja)), &c, &mut s);
    points_dispatch(&x, &mut b, Some((&v, &mut jb)), &c);
    assert_eq!((a, ja), (b, jb));
}

/// Deterministic test values in [−scale, scale].
fn vals(n: usize, seed: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|i| (((i + 1) * 7919 + seed * 104_729) % 2001) as f64 / 1000.0 - 1.0)
        .map(|u| u * scale)
        .collect()
}

/// Constants of `k` components in `d` dimensions (variances in [0.05, 2.05]).
fn consts_f64(k: usize, d: usize, seed: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let amu = vals(k * d, seed, 3.0);
    let inv_v = vals(k * d, seed + 1, 1.0)
        .iter()
        .map(|u| 1.0 / (1.05 + u))
        .collect();
    let log_norm = vals(k, seed + 2, 1.5);
    (amu, inv_v, log_norm)
}

/// The plain definition in f64 from the float32 constants: per point, the log-weights, the
/// softmax and the sums of the module doc (the uncentred vjp form).
fn plain(c: &MixtureConsts, x: &[f32], v: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (k, d) = (c.k, c.d);
    let (mut s, mut jv) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    for (i, xi) in x.chunks(d).enumerate() {
        let vi = &v[i * d..(i + 1) * d];
        let sk = |kk: usize, j: usize| {
            (c.amu[kk * d + j] as f64 - xi[j] as f64) * c.inv_v[kk * d + j] as f64
        };
        let l: Vec<f64> = (0..k)
            .map(|kk| {
                let q: f64 = (0..d)
                    .map(|j| {
                        let e = xi[j] as f64 - c.amu[kk * d + j] as f64;
                        e * e * c.inv_v[kk * d + j] as f64
                    })
                    .sum();
                c.log_norm[kk] as f64 - 0.5 * q
            })
            .collect();
        let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = l.iter().map(|li| (li - m).exp()).sum();
        let r: Vec<f64> = l.iter().map(|li| (li - m).exp() / z).collect();
        for j in 0..d {
            s[i * d + j] = (0..k).map(|kk| r[kk] * sk(kk, j)).sum();
        }
        let sv: f64 = (0..d).map(|j| s[i * d + j] * vi[j] as f64).sum();
        for j in 0..d {
            let mut a = -s[i * d + j] * sv;
            for kk in 0..k {
                let skv: f64 = (0..d).map(|jj| sk(kk, jj) * vi[jj] as f64).sum();
                a += r[kk] * (-(vi[j] as f64) * c.inv_v[kk * d + j] as f64 + sk(kk, j) * skv);
            }
            jv[i * d + j] = a;
        }
    }
    (s, jv)
}

#[test]
fn score_and_vjp_follow_the_plain_definition() {
    for d in 1..=MAX_DIM {
        for k in [1usize, 3, 8] {
            let (amu, inv_v, log_norm) = consts_f64(k, d, 10 * d + k);
            let c = MixtureConsts::from_f64(d, &amu, &inv_v, &log_norm);
            let n = 2 * BLOCK + 5;
            let x: Vec<f32> = vals(n * d, k + d, 4.0).iter().map(|&v| v as f32).collect();
            let v: Vec<f32> = vals(n * d, 3 * k, 1.0).iter().map(|&v| v as f32).collect();
            let (mut s, mut jv) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            score_points(&c, &x, &mut s, Some((&v, &mut jv)));
            let (ws, wj) = plain(&c, &x, &v);
            let scale = |w: &[f64]| w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let (ss, sj) = (scale(&ws), scale(&wj));
            for i in 0..x.len() {
                // float32 sums of K terms of size up to the scale: a few ulp of the scale
                assert!(
                    (s[i] as f64 - ws[i]).abs() <= 1e-5 * ss,
                    "d {d} k {k} score {i}: {} vs {}",
                    s[i],
                    ws[i]
                );
                assert!(
                    (jv[i] as f64 - wj[i]).abs() <= 1e-4 * sj,
                    "d {d} k {k} vjp {i}: {} vs {}",
                    jv[i],
                    wj[i]
                );
            }
        }
    }
}

#[test]
fn runs_give_the_per_point_values_whatever_the_layout() {
    let (k, d) = (5, 2);
    // n·k·d above the policy's splitting threshold; a partial last block
    let n = 40_007;
    let table: Vec<MixtureConsts> = (0..4)
        .map(|t| {
            let (amu, inv_v, log_norm) = consts_f64(k, d, t);
            MixtureConsts::from_f64(d, &amu, &inv_v, &log_norm)
        })
        .collect();
    let x: Vec<f32> = vals(n * d, 1, 4.0).iter().map(|&v| v as f32).collect();
    let v: Vec<f32> = vals(n * d, 2, 1.0).iter().map(|&v| v as f32).collect();
    // one run; runs that straddle task boundaries; one run per point
    let layouts: Vec<Vec<Range<usize>>> = vec![
        vec![0..n],
        vec![0..1, 1..BLOCK + 3, BLOCK + 3..n / 2, n / 2..n],
        (0..n).map(|i| i..i + 1).collect(),
    ];
    for runs in layouts {
        let run_of = |p: usize| runs.partition_point(|r| r.end <= p);
        let (mut s, mut jv) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        score_runs(k, d, &x, &mut s, Some((&v, &mut jv)), &runs, |r, c| {
            *c = table[r % table.len()].clone()
        });
        let mut s_only = vec![0.0; x.len()];
        score_runs(k, d, &x, &mut s_only, None, &runs, |r, c| {
            *c = table[r % table.len()].clone()
        });
        assert_eq!(s, s_only);
        for p in [0, 1, BLOCK - 1, BLOCK, BLOCK + 3, n / 2, n - 8, n - 1] {
            let c = &table[run_of(p) % table.len()];
            let r = p * d..(p + 1) * d;
            let (mut s1, mut j1) = ([0.0; 2], [0.0; 2]);
            score_points(c, &x[r.clone()], &mut s1, Some((&v[r.clone()], &mut j1)));
            assert_eq!(
                (&s[r.clone()], &jv[r.clone()]),
                (&s1[..], &j1[..]),
                "point {p}"
            );
        }
    }
}

#[test]
#[should_panic(expected = "MixtureConsts")]
fn constants_of_an_unsupported_dimension_are_refused() {
    MixtureConsts::from_f64(MAX_DIM + 1, &[0.0; 5], &[1.0; 5], &[0.0]);
}
