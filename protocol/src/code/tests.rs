use proptest::prelude::*;

use super::*;

fn code_from(id: &str, mac_byte: u8) -> InstallCode {
    let mut mac = [0u8; 32];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = mac_byte.wrapping_mul(31).wrapping_add(i as u8);
    }
    InstallCode::from_mac(CodeId::parse(id).expect("valid id"), &mac)
}

#[test]
fn formatted_code_round_trips() {
    let code = code_from("K7M2Q9XD4T", 7);
    let text = code.expose_formatted();
    assert_eq!(text.len(), CODE_LEN + GROUPS - 1);
    assert!(text.starts_with("K7M2Q-9XD4T-"));
    let back = InstallCode::parse(&text).expect("parses");
    assert!(back.ct_matches(&code));
    assert_eq!(back.code_id().as_str(), "K7M2Q9XD4T");
}

#[test]
fn input_is_tolerant_of_case_spaces_dashes_and_lookalikes() {
    let code = code_from("K7M2Q9XD4T", 9);
    let text = code.expose_formatted().to_string();
    let variants = [
        text.to_lowercase(),
        text.replace('-', " "),
        text.replace('-', ""),
        format!("  {}  ", text.replace('-', " - ")),
        text.replace('1', "l").replace('0', "o"),
        text.replace('1', "I").replace('0', "O"),
    ];
    for v in variants {
        let parsed = InstallCode::parse(&v).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        assert!(parsed.ct_matches(&code), "{v:?}");
    }
}

#[test]
fn format_errors_table() {
    let good = code_from("ABCDE12345", 1).expose_formatted().to_string();
    let short = &good[..good.len() - 1];
    let with_u = format!("U{}", &good[1..]);
    let with_bang = format!("{}!{}", &good[..13], &good[14..]);
    let cases: Vec<(String, CodeFormatError)> = vec![
        (short.to_owned(), CodeFormatError::WrongLength { found: 29 }),
        (
            format!("{good}X"),
            CodeFormatError::WrongLength { found: 31 },
        ),
        (String::new(), CodeFormatError::WrongLength { found: 0 }),
        (
            with_u,
            CodeFormatError::InvalidCharacter {
                group: 1,
                position: 1,
            },
        ),
        // good[13] is the 2nd char of group 3 (groups are 6 chars apart with the dash).
        (
            with_bang,
            CodeFormatError::InvalidCharacter {
                group: 3,
                position: 2,
            },
        ),
    ];
    for (input, want) in cases {
        assert_eq!(InstallCode::parse(&input).err(), Some(want), "{input:?}");
    }
}

#[test]
fn messages_never_echo_the_code() {
    let good = code_from("ABCDE12345", 3).expose_formatted().to_string();
    let mut typo = good.clone().into_bytes();
    typo[20] = if typo[20] == b'Z' { b'Y' } else { b'Z' };
    let typo = String::from_utf8(typo).expect("ascii");
    let err = InstallCode::parse(&typo).expect_err("typo");
    let msg = err.to_string();
    for group in good.split('-') {
        assert!(!msg.contains(group), "{msg}");
    }
}

fn symbol_strategy() -> impl Strategy<Value = u8> {
    0u8..32
}

proptest! {
    /// Every single substituted symbol is caught and located to its group.
    #[test]
    fn single_substitution_is_located(id_seed in "[0-9A-HJKMNP-TV-Z]{10}", mac_byte: u8, pos in 0usize..CODE_LEN, delta in 1u8..32) {
        let code = code_from(&id_seed, mac_byte);
        let text: String = code.expose_formatted().replace('-', "");
        let mut chars: Vec<u8> = text.into_bytes();
        let v = symbol_value(chars[pos] as char).expect("alphabet");
        chars[pos] = ALPHABET[(v ^ delta) as usize];
        let typo = String::from_utf8(chars).expect("ascii");
        prop_assert_eq!(InstallCode::parse(&typo).err(), Some(CodeFormatError::Mistyped { group: Some(pos / GROUP_LEN + 1) }));
    }

    /// Every adjacent transposition of two different symbols is caught.
    #[test]
    fn adjacent_transposition_is_caught(id_seed in "[0-9A-HJKMNP-TV-Z]{10}", mac_byte: u8, pos in 0usize..CODE_LEN - 1) {
        let code = code_from(&id_seed, mac_byte);
        let mut chars: Vec<u8> = code.expose_formatted().replace('-', "").into_bytes();
        prop_assume!(chars[pos] != chars[pos + 1]);
        chars.swap(pos, pos + 1);
        let typo = String::from_utf8(chars).expect("ascii");
        let is_mistyped = matches!(InstallCode::parse(&typo), Err(CodeFormatError::Mistyped { .. }));
        prop_assert!(is_mistyped);
    }

    /// Any two substituted symbols are caught (distance 3).
    #[test]
    fn double_substitution_is_caught(mac_byte: u8, a in 0usize..CODE_LEN, b in 0usize..CODE_LEN, da in 1u8..32, db in 1u8..32) {
        prop_assume!(a != b);
        let code = code_from("ABCDE12345", mac_byte);
        let mut chars: Vec<u8> = code.expose_formatted().replace('-', "").into_bytes();
        for (p, d) in [(a, da), (b, db)] {
            let v = symbol_value(chars[p] as char).expect("alphabet");
            chars[p] = ALPHABET[(v ^ d) as usize];
        }
        let typo = String::from_utf8(chars).expect("ascii");
        let is_mistyped = matches!(InstallCode::parse(&typo), Err(CodeFormatError::Mistyped { .. }));
        prop_assert!(is_mistyped);
    }

    /// Every well-formed code (any id and secret symbols, with their check symbols)
    /// parses, and formats back to the same symbols (parse ∘ format = id); the parsed
    /// id is the first ten symbols. Built valid rather than drawn at random: about one
    /// random 30-symbol string in a thousand is a valid code.
    #[test]
    fn parse_format_is_identity(symbols in proptest::collection::vec(symbol_strategy(), CODE_ID_LEN + SECRET_LEN)) {
        let mut all = symbols.clone();
        let (c0, c1) = gf32::check_symbols(&all);
        all.push(c0);
        all.push(c1);
        let text: String = all.iter().map(|&v| ALPHABET[v as usize] as char).collect();
        let code = InstallCode::parse(&text);
        prop_assert!(code.is_ok(), "a well-formed code refused: {:?}", code.err());
        let code = code.expect("checked");
        prop_assert_eq!(code.expose_formatted().replace('-', ""), text.clone());
        prop_assert_eq!(code.code_id().as_str(), &text[..CODE_ID_LEN]);
        // The same code typed loosely parses to the same code.
        let loose = text.to_lowercase().chars().enumerate().fold(String::new(), |mut out, (i, c)| {
            if i > 0 && i % 3 == 0 { out.push(' '); }
            out.push(c);
            out
        });
        let again = InstallCode::parse(&loose);
        prop_assert!(again.as_ref().is_ok_and(|c| c.ct_matches(&code)), "loosely typed: {:?}", again.err());
    }

    /// The parser never panics on arbitrary input.
    #[test]
    fn parser_total(input in ".{0,80}") {
        let _ = InstallCode::parse(&input);
    }
}

#[test]
fn the_mac_decides_the_secret() {
    let a = code_from("ABCDE12345", 1);
    let b = code_from("ABCDE12345", 2);
    assert!(!a.ct_matches(&b));
    assert!(a.ct_matches(&code_from("ABCDE12345", 1)));
    assert!(!a.ct_matches(&code_from("ABCDE12346", 1)));
}

#[test]
fn binding_encoding_separates_every_field() {
    let base = CodeBinding {
        code_id: CodeId::parse("ABCDE12345").expect("id"),
        tenant_id: Uuid::from_u128(1),
        edition: "pro".into(),
        expires_at: OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time"),
        key_version: 1,
        replaces_appliance_id: None,
    };
    let mut variants = vec![base.clone()];
    let mut v = base.clone();
    v.code_id = CodeId::parse("ABCDE12346").expect("id");
    variants.push(v);
    let mut v = base.clone();
    v.tenant_id = Uuid::from_u128(2);
    variants.push(v);
    let mut v = base.clone();
    v.edition = "essentials".into();
    variants.push(v);
    let mut v = base.clone();
    v.expires_at += time::Duration::seconds(1);
    variants.push(v);
    let mut v = base.clone();
    v.key_version = 2;
    variants.push(v);
    let mut v = base.clone();
    v.replaces_appliance_id = Some(Uuid::from_u128(7));
    variants.push(v);
    let mut v = base.clone();
    v.replaces_appliance_id = Some(Uuid::from_u128(8));
    variants.push(v);
    let encodings: std::collections::BTreeSet<Vec<u8>> =
        variants.iter().map(CodeBinding::mac_input).collect();
    assert_eq!(encodings.len(), variants.len());
}

/// A binding that replaces nothing keeps the v1 encoding byte for byte, so codes minted
/// before replacements existed still verify after an upgrade.
#[test]
fn binding_without_replacement_keeps_the_v1_encoding() {
    let b = CodeBinding {
        code_id: CodeId::parse("ABCDE12345").expect("id"),
        tenant_id: Uuid::from_u128(1),
        edition: "pro".into(),
        expires_at: OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time"),
        key_version: 1,
        replaces_appliance_id: None,
    };
    let mut want = Vec::new();
    for f in [
        &b"alga-license/install-code/v1"[..],
        b"ABCDE12345",
        Uuid::from_u128(1).as_bytes(),
        b"pro",
        &1_900_000_000i64.to_be_bytes(),
        &1u32.to_be_bytes(),
    ] {
        want.extend_from_slice(&u32::try_from(f.len()).expect("short").to_be_bytes());
        want.extend_from_slice(f);
    }
    assert_eq!(b.mac_input(), want);
    // And its JSON form is the one stored and sent before (no new key).
    let json = serde_json::to_value(&b).expect("json");
    assert!(json.get("replaces_appliance_id").is_none(), "{json}");
}

#[test]
fn debug_never_shows_the_secret() {
    let code = code_from("ABCDE12345", 5);
    let dbg = format!("{code:?}");
    let text = code.expose_formatted();
    assert!(dbg.contains("[redacted]"));
    for group in text.split('-').skip(2) {
        assert!(!dbg.contains(group), "{dbg}");
    }
}
