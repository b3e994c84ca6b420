//! Seeded random number generators that give the same stream on every platform, in wasm and
//! natively: SplitMix64 ([`Rng`]), small and fast, and the Mersenne Twister as numpy's legacy
//! `RandomState` runs it ([`Mt19937`]), for splits that match scikit-learn's.

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

/// Words of MT19937's state.
const MT_N: usize = 624;
/// MT19937's middle word offset.
const MT_M: usize = 397;

/// The Mersenne Twister (MT19937) as numpy's legacy `RandomState(seed)` runs it: seeded with
/// the reference `init_genrand` (a 32-bit seed), giving the reference 32-bit outputs. Its
/// [`permutation`](Mt19937::permutation) is `RandomState(seed).permutation(n)`, so a split made
/// from it is the one scikit-learn makes with `random_state=seed`.
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; MT_N],
    next: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937").field("next", &self.next).finish()
    }
}

impl Mt19937 {
    /// Seeded as `init_genrand(seed)` (numpy's `RandomState(seed)` for a seed below 2^32).
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed;
        for i in 1..MT_N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, next: MT_N }
    }

    /// The next 32 random bits (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.next >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for i in 0..MT_N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % MT_N] & 0x7fff_ffff);
            let mut word = self.state[(i + MT_M) % MT_N] ^ (y >> 1);
            if y & 1 != 0 {
                word ^= 0x9908_b0df;
            }
            self.state[i] = word;
        }
        self.next = 0;
    }

    /// Uniform in `0..=max` as numpy's `random_interval` draws it: 32-bit outputs masked to
    /// the smallest all-ones mask covering `max`, values above `max` rejected.
    pub fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        loop {
            let value = self.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }

    /// `0..n` shuffled as numpy's `RandomState.permutation(n)` does: Fisher-Yates from the
    /// last index down, each swap partner drawn by [`interval`](Mt19937::interval). `n` is at
    /// most 2^32 (numpy draws 64-bit values beyond that, which no CSV here reaches).
    ///
    /// ```
    /// // numpy: np.random.RandomState(42).permutation(10)
    /// let p = corral_guest::rng::Mt19937::new(42).permutation(10);
    /// assert_eq!(p, [8, 1, 5, 0, 7, 2, 9, 4, 3, 6]);
    /// ```
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        assert!(n as u64 <= 1 << 32, "permutation of more than 2^32 items");
        let mut items: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u32) as usize;
            items.swap(i, j);
        }
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_gives_the_reference_outputs() {
        // The reference implementation's default seed (5489): its first outputs, as C++'s
        // std::mt19937 and numpy give them; the 10,000th is the C++ standard's check value.
        let mut mt = Mt19937::new(5489);
        assert_eq!(
            [mt.next_u32(), mt.next_u32(), mt.next_u32()],
            [3_499_211_612, 581_869_302, 3_890_346_734]
        );
        let mut mt = Mt19937::new(5489);
        let ten_thousandth = (0..10_000).map(|_| mt.next_u32()).last().unwrap();
        assert_eq!(ten_thousandth, 4_123_659_995);
    }

    #[test]
    fn permutations_are_numpys() {
        // np.random.RandomState(42).permutation(10), and the first 30 of permutation(150):
        // the test rows of iris in scikit-learn's train_test_split(test_size=0.2,
        // random_state=42).
        assert_eq!(
            Mt19937::new(42).permutation(10),
            [8, 1, 5, 0, 7, 2, 9, 4, 3, 6]
        );
        let iris = Mt19937::new(42).permutation(150);
        assert_eq!(
            iris[..30],
            [
                73, 18, 118, 78, 76, 31, 64, 141, 68, 82, 110, 12, 36, 9, 19, 56, 104, 69, 55, 132,
                29, 127, 26, 128, 131, 145, 108, 143, 45, 30
            ]
        );
        let mut sorted = iris.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..150).collect::<Vec<_>>());
        assert!(Mt19937::new(1).permutation(0).is_empty());
        assert_eq!(Mt19937::new(1).permutation(1), [0]);
    }

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
