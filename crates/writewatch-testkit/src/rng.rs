//! Deterministic, seedable PRNGs with no dependency. Three generators because existing tests
//! and benches rely on their exact sequences:
//!
//! - [`Rng`]: xorshift64* (core tests, stress suite, bench shuffles, examples);
//! - [`SplitMix64`]: splitmix64 (checkpoint tests, resume test, kv example);
//! - [`XorShift64`]: plain xorshift64 13/7/17 (benches, demo).

/// xorshift64*: `next` advances the state with the 12/25/27 shifts and returns it times
/// `0x2545_F491_4F6C_DD1D`. The state must not be 0 (it would stay 0).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `next() % n` (n > 0; slightly biased, which the tests do not care about).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A random element of `xs` (non-empty).
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// Deterministic Fisher-Yates shuffle of `0..n` from `seed` (`seed | 1` is the state).
    pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        let mut rng = Rng(seed | 1);
        for i in (1..n).rev() {
            let r = rng.next();
            v.swap(i, (r % (i as u64 + 1)) as usize);
        }
        v
    }
}

/// splitmix64: the state advances by the golden-ratio increment and the output is mixed.
/// Any state, including 0, is fine.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `next() % n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Fills `buf` with random bytes (8 per `next()`, little-endian; never leaves a page
    /// all-zero in practice).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Plain xorshift64 (13/7/17): `next` returns the new state. The state must not be 0.
#[derive(Debug, Clone)]
pub struct XorShift64(pub u64);

impl XorShift64 {
    /// The next 64 random bits (the new state).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `next() % n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A uniform `f64` in `[0, 1)` from the top 53 bits of `next()`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inline shuffle the benches used before this crate existed.
    fn old_shuffled(n: usize, seed: u64) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        let mut x = seed | 1;
        for i in (1..n).rev() {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            v.swap(i, (r % (i as u64 + 1)) as usize);
        }
        v
    }

    #[test]
    fn sequences_are_the_historic_ones() {
        assert_eq!(Rng::shuffled(1000, 42), old_shuffled(1000, 42));
        assert_eq!(SplitMix64(0).next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(XorShift64(1).next(), 0x4082_2041);
    }
}
