//! Presigned links: AWS's published example reproduced exactly, the clamping rules, and
//! a real S3-compatible server (alga-dev-s3: s3s, which validates SigV4) accepting and refusing.

use alga_delivery::Error;
use alga_delivery::presign::{MAX_LINK_TTL, Presigner, S3Config, S3Credentials};
use anyhow::{Context, Result};
use secrecy::SecretString;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use crate::servers::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Server};

const BUCKET: &str = "alga-iso";
const KEY: &str = "releases/alga-appliance 1.0.iso";

fn config(endpoint: &str, bucket: &str, key: &str, path_style: bool) -> S3Config {
    S3Config {
        endpoint: endpoint.parse().expect("test endpoint is a URL"),
        region: "us-east-1".into(),
        bucket: bucket.into(),
        key: key.into(),
        path_style,
        credentials_file: None,
    }
}

/// "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", Amazon S3
/// API reference: the presigned GET of `examplebucket/test.txt`.
#[test]
fn aws_documented_query_string_example_is_reproduced_exactly() {
    let credentials = S3Credentials::new(
        "AKIAIOSFODNN7EXAMPLE",
        SecretString::from("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    );
    let presigner = Presigner::with_credentials(
        &config(
            "https://s3.amazonaws.com",
            "examplebucket",
            "test.txt",
            false,
        ),
        credentials,
    )
    .expect("valid config");
    let link = presigner
        .presign(datetime!(2013-05-24 00:00:00 UTC), Duration::seconds(86400))
        .expect("signs");
    assert_eq!(
        link.url,
        "https://examplebucket.s3.amazonaws.com/test.txt\
         ?X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
         &X-Amz-Date=20130524T000000Z\
         &X-Amz-Expires=86400\
         &X-Amz-SignedHeaders=host\
         &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    );
    assert_eq!(link.expires_at, datetime!(2013-05-25 00:00:00 UTC));
}

fn test_presigner(endpoint: &str) -> Presigner {
    Presigner::with_credentials(
        &config(endpoint, BUCKET, KEY, true),
        S3Credentials::new(S3_ACCESS_KEY, SecretString::from(S3_SECRET_KEY)),
    )
    .expect("valid config")
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

#[test]
fn ttl_is_clamped_to_seven_days() {
    let now = datetime!(2030-01-01 12:00:00.75 UTC);
    let link = test_presigner("http://127.0.0.1:9")
        .presign(now, Duration::days(30))
        .expect("signs");
    assert_eq!(
        query_param(&link.url, "X-Amz-Expires").as_deref(),
        Some("604800")
    );
    assert_eq!(
        link.expires_at,
        datetime!(2030-01-01 12:00:00 UTC) + MAX_LINK_TTL
    );
}

#[test]
fn ttl_is_clamped_to_the_credentials_expiry_and_the_token_is_signed_in() {
    let now = datetime!(2030-01-01 12:00:00 UTC);
    let expiry = datetime!(2030-01-01 12:15:30 UTC);
    let credentials = S3Credentials::new(S3_ACCESS_KEY, SecretString::from(S3_SECRET_KEY))
        .with_session(SecretString::from("session/token+value"), Some(expiry));
    let presigner = Presigner::with_credentials(
        &config("http://127.0.0.1:9", BUCKET, KEY, true),
        credentials,
    )
    .expect("valid config");
    let link = presigner.presign(now, Duration::hours(24)).expect("signs");
    assert_eq!(link.expires_at, expiry);
    assert_eq!(
        query_param(&link.url, "X-Amz-Expires").as_deref(),
        Some("930")
    );
    assert_eq!(
        query_param(&link.url, "X-Amz-Security-Token").as_deref(),
        Some("session%2Ftoken%2Bvalue")
    );
    assert!(!format!("{presigner:?}").contains("session/token"));

    // A second before the expiry there is one second left (SigV4 counts whole seconds).
    let last = presigner
        .presign(expiry - Duration::milliseconds(500), Duration::hours(1))
        .expect("one second left");
    assert_eq!(
        query_param(&last.url, "X-Amz-Expires").as_deref(),
        Some("1")
    );
    for at in [expiry, expiry + Duration::hours(1)] {
        let err = presigner
            .presign(at, Duration::hours(1))
            .expect_err("credentials expired");
        assert!(matches!(err, Error::S3CredentialsExpired { .. }), "{err:?}");
    }
}

#[test]
fn presign_until_is_presign_with_the_difference() {
    let p = test_presigner("http://127.0.0.1:9");
    let now = datetime!(2030-01-01 12:00:00 UTC);
    let until = datetime!(2030-01-02 12:00:00 UTC);
    let a = p.presign_until(now, until).expect("signs");
    let b = p.presign(now, Duration::days(1)).expect("signs");
    assert_eq!(a, b);
    assert_eq!(a.expires_at, until);
    assert!(matches!(
        p.presign_until(until, now),
        Err(Error::InvalidTtl)
    ));
}

#[test]
fn non_positive_ttl_is_refused() {
    let p = test_presigner("http://127.0.0.1:9");
    for ttl in [
        Duration::ZERO,
        Duration::milliseconds(999),
        Duration::seconds(-5),
    ] {
        assert!(matches!(
            p.presign(OffsetDateTime::now_utc(), ttl),
            Err(Error::InvalidTtl)
        ));
    }
}

#[test]
fn credentials_come_from_the_configured_file_and_never_show() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("s3-credentials");
    std::fs::write(
        &file,
        format!("access_key_id={S3_ACCESS_KEY}\nsecret_access_key={S3_SECRET_KEY}\n"),
    )?;
    let mut cfg: S3Config = toml::from_str(&format!(
        r#"
        endpoint = "http://127.0.0.1:9"
        region = "us-east-1"
        bucket = "{BUCKET}"
        key = "{KEY}"
        path_style = true
        credentials_file = "{}"
        "#,
        file.display()
    ))?;
    let presigner = Presigner::from_config(&cfg)?;
    let dbg = format!("{presigner:?}");
    assert!(
        dbg.contains(S3_ACCESS_KEY) && !dbg.contains(S3_SECRET_KEY),
        "{dbg}"
    );
    presigner.reload_credentials()?;

    cfg.credentials_file = Some(dir.path().join("missing"));
    let err = Presigner::from_config(&cfg).expect_err("missing file");
    assert!(matches!(err, Error::S3CredentialsFile { .. }), "{err:?}");
    Ok(())
}

/// An ISO-like object: the ISO 9660 volume descriptor magic at its usual offset, and
/// enough pseudo-random bytes that a truncated or altered download shows.
fn iso_bytes() -> Vec<u8> {
    let mut bytes = vec![0u8; 1 << 20];
    let mut x: u32 = 0x9e37_79b9;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    bytes[0x8001..0x8006].copy_from_slice(b"CD001");
    bytes
}

async fn get(url: &str) -> Result<(u16, Vec<u8>)> {
    let response = crate::servers::http_client()
        .get(url)
        .send()
        .await
        .context("GET the link")?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.to_vec()))
}

async fn server_and_link(now: OffsetDateTime, ttl: Duration) -> Result<(S3Server, String)> {
    let iso = iso_bytes();
    let server = S3Server::start(BUCKET, &[(KEY, &iso), ("releases/other.iso", b"other")])?;
    let presigner = test_presigner(&format!("http://127.0.0.1:{}", server.port));
    let link = presigner.presign(now, ttl)?;
    Ok((server, link.url))
}

#[tokio::test]
async fn s3_link_downloads_exactly_the_object() -> Result<()> {
    let (_server, url) = server_and_link(OffsetDateTime::now_utc(), Duration::hours(1)).await?;
    let (status, body) = get(&url).await?;
    assert_eq!(status, 200);
    assert!(
        body == iso_bytes(),
        "downloaded bytes differ from the object"
    );
    Ok(())
}

#[tokio::test]
async fn s3_refuses_a_changed_signature() -> Result<()> {
    let (_server, url) = server_and_link(OffsetDateTime::now_utc(), Duration::hours(1)).await?;
    let last = url.chars().last().context("non-empty")?;
    let flipped = if last == '0' { '1' } else { '0' };
    let tampered = format!("{}{flipped}", &url[..url.len() - 1]);
    assert_eq!(get(&tampered).await?.0, 403);
    Ok(())
}

#[tokio::test]
async fn s3_refuses_a_changed_object_key() -> Result<()> {
    let (_server, url) = server_and_link(OffsetDateTime::now_utc(), Duration::hours(1)).await?;
    let encoded_key = "releases/alga-appliance%201.0.iso";
    assert!(url.contains(encoded_key));
    let other = url.replacen(encoded_key, "releases/other.iso", 1);
    assert_eq!(get(&other).await?.0, 403);
    Ok(())
}

#[tokio::test]
async fn s3_refuses_a_changed_expiry() -> Result<()> {
    let (_server, url) = server_and_link(OffsetDateTime::now_utc(), Duration::hours(1)).await?;
    assert!(url.contains("X-Amz-Expires=3600&"));
    let longer = url.replacen("X-Amz-Expires=3600&", "X-Amz-Expires=604800&", 1);
    assert_eq!(get(&longer).await?.0, 403);
    Ok(())
}

#[tokio::test]
async fn s3_refuses_an_expired_link() -> Result<()> {
    let past = OffsetDateTime::now_utc() - Duration::hours(2);
    let (_server, url) = server_and_link(past, Duration::hours(1)).await?;
    assert_eq!(get(&url).await?.0, 403);
    Ok(())
}

#[tokio::test]
async fn s3_refuses_a_link_fetched_under_another_host_name() -> Result<()> {
    let (server, url) = server_and_link(OffsetDateTime::now_utc(), Duration::hours(1)).await?;
    let as_localhost = url.replacen("127.0.0.1", "localhost", 1);
    assert_eq!(get(&as_localhost).await?.0, 403);
    // And the same link signed for `localhost` is fine when fetched as `localhost`.
    let localhost = test_presigner(&format!("http://localhost:{}", server.port))
        .presign(OffsetDateTime::now_utc(), Duration::hours(1))?;
    assert_eq!(get(&localhost.url).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn s3_refuses_a_link_signed_with_other_credentials() -> Result<()> {
    let server = S3Server::start(BUCKET, &[(KEY, &iso_bytes())])?;
    let presigner = Presigner::with_credentials(
        &config(
            &format!("http://127.0.0.1:{}", server.port),
            BUCKET,
            KEY,
            true,
        ),
        S3Credentials::new(S3_ACCESS_KEY, SecretString::from("not-the-secret")),
    )?;
    let link = presigner.presign(OffsetDateTime::now_utc(), Duration::hours(1))?;
    assert_eq!(get(&link.url).await?.0, 403);
    let _ = server.root();
    Ok(())
}

#[test]
fn temporary_credentials_running_short_are_reloaded_from_their_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("s3-credentials");
    let write = |token: &str, expires_at: &str| {
        std::fs::write(
            &file,
            format!(
                "access_key_id={S3_ACCESS_KEY}\nsecret_access_key={S3_SECRET_KEY}\n\
                 session_token={token}\nexpires_at={expires_at}\n"
            ),
        )
    };
    write("old-token", "2030-01-01T12:10:00Z")?;
    let mut cfg = config("http://127.0.0.1:9", BUCKET, KEY, true);
    cfg.credentials_file = Some(file.clone());
    let presigner = Presigner::from_config(&cfg)?;
    let now = datetime!(2030-01-01 12:00:00 UTC);

    // Not rotated yet: the link is cut to the credentials' expiry.
    let short = presigner.presign(now, Duration::hours(1))?;
    assert_eq!(short.expires_at, datetime!(2030-01-01 12:10:00 UTC));
    assert_eq!(
        query_param(&short.url, "X-Amz-Security-Token").as_deref(),
        Some("old-token")
    );

    // Rotated: the next link uses the fresh credentials and its full validity.
    write("new-token", "2030-01-01T18:00:00Z")?;
    let full = presigner.presign(now, Duration::hours(1))?;
    assert_eq!(full.expires_at, datetime!(2030-01-01 13:00:00 UTC));
    assert_eq!(
        query_param(&full.url, "X-Amz-Security-Token").as_deref(),
        Some("new-token")
    );

    // Expired and not rotated: refused, with a clear error.
    std::fs::remove_file(&file)?;
    let err = presigner
        .presign(datetime!(2030-01-01 18:00:00 UTC), Duration::hours(1))
        .expect_err("expired");
    assert!(matches!(err, Error::S3CredentialsExpired { .. }), "{err:?}");
    Ok(())
}
