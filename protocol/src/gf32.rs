//! Arithmetic in GF(32) = GF(2)[x]/(x⁵ + x² + 1), for the install code's check symbols.
//!
//! Two check symbols form a shortened Reed–Solomon code of distance 3 over the 30
//! symbols of a code: both syndromes `S1 = Σ vᵢ` and `S2 = Σ αⁱ·vᵢ` are zero for a
//! valid code. That detects every single and double symbol error and every adjacent
//! transposition, and locates a single error (`i = log S2 − log S1`), which lets us
//! tell the operator which group holds the typo.

const POLY: u8 = 0b10_0101; // x^5 + x^2 + 1, primitive

/// `EXP[i] = αⁱ` for i in 0..62 (doubled to skip a modulo in `mul`).
const EXP: [u8; 62] = build_exp();
/// `LOG[v] = i` with αⁱ = v, for v in 1..32 (LOG[0] unused).
const LOG: [u8; 32] = build_log();

const fn build_exp() -> [u8; 62] {
    let mut t = [0u8; 62];
    let mut v: u8 = 1;
    let mut i = 0;
    while i < 62 {
        t[i] = v;
        v <<= 1;
        if v & 0b10_0000 != 0 {
            v ^= POLY;
        }
        i += 1;
    }
    t
}

const fn build_log() -> [u8; 32] {
    let exp = build_exp();
    let mut t = [0u8; 32];
    let mut i = 0;
    while i < 31 {
        t[exp[i] as usize] = i as u8;
        i += 1;
    }
    t
}

/// αⁱ.
pub(crate) fn alpha_pow(i: usize) -> u8 {
    EXP[i % 31]
}

/// a · b.
pub(crate) fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    EXP[LOG[a as usize] as usize + LOG[b as usize] as usize]
}

/// a / b, b ≠ 0.
pub(crate) fn div(a: u8, b: u8) -> u8 {
    debug_assert!(b != 0, "division by zero in GF(32)");
    if a == 0 || b == 0 {
        return 0;
    }
    EXP[(LOG[a as usize] as usize + 31 - LOG[b as usize] as usize) % 31]
}

/// The discrete log of a non-zero element.
pub(crate) fn log(a: u8) -> usize {
    LOG[a as usize] as usize
}

/// The syndromes (S1, S2) of a word of symbols.
pub(crate) fn syndromes(symbols: &[u8]) -> (u8, u8) {
    symbols
        .iter()
        .enumerate()
        .fold((0, 0), |(s1, s2), (i, &v)| {
            (s1 ^ v, s2 ^ mul(alpha_pow(i), v))
        })
}

/// The two check symbols to append at positions `n` and `n+1` after `data` (n = data.len() ≤ 29)
/// so that both syndromes of the whole word are zero.
pub(crate) fn check_symbols(data: &[u8]) -> (u8, u8) {
    let n = data.len();
    let (s1, s2) = syndromes(data);
    // c0 ^ c1 = s1 ; α^n c0 ^ α^(n+1) c1 = s2  ⇒  c1 = (s2 ^ α^n s1) / (α^n ^ α^(n+1))
    let an = alpha_pow(n);
    let an1 = alpha_pow(n + 1);
    let c1 = div(s2 ^ mul(an, s1), an ^ an1);
    let c0 = s1 ^ c1;
    (c0, c1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_is_well_formed() {
        // α generates all 31 non-zero elements exactly once.
        let mut seen = [false; 32];
        for i in 0..31 {
            let v = alpha_pow(i) as usize;
            assert!(v != 0 && !seen[v], "α^{i} repeats");
            seen[v] = true;
        }
        for a in 1..32u8 {
            for b in 1..32u8 {
                assert_eq!(div(mul(a, b), b), a);
            }
        }
    }
}
