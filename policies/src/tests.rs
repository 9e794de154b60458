use super::*;

const SAMPLE: &str = include_str!("../../config/policy.sample.toml");

#[test]
fn sample_policy_loads() {
    let p = Policy::from_toml(SAMPLE).expect("sample policy is valid");
    assert_eq!(p.trust_domain, "alga.test");
    assert!(!p.edition("essentials").expect("essentials").is_paid());
    let pro = p.edition("pro").expect("pro");
    assert_eq!(
        pro.paid.expect("pro is paid").license_lifetime,
        Duration::days(7)
    );
    assert_eq!(
        p.role_of("spiffe://alga.test/service/nm-store"),
        Some(Role::Store)
    );
    assert_eq!(
        p.role_of("spiffe://alga.test/service/gateway"),
        Some(Role::Gateway)
    );
    assert_eq!(p.role_of("spiffe://alga.test/service/unknown"), None);
    assert_eq!(p.download_link_ttl, Duration::hours(72));
    assert_eq!(pro.max_appliances, 3);
    let terms = pro.paid.expect("pro is paid");
    assert_eq!(terms.check_in_grace, Duration::days(3));
    assert_eq!(terms.overdue_after(), Duration::days(4));
    assert_eq!(
        p.edition("essentials").expect("essentials").max_appliances,
        1
    );
}

#[test]
fn lifecycle_keys_are_checked() {
    let text = SAMPLE
        .replace("max_appliances = 3", "max_appliances = 0")
        .replace("max_appliances = 1\n", "")
        .replace("check_in_grace_days = 3", "check_in_grace_days = 30");
    let got = problems(&text);
    let expect = [
        "editions.pro.max_appliances: 0 is out of range (1 to 1000000)",
        "editions.essentials.max_appliances: missing",
        "editions.pro.check_in_grace_days: 30 is out of range (0 to 29)",
    ];
    for e in expect {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing {e:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");

    // Overdue must come before stale.
    let text = SAMPLE
        .replacen(
            "check_in_interval = \"24h\"",
            "check_in_interval = \"6d\"",
            1,
        )
        .replace("check_in_grace_days = 3", "check_in_grace_days = 24");
    assert_eq!(
        problems(&text),
        vec![
            "editions.pro.check_in_grace_days: check_in_interval (6d) plus the grace must be less than 30d (when an appliance is stale), or it is never overdue"
        ]
    );
    // Only paid editions check in.
    let text = SAMPLE.replace(
        "max_appliances = 1\npaid = false",
        "max_appliances = 1\npaid = false\ncheck_in_grace_days = 2",
    );
    assert_eq!(
        problems(&text),
        vec![
            "editions.essentials.check_in_grace_days: only paid editions have a license (set paid = true or remove this key)"
        ]
    );
}

fn problems(text: &str) -> Vec<String> {
    match Policy::from_toml(text) {
        Err(PolicyError::Invalid(p)) => p.into_iter().map(|p| p.to_string()).collect(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let text = SAMPLE
        .replace("ttl = \"72h\"", "ttl = \"8d\"")
        .replace("seats = 100\n", "seats = 0\n")
        // The first one is pro's.
        .replacen(
            "check_in_interval = \"24h\"",
            "check_in_interval = \"8d\"",
            1,
        )
        .replace("role = \"auditor\"", "role = \"admin\"")
        .replace("per_minute = 5", "per_minute = \"five\"")
        .replace("[audit]", "[audit]\ncolour = \"blue\"");
    let got = problems(&text);
    let expect = [
        "download_links.ttl: 8d is more than the maximum 7d",
        "editions.pro.seats: 0 is out of range",
        "editions.pro.check_in_interval: must be shorter than license_lifetime",
        "clients[1].role: unknown role \"admin\"",
        "rate_limits.redeem_per_code.per_minute: expected an integer, found string",
        "audit.colour: unknown key",
    ];
    for e in expect {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing {e:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");
}

#[test]
fn unpaid_edition_with_license_terms_is_refused() {
    let text = SAMPLE.replace(
        "max_appliances = 1\npaid = false",
        "max_appliances = 1\npaid = false\nlicense_lifetime = \"7d\"",
    );
    assert_eq!(
        problems(&text),
        vec![
            "editions.essentials.license_lifetime: only paid editions have a license (set paid = true or remove this key)"
        ]
    );
}

#[test]
fn clients_must_be_service_identities_in_the_trust_domain() {
    let text = SAMPLE
        .replace(
            "spiffe://alga.test/service/nm-store",
            "spiffe://evil.test/service/nm-store",
        )
        .replace(
            "spiffe://alga.test/service/auditor",
            "spiffe://alga.test/tenant/x/appliance/y",
        );
    let got = problems(&text);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got[0].starts_with("clients[0].uri: must be a service identity"));
    assert!(got[1].starts_with("clients[1].uri: must be a service identity"));
}

#[test]
fn a_gateway_client_is_required() {
    let text = SAMPLE.replace("role = \"gateway\"", "role = \"store\"");
    let got = problems(&text);
    assert_eq!(
        got,
        vec!["clients: no client has role \"gateway\": the issuer would accept nobody"]
    );
}

#[test]
fn missing_sections_are_each_reported() {
    let got = problems("trust_domain = \"alga.test\"\n");
    for section in [
        "license",
        "install_codes",
        "download_links",
        "credentials",
        "editions",
        "clients",
        "rate_limits",
        "audit",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(section)),
            "missing {section} in {got:#?}"
        );
    }
}

#[test]
fn syntax_errors_are_reported() {
    assert!(matches!(
        Policy::from_toml("trust_domain = "),
        Err(PolicyError::Syntax(_))
    ));
}

#[test]
fn appliance_spiffe_id_format() {
    let p = Policy::from_toml(SAMPLE).expect("valid");
    assert_eq!(
        p.appliance_spiffe_id("T", "A"),
        "spiffe://alga.test/tenant/T/appliance/A"
    );
}

#[test]
fn rotation_overlap_defaults_and_is_bounded_by_the_lifetime() {
    assert_eq!(
        Policy::from_toml(SAMPLE)
            .expect("valid")
            .credential_rotation_overlap,
        Duration::hours(24)
    );
    // Absent (a policy file written before the key existed): the default.
    let text = SAMPLE.replace("rotation_overlap = \"24h\"\n", "");
    assert_ne!(text, SAMPLE);
    assert_eq!(
        Policy::from_toml(&text)
            .expect("valid without it")
            .credential_rotation_overlap,
        DEFAULT_ROTATION_OVERLAP
    );
    let text = SAMPLE.replace("rotation_overlap = \"24h\"", "rotation_overlap = \"2d\"");
    assert_eq!(
        Policy::from_toml(&text)
            .expect("valid")
            .credential_rotation_overlap,
        Duration::days(2)
    );
    // Never longer than a credential lives, never too short for a retry.
    let text = SAMPLE.replace("rotation_overlap = \"24h\"", "rotation_overlap = \"31d\"");
    assert_eq!(
        problems(&text),
        vec!["credentials.rotation_overlap: 31d is more than credentials.lifetime (30d)"]
    );
    let text = SAMPLE.replace("rotation_overlap = \"24h\"", "rotation_overlap = \"1m\"");
    assert_eq!(
        problems(&text),
        vec!["credentials.rotation_overlap: 1m is less than the minimum 5m"]
    );
    let text = SAMPLE.replace("rotation_overlap = \"24h\"", "rotation_overlap = 24");
    assert_eq!(
        problems(&text),
        vec!["credentials.rotation_overlap: expected a string, found integer"]
    );
    // Other keys of the section are still refused.
    let text = SAMPLE.replace(
        "lifetime = \"30d\"",
        "lifetime = \"30d\"\nlifespan = \"1d\"",
    );
    let got = problems(&text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with(
            "credentials.lifespan: unknown key (expected one of: lifetime, rotation_overlap)"
        ),
        "{got:#?}"
    );
}
