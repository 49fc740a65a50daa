//! What the end-to-end tests share.

use std::path::Path;
use std::process::Command;

/// The `peftkit` binary, run from the workspace root, with the offline hub cache beside the
/// checkout unless `HF_HOME` is set, and never inheriting a distributed environment.
pub fn peftkit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_peftkit"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("HF_HOME").is_none() {
        c.env(
            "HF_HOME",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/hf-home"),
        );
        c.env("HF_HUB_OFFLINE", "1");
    }
    for k in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCHELASTIC_USE_AGENT_STORE",
    ] {
        c.env_remove(k);
    }
    c
}
