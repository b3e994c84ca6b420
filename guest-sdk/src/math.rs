//! `exp` and `ln` computed with only `+`, `-`, `*`, `/` and exact rounding, so a task gives the
//! same bits in wasm as natively. (`f64::exp` calls the platform's libm: wasi-libc in wasm,
//! glibc natively, which may differ in the last bit and so change printed results.)
//!
//! Both are accurate to about one unit in the last place.

const LN2_HI: f64 = 0.693_147_180_369_123_8;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;

/// 1/k! for k = 0..=14: the Taylor coefficients of e^r.
const INVERSE_FACTORIALS: [f64; 15] = [
    1.0,
    1.0,
    0.5,
    0.16666666666666666,
    0.041666666666666664,
    0.008333333333333333,
    0.001388888888888889,
    0.0001984126984126984,
    2.48015873015873e-05,
    2.7557319223985893e-06,
    2.755731922398589e-07,
    2.505210838544172e-08,
    2.08767569878681e-09,
    1.6059043836821613e-10,
    1.1470745597729725e-11,
];

/// 1/n for odd n = 3..=23: the series of atanh.
const INVERSE_ODDS: [f64; 11] = [
    0.3333333333333333,
    0.2,
    0.14285714285714285,
    0.1111111111111111,
    0.09090909090909091,
    0.07692307692307693,
    0.06666666666666667,
    0.058823529411764705,
    0.05263157894736842,
    0.047619047619047616,
    0.043478260869565216,
];

/// e raised to `x`.
#[inline]
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.782_712_893_384 {
        return f64::INFINITY;
    }
    if x < -745.133_219_101_941_1 {
        return 0.0;
    }
    // x = k ln2 + r with |r| <= ln2 / 2.
    let k = (x * std::f64::consts::LOG2_E + 0.5).floor();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // e^r by its Taylor series to r^14 (error below 1e-17 for |r| <= 0.35), in Horner form.
    let mut p = 0.0;
    for c in INVERSE_FACTORIALS.iter().rev() {
        p = p * r + c;
    }
    scale_by_power_of_two(p, k as i32)
}

/// `value * 2^k`, exact while the result is normal.
#[inline]
fn scale_by_power_of_two(value: f64, k: i32) -> f64 {
    let pow2 = |e: i32| f64::from_bits(((e + 1023) as u64) << 52);
    if k > 1023 {
        value * pow2(1023) * pow2(k - 1023)
    } else if k < -1022 {
        value * pow2(-1022) * pow2(k + 1022)
    } else {
        value * pow2(k)
    }
}

/// The natural logarithm of `x` (NaN below zero, -inf at zero).
#[inline]
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }
    // x = m 2^e with m in [sqrt(1/2), sqrt(2)).
    let (mut bits, mut e) = (x.to_bits(), 0i64);
    if bits >> 52 == 0 {
        // Subnormal: scale into the normal range first.
        bits = (x * f64::from_bits(((54 + 1023) as u64) << 52)).to_bits();
        e -= 54;
    }
    e += ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    // ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172: the series to s^23.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut sum = 0.0;
    for c in INVERSE_ODDS.iter().rev() {
        sum = (sum + c) * s2;
    }
    let ln_m = 2.0 * s + 2.0 * s * sum;
    let e = e as f64;
    e * LN2_HI + (ln_m + e * LN2_LO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        a == b || ((a - b) / b).abs() < 4e-16
    }

    #[test]
    fn exp_matches_the_platform_closely() {
        for i in -7000..7000 {
            let x = i as f64 * 0.1013;
            assert!(
                close(exp(x), x.exp()),
                "exp({x}) = {} vs {}",
                exp(x),
                x.exp()
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(1000.0), f64::INFINITY);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(f64::NAN).is_nan());
    }

    #[test]
    fn ln_matches_the_platform_closely() {
        for i in 1..20000 {
            let x = i as f64 * 0.0137;
            let (ours, theirs) = (ln(x), x.ln());
            assert!(
                (ours - theirs).abs() <= 4e-16 * theirs.abs().max(1.0),
                "ln({x}) = {ours} vs {theirs}"
            );
        }
        for x in [1e-310, 1e-300, 1e300, f64::MAX] {
            assert!(close(ln(x), x.ln()), "ln({x})");
        }
        assert_eq!(ln(1.0), 0.0);
        assert!(ln(-1.0).is_nan());
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
    }
}
