//! What every alga-license binary says of itself.
//!
//! - [`VERSION`]: the `--version` line: the workspace version, the git commit it was
//!   built from (`-modified` when the tree had uncommitted changes) and the build
//!   profile (`release` for release and `dist` builds, `debug` for dev builds), so a
//!   crash report or a support ticket names exactly what ran.
//! - [`Generate`]: a hidden `generate` subcommand every binary carries, which writes
//!   its man pages (one per command and subcommand, from the clap definition) or a
//!   shell completion script. `make dist` runs it to put them in the packages.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// `<version> (commit <commit>, <profile> build)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ALGA_BUILD_COMMIT"),
    ", ",
    env!("ALGA_BUILD_PROFILE"),
    " build)"
);

/// The hidden `generate` subcommand: `<binary> generate man --out DIR` or
/// `<binary> generate completion bash|zsh|fish --out DIR`.
#[derive(Debug, clap::Args)]
pub struct Generate {
    #[command(subcommand)]
    pub what: What,
    /// Directory to write into (created if missing).
    #[arg(long, global = true, default_value = ".")]
    pub out: PathBuf,
}

/// What to generate.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Man pages (section 1): the command and each subcommand, `<name>-<sub>.1`.
    Man,
    /// A shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Generate {
    /// Writes what was asked for `cmd` (the binary's whole clap command) into `out`;
    /// returns the files written.
    pub fn run(&self, cmd: clap::Command) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(&self.out)?;
        let mut cmd = cmd;
        match &self.what {
            What::Man => {
                // clap's naming: `<name>.1`, `<name>-<sub>.1`, … for every visible
                // subcommand (no page for `help` or hidden ones).
                clap_mangen::generate_to(cmd, &self.out)?;
                let mut written: Vec<PathBuf> = std::fs::read_dir(&self.out)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "1"))
                    .collect();
                written.sort();
                Ok(written)
            }
            What::Completion { shell } => {
                let name = cmd.get_name().to_owned();
                let path = clap_complete::generate_to(*shell, &mut cmd, name, &self.out)?;
                Ok(vec![path])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Debug, Parser)]
    #[command(name = "demo", version = VERSION, about = "A demo")]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Debug, Subcommand)]
    enum Cmd {
        /// Does a thing.
        Thing {
            #[command(subcommand)]
            how: How,
        },
        #[command(hide = true)]
        Generate(Generate),
    }

    #[derive(Debug, Subcommand)]
    enum How {
        /// Quickly.
        Fast,
    }

    #[test]
    fn version_names_commit_and_profile() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")), "{VERSION}");
        assert!(VERSION.contains("(commit "), "{VERSION}");
        assert!(
            VERSION.ends_with(" build)") && !VERSION.contains("commit )"),
            "{VERSION}"
        );
    }

    #[test]
    fn man_pages_cover_every_visible_command_and_completions_are_written() {
        let dir = std::env::temp_dir().join(format!("alga-buildinfo-{}", std::process::id()));
        let cli = Cli::try_parse_from([
            "demo",
            "generate",
            "man",
            "--out",
            dir.to_str().expect("utf-8"),
        ])
        .expect("parses");
        let Cmd::Generate(g) = cli.command else {
            panic!("generate")
        };
        let mut names: Vec<String> = g
            .run(Cli::command())
            .expect("writes")
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort();
        // The hidden `generate` gets no page.
        assert_eq!(names, ["demo-thing-fast.1", "demo-thing.1", "demo.1"]);
        let page = std::fs::read_to_string(dir.join("demo-thing.1")).expect("page");
        assert!(page.contains("Does a thing"), "{page}");

        let cli = Cli::try_parse_from([
            "demo",
            "generate",
            "completion",
            "bash",
            "--out",
            dir.to_str().expect("utf-8"),
        ])
        .expect("parses");
        let Cmd::Generate(g) = cli.command else {
            panic!("generate")
        };
        let files = g.run(Cli::command()).expect("writes");
        let script = std::fs::read_to_string(&files[0]).expect("script");
        assert!(
            script.contains("demo") && script.contains("thing"),
            "{script}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
