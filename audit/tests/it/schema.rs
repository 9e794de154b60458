//! The tables are append-only for everyone, the runtime role only inserts and reads,
//! and an append that cannot be written takes the business change down with it.

use tokio_postgres::error::SqlState;

use crate::support::{
    InsecureTestSigner, RunningSequencer, TestDb, append_n, fast_config, sample_record,
};

const TABLES: [&str; 3] = ["audit_events", "audit_chain", "audit_checkpoints"];

#[tokio::test]
async fn runtime_role_cannot_update_delete_or_truncate() {
    let db = TestDb::new().await;
    let mut rt = db.runtime().await;
    append_n(&mut rt, 0, 3).await;
    for table in TABLES {
        for sql in [
            format!("UPDATE {table} SET seq = seq WHERE false"),
            format!("DELETE FROM {table}"),
            format!("TRUNCATE {table}"),
        ] {
            let sql = sql.replace(
                "SET seq = seq",
                if table == "audit_events" {
                    "SET action = action"
                } else {
                    "SET seq = seq"
                },
            );
            let err = rt.batch_execute(&sql).await.expect_err(&sql);
            assert_eq!(
                err.code(),
                Some(&SqlState::INSUFFICIENT_PRIVILEGE),
                "{sql}: {err}"
            );
        }
    }
    // Nor may it choose the transaction id or insertion time the sequencer relies on.
    let err = rt
        .batch_execute(
            "INSERT INTO audit_events (xid, recorded_at, action, record) \
             VALUES ('1', now(), 'a.b', '\\x7b7d')",
        )
        .await
        .expect_err("xid is not the runtime role's to set");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    db.drop_db().await;
}

#[tokio::test]
async fn the_owner_is_refused_by_the_triggers() {
    let db = TestDb::new().await;
    let mut owner = db.owner().await;
    append_n(&mut owner, 0, 2).await;
    let signer = InsecureTestSigner::new("audit-1");
    let mut seq = RunningSequencer::start(db.pool(2), signer, fast_config(1));
    seq.wait_for(2, 1).await;
    seq.stop().await;
    for (table, column) in [
        ("audit_events", "action"),
        ("audit_chain", "prev_hash"),
        ("audit_checkpoints", "kid"),
    ] {
        let rows: i64 = owner
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            rows > 0,
            "{table} must have rows for its row triggers to fire"
        );
        for sql in [
            format!("UPDATE {table} SET {column} = {column}"),
            format!("DELETE FROM {table}"),
            format!("TRUNCATE {table} CASCADE"),
        ] {
            let err = owner.batch_execute(&sql).await.expect_err(&sql);
            let text = format!("{err:?}");
            assert!(text.contains("append-only"), "{sql}: {text}");
        }
    }
    db.drop_db().await;
}

#[tokio::test]
async fn append_commits_with_the_change_or_not_at_all() {
    let db = TestDb::new().await;
    let mut rt = db.runtime().await;

    // Rolled back: neither the change nor the record.
    let tx = rt.transaction().await.unwrap();
    tx.execute("UPDATE business SET n = 42 WHERE id = 1", &[])
        .await
        .unwrap();
    alga_audit::append(&tx, &sample_record(1)).await.unwrap();
    tx.rollback().await.unwrap();
    let events: i64 = rt
        .query_one("SELECT count(*) FROM audit_events", &[])
        .await
        .unwrap()
        .get(0);
    let n: i64 = rt
        .query_one("SELECT n FROM business WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((events, n), (0, 0));

    // Committed: both.
    let tx = rt.transaction().await.unwrap();
    tx.execute("UPDATE business SET n = 42 WHERE id = 1", &[])
        .await
        .unwrap();
    alga_audit::append(&tx, &sample_record(2)).await.unwrap();
    tx.commit().await.unwrap();
    let events: i64 = rt
        .query_one("SELECT count(*) FROM audit_events", &[])
        .await
        .unwrap()
        .get(0);
    let n: i64 = rt
        .query_one("SELECT n FROM business WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((events, n), (1, 42));
    db.drop_db().await;
}

#[tokio::test]
async fn with_insert_revoked_the_business_change_rolls_back() {
    let db = TestDb::new().await;
    let owner = db.owner().await;
    owner
        .batch_execute("REVOKE INSERT ON audit_events FROM alga_gateway")
        .await
        .unwrap();
    let mut rt = db.runtime().await;

    // The caller's flow: change, append, commit; any error aborts the whole action.
    let result: Result<(), alga_audit::AuditError> = async {
        let tx = rt.transaction().await?;
        tx.execute("UPDATE business SET n = 7 WHERE id = 2", &[])
            .await?;
        alga_audit::append(&tx, &sample_record(3)).await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    let err = result.expect_err("the append must fail");
    match &err {
        alga_audit::AuditError::Database(e) => {
            assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e}")
        }
        other => panic!("unexpected error {other:?}"),
    }
    let n: i64 = rt
        .query_one("SELECT n FROM business WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the business change must not survive a failed append");
    let events: i64 = owner
        .query_one("SELECT count(*) FROM audit_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 0);
    db.drop_db().await;
}

#[tokio::test]
async fn migrations_have_unique_names_and_grant_to_the_runtime_role() {
    let ms = alga_audit::migrations();
    assert!(!ms.is_empty());
    let mut names: Vec<_> = ms.iter().map(|m| m.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), ms.len());
    assert!(ms.iter().all(|m| m.name.starts_with("audit/")));
    assert!(ms[0].sql.contains(alga_audit::RUNTIME_ROLE));
}
