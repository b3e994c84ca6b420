//! A small seeded random number generator (SplitMix64): the same seed gives the same stream on
//! every platform, in wasm and natively.

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n` > 0), without modulo bias: `v % n` for the first draw `v` below
    /// the largest multiple of `n` that fits in a u64 (a draw at or above it is rejected).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        let n = n as u64;
        loop {
            let v = self.next_u64();
            let r = v % n;
            // `v - r` is `n * (v / n)`; `v` is below the largest multiple of `n` exactly when
            // the next multiple still fits. One division instead of two (the other would find
            // that multiple, `u64::MAX - u64::MAX % n`): a shuffle of a million rows is a
            // million of these, and a 64-bit division costs tens of cycles.
            if (v - r).checked_add(n).is_some() {
                return r as usize;
            }
        }
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        // Reference value of SplitMix64 seeded with 0.
        assert_eq!(Rng::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn below_rejects_exactly_the_draws_past_the_last_whole_multiple() {
        // The acceptance test against its definition, at the edges where they could differ.
        for n in [
            1u64,
            2,
            3,
            7,
            10,
            1 << 32,
            (1 << 63) - 1,
            1 << 63,
            (1 << 63) + 1,
            u64::MAX,
        ] {
            let zone = u64::MAX - u64::MAX % n;
            for v in [
                0,
                1,
                n - 1,
                zone.wrapping_sub(1),
                zone,
                zone.saturating_add(1),
                u64::MAX,
            ] {
                let r = v % n;
                assert_eq!((v - r).checked_add(n).is_some(), v < zone, "n={n} v={v}");
            }
        }
        // And the stream is the one the two-division form gave (examples' splits depend on it).
        let mut rng = Rng::new(9);
        let draws: Vec<usize> = (0..6)
            .map(|i| rng.below([1, 2, 3, 1000, 7, usize::MAX][i]))
            .collect();
        let mut reference = Rng::new(9);
        for (i, &n) in [1u64, 2, 3, 1000, 7, usize::MAX as u64].iter().enumerate() {
            let zone = u64::MAX - u64::MAX % n;
            let v = loop {
                let v = reference.next_u64();
                if v < zone {
                    break v;
                }
            };
            assert_eq!(draws[i] as u64, v % n);
        }
    }

    #[test]
    fn shuffle_is_a_permutation_and_below_stays_in_range() {
        let mut rng = Rng::new(7);
        let mut v: Vec<usize> = (0..50).collect();
        rng.shuffle(&mut v);
        assert_ne!(v, (0..50).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
        assert!((0..1000).all(|_| rng.below(3) < 3));
        assert!((0..1000)
            .map(|_| rng.next_f64())
            .all(|f| (0.0..1.0).contains(&f)));
    }
}
