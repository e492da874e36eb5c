//! Vectorised `exp`, SiLU, sigmoid and softplus for the conv and the gate.
//!
//! libm's scalar `expf` was 12% of a `deltanet run` profile (SiLU over every
//! conv channel of every token). Each function here is written once, lane by
//! lane, from operations that are exact or correctly rounded in IEEE 754
//! (`mul_add` is a fused multiply-add everywhere), and compiled three times:
//! for AVX-512, for AVX2 + FMA (both chosen at run time) and portable. The
//! compiler vectorises the loops; since every lane runs the same operations,
//! all three give the same bits, so a result never depends on which machine
//! path ran (nor on the batch or the thread count).
//!
//! Accuracy (checked against libm in the tests): `exp` within 2 ulp on
//! `[-86.5, 88.72]`, `+inf` above, `0` below -86.5 (libm returns subnormals
//! under 1.2e-38 there: an absolute error under 2.72e-38), NaN stays NaN.

/// Below this, `exp` returns 0 (so that `2^(n-1)` stays a normal float).
const EXP_LO: f32 = -86.5;
/// Above this, `exp` overflows f32.
const EXP_HI: f32 = 88.722_83;
/// `1.5 * 2^23`: adding it rounds to an integer held in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;

/// `exp(x)` for one lane (see the module docs for accuracy).
#[inline(always)]
pub(crate) fn exp_lane(x: f32) -> f32 {
    // clamp keeps NaN in `x` (handled at the end)
    let y = exp_in_range(x.clamp(EXP_LO, EXP_HI));
    let y = if x < EXP_LO { 0.0 } else { y };
    let y = if x > EXP_HI { f32::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// `exp(xc)` for `xc` in `[EXP_LO, EXP_HI]` (a clamped input; no special cases).
#[inline(always)]
fn exp_in_range(xc: f32) -> f32 {
    // n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two for exactness)
    let t = xc.mul_add(std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = n.mul_add(-0.693_359_4, xc);
    let r = n.mul_add(2.121_944_4e-4, r);
    // Cephes' degree-7 polynomial of exp on [-ln2/2, ln2/2]
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r) + 1.0;
    // 2^n as 2^(n-1) * 2, so n = 128 (x near the top) stays representable
    let scale = f32::from_bits(((ni + 126) as u32) << 23);
    y * scale * 2.0
}

/// `ln(u)` for `u` in `[1, 2]` (one lane), Cephes' `logf` reduction.
#[inline(always)]
fn ln_1_2(u: f32) -> f32 {
    // u = 2^e m with m in [sqrt(1/2), sqrt(2))
    let big = u > std::f32::consts::SQRT_2;
    let (m, e) = if big { (u * 0.5, 1.0f32) } else { (u, 0.0f32) };
    let f = m - 1.0;
    let z = f * f;
    let mut p = 7.037_683_6e-2f32;
    p = p.mul_add(f, -0.115_146_1);
    p = p.mul_add(f, 0.116_769_99);
    p = p.mul_add(f, -0.124_201_41);
    p = p.mul_add(f, 0.142_493_23);
    p = p.mul_add(f, -0.166_680_57);
    p = p.mul_add(f, 0.200_007_15);
    p = p.mul_add(f, -0.249_999_94);
    p = p.mul_add(f, 0.333_333_3);
    let y = (p * f) * z;
    let y = e.mul_add(-2.121_944_4e-4, y);
    let y = z.mul_add(-0.5, y);
    let r = f + y;
    e.mul_add(0.693_359_4, r)
}

/// `softplus(x) = ln(1 + exp(x))`, `x` past 20 returned as is (the models' threshold).
#[inline(always)]
pub(crate) fn softplus_lane(x: f32) -> f32 {
    // max(x, 0) + log1p(exp(-|x|)): exp(-|x|) in (0, 1], so 1 + y in (1, 2]
    let y = exp_lane(-x.abs());
    let u = 1.0 + y;
    let d = u - 1.0; // exact (Sterbenz)
                     // log1p(y) = ln(u) * y / (u - 1) corrects the rounding of 1 + y (Goldberg)
    let l = if d == 0.0 { y } else { ln_1_2(u) * (y / d) };
    let s = if x > 0.0 { x } else { 0.0 } + l;
    if x > 20.0 {
        x
    } else {
        s
    }
}

/// `x * sigmoid(x)` for one lane (as `x / (1 + exp(-x))`).
#[inline(always)]
pub(crate) fn silu_lane(x: f32) -> f32 {
    // exp(-x) clamped to its range by a plain min and max (a NaN becomes
    // EXP_HI; x / (1 + e) keeps it NaN) without exp_lane's special cases, one
    // select instead of three (SiLU 0.79 -> 0.64 ns per value, AVX2): below
    // EXP_LO, 1 + exp(EXP_LO) rounds to 1 as 1 + 0 does, above EXP_HI the
    // select gives x * 0 as x / inf did, so the same bits as
    // x / (1 + exp_lane(-x)) for every x
    let nx = -x;
    let c = if nx < EXP_HI { nx } else { EXP_HI };
    let c = if c > EXP_LO { c } else { EXP_LO };
    let s = x / (1.0 + exp_in_range(c));
    if nx > EXP_HI {
        x * 0.0
    } else {
        s
    }
}

/// `sigmoid(x)` for one lane.
#[inline(always)]
pub(crate) fn sigmoid_lane(x: f32) -> f32 {
    1.0 / (1.0 + exp_lane(-x))
}

/// Runs `$body` (a block using only portable code that the compiler can
/// vectorise) compiled for AVX-512, AVX2 + FMA or portable, chosen at run time.
macro_rules! dispatch {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$m])*
        pub(crate) fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if crate::simd::has_avx512() {
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked at run time).
                    return unsafe { avx512($($arg),*) };
                }
                if crate::simd::has_avx2() {
                    // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use dispatch;

dispatch!(
    /// SiLU in place (the conv fuses it into `conv_row`; the AVX2 decode
    /// update of transformers' conv state runs it after its arithmetic).
    fn silu_in_place(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = silu_lane(*v));
    }
);

dispatch!(
    fn exp_in_place(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = exp_lane(*v));
    }
);

/// The gate of one token row: `g = neg_a * softplus(a + dt_bias)` into `a`,
/// `beta = sigmoid(b)` into `b` (`neg_a = -exp(A_log)`).
pub(crate) fn gate_row(a: &mut [f32], b: &mut [f32], neg_a: &[f32], dt_bias: &[f32]) {
    gate_row_impl(a, b, neg_a, dt_bias)
}

dispatch!(
    fn gate_row_impl(a: &mut [f32], b: &mut [f32], neg_a: &[f32], dt_bias: &[f32]) {
        for ((x, &na), &db) in a.iter_mut().zip(neg_a).zip(dt_bias) {
            *x = na * softplus_lane(*x + db);
        }
        b.iter_mut().for_each(|v| *v = sigmoid_lane(*v));
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        let (x, y) = (a.to_bits() as i32, b.to_bits() as i32);
        (x.wrapping_sub(y)).unsigned_abs()
    }

    /// Every 331st f32 from -104 to 89 (and the specials) against libm, through
    /// the vectorised path this machine takes and the per-lane function.
    #[test]
    fn exp_matches_libm_over_the_whole_range() {
        let mut xs: Vec<f32> = Vec::new();
        let (lo, hi) = ((-104.0f32).to_bits(), 0x8000_0000u32);
        xs.extend((hi..=lo).step_by(331).map(f32::from_bits)); // negatives
        xs.extend((0..=89.0f32.to_bits()).step_by(331).map(f32::from_bits)); // positives
        xs.extend([0.0, -0.0, EXP_LO, EXP_HI, 88.72284, -86.49999, 1e-30, -1e-30, f32::MIN_POSITIVE]);
        let mut v = xs.clone();
        exp_in_place(&mut v);
        let mut worst = 0;
        for (&x, &y) in xs.iter().zip(&v) {
            assert_eq!(y.to_bits(), exp_lane(x).to_bits(), "paths differ at {x:e}");
            let want = x.exp();
            if x < EXP_LO {
                assert!(y == 0.0 && want < 2.72e-38, "exp({x:e}) = {y:e}, libm {want:e}");
            } else if want.is_infinite() {
                assert!(y.is_infinite(), "exp({x:e}) = {y:e}, libm inf");
            } else {
                let u = ulps(y, want);
                worst = worst.max(u);
                assert!(u <= 2, "exp({x:e}) = {y:e}, libm {want:e}: {u} ulp");
            }
        }
        assert!(worst >= 1, "the comparison compared something");
        let mut s = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 89.0, -200.0];
        exp_in_place(&mut s);
        assert!(s[0].is_nan());
        assert_eq!(s[1..], [f32::INFINITY, 0.0, f32::INFINITY, 0.0]);
    }

    /// SiLU's own clamp of exp's input gives the bits of x / (1 + exp(-x))
    /// through exp_lane's special cases: every 1009th f32 and the specials,
    /// through the vectorised path and the per-lane function.
    #[test]
    fn silu_is_x_over_one_plus_exp_lane_bitwise() {
        let mut xs: Vec<f32> = (0..u32::MAX / 1009).map(|i| f32::from_bits(i * 1009)).collect();
        xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -EXP_HI, -EXP_HI - 1e-5, -EXP_LO, -EXP_LO + 1e-5, -1e30, 1e30]);
        let mut s = xs.clone();
        silu_in_place(&mut s);
        for (&x, &got) in xs.iter().zip(&s) {
            let want = x / (1.0 + exp_lane(-x));
            let same = |v: f32| v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan());
            assert!(same(got) && same(silu_lane(x)), "silu({x:e}) = {got:e} / {:e}, want {want:e}", silu_lane(x));
        }
    }

    #[test]
    fn silu_sigmoid_softplus_match_libm() {
        let mut x = 0x1234_5678u32;
        let mut xs: Vec<f32> = (0..200_000)
            .map(|i| {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                let u = (x >> 8) as f32 / (1u32 << 24) as f32;
                // most in [-30, 30], some far out
                if i % 10 == 0 {
                    (u - 0.5) * 400.0
                } else {
                    (u - 0.5) * 60.0
                }
            })
            .collect();
        xs.extend([0.0, -0.0, 20.0, 20.000002, 19.999998, -87.0, 87.0, 1e-7, -1e-7, 1e-30, f32::INFINITY]);
        let mut s = xs.clone();
        silu_in_place(&mut s);
        let (mut ga, mut gb) = (xs.clone(), xs.clone());
        let (na, db) = (vec![-1.5f32; xs.len()], vec![0.0f32; xs.len()]);
        gate_row(&mut ga, &mut gb, &na, &db);
        for (i, &x) in xs.iter().enumerate() {
            let xd = x as f64;
            let silu = xd / (1.0 + (-xd).exp());
            let sig = 1.0 / (1.0 + (-xd).exp());
            let sp = if x > 20.0 { xd } else { xd.exp().ln_1p() };
            let rel = |got: f32, want: f64| {
                if got as f64 == want {
                    0.0
                } else if want == 0.0 {
                    got.abs() as f64
                } else {
                    ((got as f64 - want) / want).abs()
                }
            };
            // 4 ulp-ish relative bounds; absolute 1e-36 where exp(-x) overflows or
            // underflows f32 (|silu| < 3e-37 there, as libm's f32 formula gives too)
            assert!(rel(s[i], silu) < 5e-7 || (s[i] as f64 - silu).abs() < 1e-36, "silu({x:e}) = {:e}, want {silu:e}", s[i]);
            assert!(rel(gb[i], sig) < 5e-7 || (gb[i] as f64 - sig).abs() < 1e-36, "sigmoid({x:e}) = {:e}, want {sig:e}", gb[i]);
            let want_g = -1.5 * sp;
            assert!(
                rel(ga[i], want_g) < 5e-7 || (ga[i] as f64 - want_g).abs() < 1e-36,
                "softplus({x:e}) gave g {:e}, want {want_g:e}",
                ga[i]
            );
        }
        // NaN stays NaN
        let mut n = [f32::NAN];
        silu_in_place(&mut n);
        assert!(n[0].is_nan());
    }
}
