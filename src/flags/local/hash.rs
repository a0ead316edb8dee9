//! PostHog's bucketing hash: where a distinct id (or group key, or device id) falls in `[0, 1]`.
//!
//! `sha1("<key>.<value><salt>")`, its first 15 hex digits (the top 60 bits) as an integer,
//! divided by `0xFFFFFFFFFFFFFFF`. The pieces are fed to the hasher one by one, so hashing never
//! allocates.

use sha1::{Digest, Sha1};

/// `0xFFFFFFFFFFFFFFF` (15 hex digits, 2^60 - 1) as a float, as PostHog divides by it.
const LONG_SCALE: f64 = 0xFFF_FFFF_FFFF_FFFF_u64 as f64;

/// Salt of the hash that picks a multivariate flag's variant.
pub(crate) const VARIANT_SALT: &str = "variant";

/// The rollout hash of `bucketing_value` for flag `key` (`salt` `""`), or its variant hash
/// (`salt` [`VARIANT_SALT`]).
pub(crate) fn hash(key: &str, bucketing_value: &str, salt: &str) -> f64 {
    hash_parts(key, ".", bucketing_value, salt)
}

/// The holdout hash: PostHog hashes `holdout-<value>` (joined with a dash, not a dot).
pub(crate) fn holdout_hash(bucketing_value: &str) -> f64 {
    hash_parts("holdout", "-", bucketing_value, "")
}

fn hash_parts(key: &str, separator: &str, value: &str, salt: &str) -> f64 {
    let mut hasher = Sha1::new();
    hasher.update(key.as_bytes());
    hasher.update(separator.as_bytes());
    hasher.update(value.as_bytes());
    hasher.update(salt.as_bytes());
    let digest = hasher.finalize();
    let mut top = [0u8; 8];
    top.copy_from_slice(&digest[..8]);
    // The first 15 hex digits are the top 60 bits of the digest.
    let bucket = u64::from_be_bytes(top) >> 4;
    bucket as f64 / LONG_SCALE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_posthog_check_values() {
        assert_eq!(hash("simple-flag", "distinct_id_0", ""), 0.7836963764220432);
        assert_eq!(hash("simple-flag", "distinct_id_1", ""), 0.3397069926995401);
        assert_eq!(
            hash("multivariate-flag", "distinct_id_0", ""),
            0.502037796130735
        );
        assert_eq!(
            hash("multivariate-flag", "distinct_id_0", VARIANT_SALT),
            0.6186454537930379
        );
    }

    #[test]
    fn holdout_hash_joins_with_a_dash() {
        // posthog-python's server-side check values for `calculate_hash("holdout-", id, "")`.
        assert_eq!(holdout_hash("some_distinct_id"), 0.7270002403585725);
        assert_eq!(holdout_hash("test-identifier"), 0.4493881716040236);
        assert_eq!(holdout_hash("example_id"), 0.9402003475831224);
        assert_eq!(holdout_hash("example_id2"), 0.6292740389966519);
        assert_ne!(holdout_hash("x"), hash("holdout", "x", ""));
    }

    #[test]
    fn hashes_utf8_and_empty_values() {
        let h = hash("flag", "ünïcødé", "");
        assert!((0.0..=1.0).contains(&h));
        let e = hash("", "", "");
        assert!((0.0..=1.0).contains(&e));
        // The pieces are concatenated: moving the boundary does not change the hash.
        assert_eq!(hash("a.b", "c", ""), hash("a", "b.c", ""));
        assert_eq!(hash("k", "idvariant", ""), hash("k", "id", VARIANT_SALT));
    }
}
