//! Bad input, each with its clear error and exit status: usage errors (2), missing
//! settings, unreadable or mismatched identity files, an unreachable gateway, a gateway
//! certificate the CA bundle did not issue, a client certificate the service never
//! issued, and an identity the route refuses (1). Identity files are paths: their
//! contents never appear in an error.

use std::net::TcpListener;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};

use crate::fake_gateway::FakeGateway;
use crate::support::{algactl_bare, dev, env_file, failed, refused, s};

const TENANT: &str = "00000000-0000-4000-8000-000000000000";

/// The stack's gateway and CA with the given identity files: `tenant show`.
fn show_as(cert: &str, key: &str) -> std::process::Output {
    algactl_bare(&[
        "--gateway-url",
        &dev("ALGA_GATEWAY_URL"),
        "--ca-bundle",
        &dev("ALGA_CA_BUNDLE"),
        "--cert",
        cert,
        "--key",
        key,
        "tenant",
        "show",
        TENANT,
    ])
}

/// `out` failed with status 1 because no answer came, and says why (`because`).
fn cannot_reach(out: &std::process::Output, because: &str) {
    let stderr = failed(out, 1);
    assert!(
        stderr.contains("error: cannot reach the gateway: ") && stderr.contains(because),
        "expected \"cannot reach the gateway\" because of {because:?}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn usage_errors_exit_2_and_name_the_argument() {
    let cases: [(&[&str], &str); 7] = [
        (&[], "Usage: algactl"),
        (&["register", "--company", "x"], "--contact-name"),
        (&["tenant", "show"], "<TENANT_ID>"),
        (
            &["tenant", "show", "not-a-uuid"],
            "invalid value 'not-a-uuid'",
        ),
        (&["tenant", "set-edition", TENANT], "--edition"),
        (&["appliance", "list", "--limit", "0"], "--limit"),
        (&["audit", "export", "--after", "minus-one"], "--after"),
    ];
    for (args, says) in cases {
        let stderr = failed(&algactl_bare(args), 2);
        assert!(stderr.contains(says), "algactl {args:?}: {stderr}");
    }
    let stderr = failed(&algactl_bare(&["no-such-command"]), 2);
    assert!(
        stderr.contains("unrecognized subcommand 'no-such-command'"),
        "{stderr}"
    );
}

#[test]
fn missing_settings_and_unreadable_identity_files_are_named() {
    // Nothing configured at all (an empty settings file, no environment).
    let dir = tempfile::tempdir().expect("a temporary directory");
    let empty = dir.path().join("empty.env");
    std::fs::write(&empty, "").expect("write");
    let stderr = failed(
        &algactl_bare(&["--env-file", s(&empty), "tenant", "show", TENANT]),
        1,
    );
    assert!(
        stderr.contains("no gateway URL: pass --gateway-url or set ALGA_GATEWAY_URL"),
        "{stderr}"
    );
    // The auditor's commands name the auditor's variables.
    let stderr = failed(
        &algactl_bare(&[
            "--env-file",
            s(&empty),
            "--gateway-url",
            "https://localhost:1",
            "--ca-bundle",
            &dev("ALGA_CA_BUNDLE"),
            "audit",
            "export",
        ]),
        1,
    );
    assert!(
        stderr.contains("no client certificate: pass --cert or set ALGA_AUDITOR_CERT"),
        "{stderr}"
    );
    let missing = dir.path().join("missing.env");
    let stderr = failed(
        &algactl_bare(&["--env-file", s(&missing), "tenant", "show", TENANT]),
        1,
    );
    assert!(
        stderr.contains(&format!("reading {}", missing.display())),
        "{stderr}"
    );

    // A certificate file that does not exist, one that holds no certificate.
    let nowhere = dir.path().join("nowhere.crt");
    let stderr = failed(&show_as(s(&nowhere), &dev("ALGA_STORE_KEY")), 1);
    assert!(
        stderr.contains(&format!("reading certificates {}", nowhere.display())),
        "{stderr}"
    );
    let stderr = failed(&show_as(s(&empty), &dev("ALGA_STORE_KEY")), 1);
    assert!(
        stderr.contains(&format!("no certificate in {}", empty.display())),
        "{stderr}"
    );

    // The store's certificate with the auditor's key: refused before any request, and
    // the key itself is nowhere in the message.
    let out = show_as(&dev("ALGA_STORE_CERT"), &dev("ALGA_AUDITOR_KEY"));
    let stderr = failed(&out, 1);
    assert!(
        stderr.contains("the client certificate and key do not match"),
        "{stderr}"
    );
    let key = std::fs::read_to_string(dev("ALGA_AUDITOR_KEY")).expect("the auditor's key");
    let body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!body.is_empty());
    for line in body {
        assert!(
            !stderr.contains(line),
            "a line of the private key is in the error"
        );
    }
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

#[test]
fn an_unreachable_gateway_or_an_untrusted_one_is_reported() {
    // A port nobody listens on (bound, then released).
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = algactl_bare(&[
        "--env-file",
        s(&env_file()),
        "--gateway-url",
        &format!("https://localhost:{port}"),
        "tenant",
        "show",
        TENANT,
    ]);
    cannot_reach(&out, "Connection refused");

    // The real gateway, with a CA bundle that did not issue its certificate.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stranger = FakeGateway::serve(dir.path(), "{}".to_owned());
    let out = algactl_bare(&[
        "--env-file",
        s(&env_file()),
        "--ca-bundle",
        s(&stranger.ca_bundle),
        "tenant",
        "show",
        TENANT,
    ]);
    cannot_reach(&out, "invalid peer certificate: UnknownIssuer");
    // And the other way round: a gateway under another CA is not trusted by the
    // stack's bundle; it never gets a request.
    let out = algactl_bare(&[
        "--env-file",
        s(&env_file()),
        "--gateway-url",
        &stranger.url,
        "tenant",
        "show",
        TENANT,
    ]);
    cannot_reach(&out, "invalid peer certificate: UnknownIssuer");
    assert_eq!(stranger.requests(), Vec::<String>::new());
}

#[test]
fn a_certificate_the_service_did_not_issue_or_the_wrong_role_is_refused() {
    // A store-like certificate (clientAuth, the store's URI) that no trusted CA signed:
    // the gateway refuses the TLS handshake.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("parameters");
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://alga.test/service/store".try_into().expect("ia5"),
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).expect("self-signed");
    let (cert_file, key_file) = (dir.path().join("self.crt"), dir.path().join("self.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    // (TLS 1.3: the refusal comes after the client's handshake ends, usually as the
    // alert "UnknownCA", but a reset can overtake it; only the outcome is certain.)
    cannot_reach(&show_as(s(&cert_file), s(&key_file)), "");

    // The auditor's certificate on a store-only route: the service's own refusal.
    refused(
        &[
            "--cert",
            &dev("ALGA_AUDITOR_CERT"),
            "--key",
            &dev("ALGA_AUDITOR_KEY"),
            "tenant",
            "suspend",
            TENANT,
        ],
        403,
        "forbidden",
    );
}
