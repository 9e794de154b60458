//! Issue 18, finding 9 (dev only): the local S3 server's secret key was on its command
//! line, visible to every local user in `ps`. s3s-fs 0.14.1 takes its keys only as
//! options, so `scripts/stack.sh` starts it through `scripts/s3_launcher.py`, which
//! passes the keys through its environment and overwrites the secret in s3s-fs's
//! argument memory once it listens. This test looks at every process of the machine
//! (the stack's s3s-fs included): none shows the stack's S3 secret on its command line.
//! It failed against an s3s-fs started by the previous `stack.sh`.

use crate::harness::dev;

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
    // The stack's s3s-fs runs (`make up`): the scan below means something.
    let s3s_fs: Vec<u32> = processes()
        .filter(|(_, cmdline)| cmdline.windows(6).any(|w| w == b"s3s-fs"))
        .map(|(pid, _)| pid)
        .collect();
    assert!(!s3s_fs.is_empty(), "no s3s-fs process: run `make up`");
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
        "the S3 secret key is on the command line of pid(s) {showing:?} (s3s-fs: {s3s_fs:?})"
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
