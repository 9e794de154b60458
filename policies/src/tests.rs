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
        .replace("seats = 100", "seats = 0")
        .replace("check_in_interval = \"24h\"", "check_in_interval = \"8d\"")
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
        "seats = 5\npaid = false",
        "seats = 5\npaid = false\nlicense_lifetime = \"7d\"",
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
