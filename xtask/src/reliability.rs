//! `cargo xtask killtest` and `cargo xtask fuzz`: the long runs of issue 14's reliability checks,
//! whose short forms run in CI.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// The value of `--name V` in `args`, parsed.
fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => {
            let v = args
                .get(i + 1)
                .with_context(|| format!("{name} needs a value"))?;
            v.parse()
                .map(Some)
                .map_err(|_| anyhow::anyhow!("{name} {v}: not a valid value"))
        }
    }
}

/// `cargo xtask killtest [--kills N] [--seed S]`: the kill harness of `tests/kill.rs` with N
/// SIGKILLs (default 60) instead of CI's 6; it prints the kills per command, the resumed runs that
/// matched an uninterrupted one, and the outputs lost (the test fails on any).
pub fn killtest(mut cargo_test: Command, args: &[String]) -> Result<()> {
    let kills: usize = flag(args, "--kills")?.unwrap_or(60);
    let seed: Option<u64> = flag(args, "--seed")?;
    if kills == 0 {
        bail!("--kills 0: nothing to do");
    }
    cargo_test
        .args(["--test", "kill", "--", "--nocapture"])
        .env("PEFTKIT_KILLS", kills.to_string());
    if let Some(s) = seed {
        cargo_test.env("PEFTKIT_KILL_SEED", s.to_string());
    }
    crate::exec(cargo_test)
}
