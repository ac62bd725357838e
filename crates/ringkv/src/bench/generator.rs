//! Key choosers of the YCSB core workloads, ported from YCSB's `ZipfianGenerator`,
//! `ScrambledZipfianGenerator` and `SkewedLatestGenerator` (Gray et al., "Quickly generating
//! billion-record synthetic databases", SIGMOD 1994).
//!
//! Pure: every draw takes its randomness from the generator passed in, so a run is
//! reproducible from its seed. Laws kept (and tested below): every key drawn is in range;
//! the same seed draws the same keys; small ranks are drawn far more often than large ones.

use rand::Rng;

/// YCSB's default skew.
pub const ZIPFIAN_THETA: f64 = 0.99;
/// The scrambled generator draws from this many items, then hashes into the record set,
/// exactly as YCSB does, so that popular keys are spread over the key space.
const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;
/// zeta(SCRAMBLED_ITEM_COUNT, 0.99), precomputed by YCSB (computing it takes minutes).
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;
/// Most items one incremental zeta update sums in a single draw; a record set that grows
/// faster than this between two draws is folded in over several draws.
const MAX_ZETA_STEP_ITEMS: u64 = 1_000_000;

const FNV_OFFSET_BASIS_64: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME_64: u64 = 1_099_511_628_211;

/// YCSB's `Utils.fnvhash64`: FNV-1a over the eight little-endian bytes, made non-negative.
pub fn fnv_hash64(mut value: u64) -> u64 {
    let mut hash = FNV_OFFSET_BASIS_64;
    for _ in 0..8 {
        hash ^= value & 0xff;
        hash = hash.wrapping_mul(FNV_PRIME_64);
        value >>= 8;
    }
    (hash as i64).unsigned_abs()
}

/// Sum of 1/i^theta for i in (from, to], added to `initial`.
fn zeta(from: u64, to: u64, theta: f64, initial: f64) -> f64 {
    (from..to).fold(initial, |sum, i| sum + 1.0 / ((i + 1) as f64).powf(theta))
}

/// Zipfian ranks in `0..items`: rank 0 is the most popular.
#[derive(Debug, Clone)]
pub struct Zipfian {
    theta: f64,
    alpha: f64,
    zeta2theta: f64,
    /// Items `zetan` covers; grows when a draw names more items.
    count_for_zeta: u64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    pub fn new(items: u64, theta: f64) -> Zipfian {
        let items = items.max(1);
        Zipfian::with_zetan(items, theta, zeta(0, items, theta, 0.0))
    }

    fn with_zetan(items: u64, theta: f64, zetan: f64) -> Zipfian {
        assert!(theta > 0.0 && theta < 1.0, "theta must be in (0, 1)");
        let zeta2theta = zeta(0, 2, theta, 0.0);
        Zipfian {
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta2theta,
            count_for_zeta: items,
            zetan,
            eta: eta(items, theta, zeta2theta, zetan),
        }
    }

    /// A rank in `0..items`. When `items` grew since the last draw, zeta is extended
    /// incrementally (YCSB does the same for the latest distribution).
    pub fn next_rank(&mut self, rng: &mut impl Rng, items: u64) -> u64 {
        let items = items.max(1);
        if items > self.count_for_zeta {
            let to = items.min(self.count_for_zeta + MAX_ZETA_STEP_ITEMS);
            self.zetan = zeta(self.count_for_zeta, to, self.theta, self.zetan);
            self.count_for_zeta = to;
            self.eta = eta(to, self.theta, self.zeta2theta, self.zetan);
        }
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(items - 1);
        }
        let rank = (items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(items - 1)
    }
}

fn eta(items: u64, theta: f64, zeta2theta: f64, zetan: f64) -> f64 {
    (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2theta / zetan)
}

/// YCSB's default request distribution: zipfian popularity, with the popular items
/// scattered over the record set by FNV hashing.
#[derive(Debug, Clone)]
pub struct ScrambledZipfian {
    items: u64,
    zipfian: Zipfian,
}

impl ScrambledZipfian {
    pub fn new(items: u64) -> ScrambledZipfian {
        ScrambledZipfian {
            items: items.max(1),
            zipfian: Zipfian::with_zetan(SCRAMBLED_ITEM_COUNT, ZIPFIAN_THETA, SCRAMBLED_ZETAN),
        }
    }

    /// A record number in `0..items`.
    pub fn next_key(&mut self, rng: &mut impl Rng) -> u64 {
        let rank = self.zipfian.next_rank(rng, SCRAMBLED_ITEM_COUNT);
        fnv_hash64(rank) % self.items
    }
}

/// YCSB's `latest` distribution (workload D): zipfian over recency, so the records inserted
/// last are read most.
#[derive(Debug, Clone)]
pub struct SkewedLatest {
    zipfian: Zipfian,
}

impl SkewedLatest {
    pub fn new(initial_items: u64) -> SkewedLatest {
        SkewedLatest {
            zipfian: Zipfian::new(initial_items, ZIPFIAN_THETA),
        }
    }

    /// A record number in `0..items`, where `items` is how many records exist now.
    pub fn next_key(&mut self, rng: &mut impl Rng, items: u64) -> u64 {
        let items = items.max(1);
        items - 1 - self.zipfian.next_rank(rng, items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn counts(mut draw: impl FnMut() -> u64, items: u64, samples: usize) -> Vec<u64> {
        let mut counts = vec![0u64; items as usize];
        for _ in 0..samples {
            let key = draw();
            assert!(key < items, "key {key} out of 0..{items}");
            counts[key as usize] += 1;
        }
        counts
    }

    #[test]
    fn fnv_hash_matches_ycsb() {
        // Values of YCSB's Java Utils.fnvhash64, recomputed independently.
        assert_eq!(fnv_hash64(0), 0x5738_07CD_D7E5_C63B);
        assert_eq!(fnv_hash64(12345), 0x18E1_4E7A_1D12_33B4);
        assert!(fnv_hash64(u64::MAX) <= i64::MAX as u64 + 1);
    }

    #[test]
    fn zipfian_rank_zero_has_its_expected_share() {
        let items = 1000;
        let mut rng = StdRng::seed_from_u64(7);
        let mut z = Zipfian::new(items, ZIPFIAN_THETA);
        let samples = 200_000;
        let c = counts(|| z.next_rank(&mut rng, items), items, samples);
        // P(rank 0) = 1 / zeta(1000, 0.99) ≈ 0.134.
        let expected = 1.0 / zeta(0, items, ZIPFIAN_THETA, 0.0);
        let share = c[0] as f64 / samples as f64;
        assert!((share - expected).abs() < 0.01, "{share} vs {expected}");
        assert!(c[0] > c[1] && c[1] > c[10] && c[10] > c[500]);
    }

    #[test]
    fn scrambled_zipfian_is_skewed_and_in_range() {
        let items = 10_000;
        let mut rng = StdRng::seed_from_u64(1);
        let mut g = ScrambledZipfian::new(items);
        let samples = 200_000;
        let mut c = counts(|| g.next_key(&mut rng), items, samples);
        c.sort_unstable_by(|a, b| b.cmp(a));
        // Uniform would give the hottest 1% of keys 1% of the draws; zipfian 0.99 gives them
        // at least zeta(100) / zeta(10^10) ≈ 19.5% (more where hashed ranks collide).
        let top: u64 = c[..(items as usize / 100)].iter().sum();
        let share = top as f64 / samples as f64;
        assert!((0.19..0.25).contains(&share), "top 1% got {share}");
        // The hottest key gets at least 1/zetan ≈ 3.8%.
        assert!(c[0] as f64 / samples as f64 > 0.03, "hottest got {}", c[0]);
    }

    #[test]
    fn scrambled_zipfian_spreads_popular_keys() {
        // The most popular ranks must not land on the first record numbers.
        let hot: Vec<u64> = (0..5).map(|r| fnv_hash64(r) % 10_000).collect();
        assert!(hot.iter().any(|&k| k > 100), "{hot:?}");
    }

    #[test]
    fn draws_are_deterministic_per_seed() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut g = ScrambledZipfian::new(10_000);
            (0..100).map(|_| g.next_key(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn latest_prefers_recent_records_and_follows_growth() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut g = SkewedLatest::new(1000);
        let c = counts(|| g.next_key(&mut rng, 1000), 1000, 100_000);
        assert!(c[999] > c[998] && c[998] > c[500] && c[999] > 10_000);
        // After inserts, the newest record is the most read one and all draws stay in range.
        let c = counts(|| g.next_key(&mut rng, 1500), 1500, 100_000);
        let newest = c.iter().enumerate().max_by_key(|(_, n)| **n).unwrap().0;
        assert_eq!(newest, 1499);
    }

    #[test]
    fn single_item_ranges_draw_that_item() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut z = Zipfian::new(1, ZIPFIAN_THETA);
        let mut s = ScrambledZipfian::new(1);
        let mut l = SkewedLatest::new(1);
        for _ in 0..100 {
            assert_eq!(z.next_rank(&mut rng, 1), 0);
            assert_eq!(s.next_key(&mut rng), 0);
            assert_eq!(l.next_key(&mut rng, 1), 0);
        }
    }
}
