//! The offline audit verifier on corrupted exports, and the canonical record decoder:
//! never panics, whatever the file holds.
#![no_main]

use alga_audit::{AuditKeys, Record, VerifyOptions, verify_export};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Record::from_canonical(data);
    let path = std::env::temp_dir().join(format!("alga-fuzz-export-{}.jsonl", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let opts = VerifyOptions {
        keys: AuditKeys::default(),
        external_checkpoints: Vec::new(),
        now: time::OffsetDateTime::UNIX_EPOCH,
        unchained_alarm_after: time::Duration::seconds(30),
    };
    let _ = verify_export(&path, &opts);
});
