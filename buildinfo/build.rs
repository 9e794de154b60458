//! Records the git commit and the build profile for `VERSION`. Outside a git checkout
//! (a source tarball) the commit is `unknown`; `ALGA_BUILD_COMMIT` overrides it (a
//! packager building from an exported tree sets it).
#![allow(
    clippy::disallowed_methods,
    reason = "a build script reads the variables cargo and the packager set"
)]

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ALGA_BUILD_COMMIT");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let git_dir = Path::new(&manifest).join("../.git");
    // A new commit moves HEAD or the branch it points at.
    for f in ["HEAD", "index"] {
        let p = git_dir.join(f);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD"))
        && let Some(r) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed={}", git_dir.join(r).display());
    }
    let commit = std::env::var("ALGA_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    // `release` for the release profile and every profile inheriting from it (`dist`),
    // `debug` for dev builds: what cargo tells build scripts.
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=ALGA_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=ALGA_BUILD_PROFILE={profile}");
}

fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut c = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    if dirty {
        c.push_str("-modified");
    }
    (!c.is_empty()).then_some(c)
}
