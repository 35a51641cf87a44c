//! A fixed 64-bit mixing function (SplitMix64's finaliser) and the unit fractions drawn from
//! it: stable across versions and machines, so every instance of a fleet computes the same.

/// A well-mixed 64-bit hash of `x`.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A fraction in the open interval (0, 1), fixed for `x`.
pub fn unit_fraction(x: u64) -> f64 {
    ((mix64(x) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}
