//! Deriving the many seeds of one run (hosts, endpoints, clients, the workload) from the run's
//! seed, so that each draws its own stream and adding one does not shift the others.

/// SplitMix64: the next state of a 64-bit generator, well mixed.
pub fn split_mix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of part `part` of whatever `seed` seeds.
pub fn mix(seed: u64, part: u64) -> u64 {
    split_mix(split_mix(seed) ^ part.wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// The seed of a named component (`"region"`, `"client"`, …) numbered `number`.
pub fn derive(seed: u64, component: &str, number: u64) -> u64 {
    let tag = component
        .bytes()
        .fold(0xCBF2_9CE4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3)
        });
    mix(mix(seed, tag), number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_differ_by_component_and_number() {
        let seeds = [
            derive(1, "region", 1),
            derive(1, "region", 2),
            derive(1, "client", 1),
            derive(2, "region", 1),
        ];
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(derive(1, "region", 1), derive(1, "region", 1));
    }
}
