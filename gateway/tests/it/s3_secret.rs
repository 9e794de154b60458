//! Issue 18, finding 9 (dev only): the local S3 server's secret key was on its command
//! line, visible to every local user in `ps` (s3s-fs takes its keys only as options).
//! The stack's S3 server is now `alga-dev-s3` (`devtools/s3`), which has no option for a
//! key at all and reads them from `.dev/secrets/s3-credentials`. This test looks at every
//! process of the machine (the stack's alga-dev-s3 included): none shows the stack's S3
//! secret on its command line. It failed against the s3s-fs of an earlier `stack.sh`.

use crate::harness::dev;

/// What the command line of the stack's S3 server holds (its binary's name).
const SERVER: &[u8] = b"alga-dev-s3";

#[test]
fn no_process_shows_the_stack_s3_secret_on_its_command_line() {
    let file = dev().path("ALGA_S3_CREDENTIALS_FILE");
    let text = std::fs::read_to_string(&file).expect("the stack's S3 credentials (make up)");
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret_access_key="))
        .expect("a secret_access_key line")
        .trim()
        .to_owned();
    assert!(secret.len() >= 16, "a real secret");
    // The stack's alga-dev-s3 runs (`make up`): the scan below means something.
    let servers: Vec<u32> = processes()
        .filter(|(_, cmdline)| cmdline.windows(SERVER.len()).any(|w| w == SERVER))
        .map(|(pid, _)| pid)
        .collect();
    assert!(!servers.is_empty(), "no alga-dev-s3 process: run `make up`");
    let showing: Vec<u32> = processes()
        .filter(|(_, cmdline)| {
            cmdline
                .windows(secret.len())
                .any(|w| w == secret.as_bytes())
        })
        .map(|(pid, _)| pid)
        .collect();
    // The pids only: the secret itself never goes into a message.
    assert!(
        showing.is_empty(),
        "the S3 secret key is on the command line of pid(s) {showing:?} (alga-dev-s3: {servers:?})"
    );
}

/// `(pid, /proc/<pid>/cmdline)` of every process that can be read.
fn processes() -> impl Iterator<Item = (u32, Vec<u8>)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .map(|c| (pid, c))
        })
}
