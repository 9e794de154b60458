//! The store's lifecycle commands end to end through the real gateway — what the service
//! answers, what the tables show, and that refusals echo the stable error code — and a
//! tenant's records fetched with their proofs and checked offline.
//!
//! Redeems and check-ins (replaced and suspended appliances) are driven by
//! `scripts/demo.sh` and `softhsm-tests`, which run `alga-appliance` too.

use std::path::Path;
use std::time::{Duration, Instant};

use alga_protocol::api::{
    AppliancePage, EntitlementResponse, ReissueResponse, TenantStatus, TenantStatusResponse,
    TenantView,
};
use alga_tlog::{LogKeys, TenantAudit};
use serde_json::Value;

use crate::fake_gateway::FakeGateway;
use crate::support::{algactl, json, ok, refused, register, row, s};

#[test]
fn reissue_prints_the_whole_answer_and_what_it_replaces() {
    let (tenant, code) = register("reissue");
    // No appliance yet. --add-appliance: one more, and no pending code is superseded.
    let added: ReissueResponse = json(&["reissue", "--tenant-id", &tenant, "--add-appliance"]);
    assert_eq!(added.code.tenant_id.to_string(), tenant);
    assert_eq!(added.replaces_appliance_id, None);
    assert_eq!(added.revoked_code_ids, Vec::<String>::new());
    // Neither flag: the first install's code sent again, superseding the pending ones
    // (the registration's and the added one: neither replaces an appliance).
    let raw: Value = json(&["reissue", "--tenant-id", &tenant]);
    for field in [
        "tenant_id",
        "install_code",
        "download",
        "email",
        "replaces_appliance_id",
        "revoked_code_ids",
    ] {
        assert!(
            raw.get(field).is_some(),
            "--json reissue lacks {field}: {raw}"
        );
    }
    assert!(raw["replaces_appliance_id"].is_null(), "{raw}");
    let mut expected = vec![code, added.code.install_code.code_id.clone()];
    expected.sort();
    assert_eq!(
        raw["revoked_code_ids"],
        serde_json::json!(expected),
        "{raw}"
    );
    let table = ok(&["reissue", "--tenant-id", &tenant]);
    assert_eq!(
        row(&table, "replaces appliance"),
        "none (adds an appliance)"
    );
    let previous = raw["install_code"]["code_id"].as_str().expect("code_id");
    assert_eq!(row(&table, "revoked codes"), previous);

    let missing = "00000000-0000-4000-8000-000000000000";
    refused(
        &[
            "reissue",
            "--tenant-id",
            &tenant,
            "--replaces-appliance-id",
            missing,
        ],
        404,
        "appliance_not_found",
    );
    refused(
        &["reissue", "--tenant-id", missing, "--add-appliance"],
        404,
        "tenant_not_found",
    );
    // Both replacement modes: refused by algactl itself (usage, exit 2).
    let out = algactl(&[
        "reissue",
        "--tenant-id",
        &tenant,
        "--replaces-appliance-id",
        missing,
        "--add-appliance",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn edition_suspension_and_the_tenant_view() {
    let (tenant, _) = register("lifecycle");

    let show = ok(&["tenant", "show", &tenant]);
    assert_eq!(row(&show, "status"), "active");
    assert_eq!(row(&show, "edition"), "pro");
    assert!(
        row(&show, "appliances").starts_with("0 active of "),
        "{show}"
    );
    assert!(show.contains("\nappliances (0)\n"), "{show}");
    // The auditor reads it too; --json is the service's body, which is a TenantView.
    let view: TenantView = json(&["tenant", "show", &tenant, "--as", "auditor"]);
    assert_eq!(view.tenant_id.to_string(), tenant);
    assert_eq!(view.status, TenantStatus::Active);

    let e: EntitlementResponse =
        json(&["tenant", "set-edition", &tenant, "--edition", "essentials"]);
    assert!(e.changed, "{e:?}");
    assert_eq!(
        (e.previous_edition.as_str(), e.edition.as_str()),
        ("pro", "essentials")
    );
    assert_eq!(e.active_appliances, 0);
    let again = ok(&["tenant", "set-edition", &tenant, "--edition", "essentials"]);
    assert_eq!(row(&again, "edition"), "essentials (unchanged)");
    let bad = refused(
        &[
            "tenant",
            "set-edition",
            &tenant,
            "--edition",
            "no-such-edition",
        ],
        400,
        "validation_failed",
    );
    assert!(
        bad.contains("edition:"),
        "the field's problem is shown: {bad}"
    );
    let back = ok(&["tenant", "set-edition", &tenant, "--edition", "pro"]);
    assert_eq!(row(&back, "edition"), "pro (was essentials)");

    let s: TenantStatusResponse = json(&["tenant", "suspend", &tenant, "--reason", "cli test"]);
    assert_eq!(s.status, TenantStatus::Suspended);
    assert!(s.suspended_at.is_some());
    refused(
        &["tenant", "suspend", &tenant],
        409,
        "tenant_already_suspended",
    );
    let show = ok(&["tenant", "show", &tenant]);
    assert!(
        row(&show, "status").starts_with("suspended since "),
        "{show}"
    );
    let r = ok(&["tenant", "resume", &tenant, "--reason", "cli test done"]);
    assert_eq!(row(&r, "status"), "active");
    assert_eq!(row(&r, "suspended since"), "-");
    refused(&["tenant", "resume", &tenant], 409, "tenant_not_suspended");

    let missing = "00000000-0000-4000-8000-000000000000";
    refused(&["tenant", "show", missing], 404, "tenant_not_found");
    refused(&["tenant", "suspend", missing], 404, "tenant_not_found");
    refused(
        &["appliance", "revoke", missing],
        404,
        "appliance_not_found",
    );
}

#[test]
fn appliance_list_pages_and_totals() {
    let page: AppliancePage = json(&["appliance", "list", "--limit", "1"]);
    assert!(page.appliances.len() <= 1, "{page:?}");
    let all: Value = json(&[
        "appliance",
        "list",
        "--all",
        "--limit",
        "2",
        "--as",
        "auditor",
    ]);
    let n = all["appliances"]
        .as_array()
        .map(Vec::len)
        .expect("appliances");
    assert_eq!(all["total"].as_u64(), Some(n as u64), "{all}");
    assert!(all["next"].is_null(), "{all}");
    // Following a first page by hand reaches the same appliances as --all.
    if let Some(next) = &page.next {
        let second: AppliancePage = json(&["appliance", "list", "--limit", "1", "--after", next]);
        assert_ne!(
            second.appliances.first().map(|a| a.appliance_id),
            page.appliances.first().map(|a| a.appliance_id)
        );
    }

    let ok_only: Value = json(&["appliance", "list", "--health", "ok", "--all"]);
    for a in ok_only["appliances"].as_array().expect("appliances") {
        assert_eq!(a["health"], "ok", "{a}");
        assert_eq!(a["state"], "active", "{a}");
    }
    let table = ok(&[
        "appliance",
        "list",
        "--health",
        "ok",
        "--all",
        "--limit",
        "1000",
    ]);
    // (Other tests may add appliances meanwhile: the total line, not its figure.)
    let last = table.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("total: ") && last.contains(" appliances with health ok ("),
        "{table}"
    );
    assert!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start()
            .starts_with("APPLIANCE")
    );
}

/// How long a tenant's new records may take to be in a signed checkpoint of the
/// transparency log. The stack's gateway signs one every `[audit] checkpoint_interval`
/// (60 s in the dev policy, `config/policy.sample.toml`) or 1000 records, whichever
/// comes first, and at once after a quiet minute. Only the one sequencer of the
/// stack's database (the holder of its advisory lock) signs: a test cannot lower the
/// cadence without a database of its own, so it waits, bounded.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(90);

/// `N records proven in the checkpoint of size S signed by O`: (N, S, O).
fn proven_line(out: &str) -> (u64, u64, String) {
    let line = out
        .lines()
        .find(|l| l.contains(" proven in the checkpoint of size "))
        .unwrap_or_else(|| panic!("no proof line in:\n{out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> u64 {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("word {i} of {line:?}"))
    };
    let origin = line
        .split(" signed by ")
        .nth(1)
        .unwrap_or_else(|| panic!("no signer in {line:?}"))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    (num(0), num(8), origin)
}

#[test]
fn a_tenants_records_are_fetched_with_their_proofs_and_verified_offline() {
    let (tenant, _) = register("tlog");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let keys = dir.path().join("log.vkey");
    let file = dir.path().join("tenant-audit.json");
    ok(&["audit", "log-keys", "--out", s(&keys)]);
    let log_keys = LogKeys::parse(&std::fs::read_to_string(&keys).expect("log keys written"))
        .expect("the log keys parse");

    // The registration's records are proven once a checkpoint covers them: within the
    // cadence, so ask again until then.
    let start = Instant::now();
    let table = loop {
        let table = ok(&[
            "audit",
            "tenant",
            &tenant,
            "--out",
            s(&file),
            "--log-keys",
            s(&keys),
        ]);
        if table.contains(" tenant.register ") && table.contains(" code.mint ") {
            break table;
        }
        assert!(
            start.elapsed() < CHECKPOINT_WAIT,
            "no checkpoint covered the registration of {tenant} within {CHECKPOINT_WAIT:?}:\n{table}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .eq(["SEQ", "TIME", "ACTION", "OUTCOME"]),
        "the table's header: {table}"
    );
    let (records, size, origin) = proven_line(&table);
    assert!(records >= 2, "{table}");
    assert!(table.contains(&format!(
        "\n{records} records of tenant {tenant}, each with its inclusion proof\n"
    )));
    assert_eq!(origin, log_keys.origin(), "{table}");

    // The file is a JSON list of the pages, which verifies on its own, offline, to the
    // same figures.
    let pages: Vec<TenantAudit> =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("--out written"))
            .expect("--out is a JSON list of tenant pages");
    let reports = alga_tlog::verify_pages(&pages, &log_keys).expect("the file verifies");
    assert_eq!(reports.iter().map(|r| r.records).sum::<u64>(), records);
    assert_eq!(reports.last().map(|r| r.checkpoint.size), Some(size));
    assert!(pages.iter().all(|p| p.tenant_id == tenant));
    assert!(
        pages.iter().flat_map(|p| &p.records).all(|r| r.seq <= size),
        "a record beyond the checkpoint"
    );

    // --json: the same list, as the service answered; the auditor reads it too.
    let v: Value = json(&["audit", "tenant", &tenant, "--as", "auditor"]);
    assert_eq!(v[0]["tenant_id"], Value::from(tenant.as_str()), "{v}");
    assert!(v[0]["checkpoint"].is_string(), "{v}");

    // Keys the log never signed with (same origin): refused, exit 1, the file still
    // written (evidence).
    let stranger = dir.path().join("stranger.vkey");
    // The Ed25519 base point: a valid public key whose private key nobody uses.
    let mut point = [0x66u8; 32];
    point[0] = 0x58;
    std::fs::write(
        &stranger,
        alga_tlog::log_vkey(log_keys.origin(), &point) + "\n",
    )
    .expect("write");
    std::fs::remove_file(&file).expect("remove");
    let out = algactl(&[
        "audit",
        "tenant",
        &tenant,
        "--out",
        s(&file),
        "--log-keys",
        s(&stranger),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("do NOT verify") && stderr.contains("signature refused"),
        "{stderr}"
    );
    assert!(file.is_file(), "the refused pages are kept");

    // The same page served by another gateway (trusted through --ca-bundle): as served,
    // it verifies to the same figures; with one record changed, it is refused, exit 1,
    // and the changed bundle is kept as evidence.
    assert_eq!(pages.len(), 1, "a new tenant's records fit in one page");
    let genuine = serde_json::to_value(&pages[0]).expect("the page as JSON");
    let served = |page: &Value, out: &Path| {
        let fake = FakeGateway::serve(dir.path(), page.to_string());
        let out = algactl(&[
            "--gateway-url",
            &fake.url,
            "--ca-bundle",
            s(&fake.ca_bundle),
            "audit",
            "tenant",
            &tenant,
            "--out",
            s(out),
            "--log-keys",
            s(&keys),
        ]);
        assert_eq!(
            fake.requests(),
            [format!(
                "GET /tenants/{tenant}/audit?after=0&limit=1000 HTTP/1.1"
            )]
        );
        out
    };
    let copy = dir.path().join("copy.json");
    let out = served(&genuine, &copy);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let (n, size_again, origin_again) = proven_line(&stdout);
    assert_eq!((n, origin_again.as_str()), (records, log_keys.origin()));
    assert!(size_again >= size, "{stdout}");

    let mut tampered = genuine.clone();
    let record = tampered["records"][0]["record"]
        .as_str()
        .expect("a record's text")
        .to_owned();
    assert!(record.contains("\"tenant.register\""), "{record}");
    tampered["records"][0]["record"] =
        Value::from(record.replacen("\"tenant.register\"", "\"tenant.suspend\"", 1));
    let evidence = dir.path().join("tampered.json");
    let out = served(&tampered, &evidence);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("do NOT verify"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(" proven in the checkpoint "),
        "a refused bundle is reported proven: {out:?}"
    );
    let kept = std::fs::read_to_string(&evidence).expect("the tampered bundle is kept");
    assert!(kept.contains("tenant.suspend"), "{kept}");

    let missing = "00000000-0000-4000-8000-000000000000";
    refused(&["audit", "tenant", missing], 404, "tenant_not_found");
}
